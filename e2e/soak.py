"""Soak (issue 13, 8): churn at N live Services through the API stand-in while a client keeps opening
connections to Services whose endpoints stay up.

    python -m e2e.soak --minutes 30 --services 10000      # the long one (BENCHMARKS.md)
    python -m e2e.soak --minutes 3 --services 2000        # what CI runs (tests/test_soak.py)

A one-node namespace cluster: the agent runs as in production (`nftproxy run --kubeconfig ...`,
`--min-sync-period 1s`, a full rebuild every `--sync-period`, drift repair on) in the node's namespace,
watching the API stand-in, which holds N Services, each with one EndpointSlice. `--stable` of them
point at real echo pods on the node; a client pod opens a new TCP connection to one of them after
another (one line exchanged, then closed) for the whole run: every one must succeed. The others churn
through the stand-in's store (objects written as a controller would, events sent to the agent's
watches): an endpoint replaced, a slice grown or shrunk, a Service deleted and another created in its
place, `--rate` changes a second. The agent's RSS is read at start (after its first sync), in the
middle and at the end. At the end the kernel's elements (`nft -j list table`) are compared with what a
fresh rebuild on the in-memory kernel makes of the API's objects then; last, an element is deleted and
the ruleset flushed behind the agent's back, and the time to restore each is measured (e2e/tamper.py).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "soak"
PODS = 4
LABEL = "kubernetes.io/service-name"


# --- the client: runs in the client pod's namespace ----------------------------------------------------------
def client(targets: list[str], port: int, interval: float, timeout: float) -> int:
    """Open one connection after another, round robin, until SIGTERM; a JSON summary line at the end."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ok = failed = slow = 0
    worst = 0.0
    failures: list[dict[str, Any]] = []
    started = time.monotonic()
    i = 0
    while not stop.is_set():
        target = targets[i % len(targets)]
        i += 1
        t0 = time.monotonic()
        try:
            with socket.create_connection((target, port), timeout=timeout) as sock:
                sock.sendall(b"ping\n")
                reply = sock.makefile("rb").readline()
            if not reply.startswith(b"{"):
                raise OSError("no reply")
            ok += 1
        except OSError as err:
            failed += 1
            if len(failures) < 20:
                failures.append({"at_s": round(t0 - started, 1), "target": target,
                                 "error": f"{type(err).__name__}: {err}"})
        took = time.monotonic() - t0
        worst = max(worst, took)
        slow += took > 1.0  # a SYN retransmitted: the first was dropped
        stop.wait(interval)
    print(json.dumps({"connections": ok + failed, "failed": failed, "slow_over_1s": slow,
                      "worst_ms": round(worst * 1000, 1), "failures": failures}), flush=True)
    return 0


# --- objects -------------------------------------------------------------------------------------------
def cluster_ip(slot: int) -> str:
    return f"198.19.{(slot + 1) >> 8}.{(slot + 1) & 255}"


def service(slot: int, generation: int) -> dict[str, Any]:
    name = f"svc-{slot}" + (f"-g{generation}" if generation else "")
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip(slot), "clusterIPs": [cluster_ip(slot)],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}


def endpoint_slice(service_name: str, addresses: list[str]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service_name}-1", "namespace": NAMESPACE, "labels": {LABEL: service_name}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}, "nodeName": "node-1"} for a in addresses]}


def fake_address(n: int) -> str:
    """Endpoints of the churning Services: never connected to, so any address outside the LAN serves."""
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


# --- the kernel against the API -------------------------------------------------------------------------
def _text(value: Any) -> str:
    """An nft -j key or value in the text form the in-memory kernel keeps (`198.19.0.1 . tcp . 80`)."""
    if isinstance(value, dict):
        if "concat" in value:
            return " . ".join(_text(v) for v in value["concat"])
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            return "-".join(_text(v) for v in value["range"])
        for verdict in ("goto", "jump"):
            if verdict in value:
                return f"{verdict} {value[verdict]['target']}"
        if len(value) == 1:  # accept, drop, ...
            return next(iter(value))
    return str(value)


def kernel_elements(netns: str, skip: frozenset[str]) -> dict[str, dict[str, tuple[str | None, str | None]]]:
    """Every set's elements as `nft -j list table` shows them: set -> key -> (value, comment)."""
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "table", "inet", "nftproxy"],
                         capture_output=True, text=True, check=True).stdout
    sets: dict[str, dict[str, tuple[str | None, str | None]]] = {}
    for item in json.loads(out)["nftables"]:
        body = item.get("set") or item.get("map")
        if body is None or body["name"] in skip:
            continue
        elements = sets.setdefault(body["name"], {})
        for entry in body.get("elem", []):
            key, value = (entry[0], entry[1]) if isinstance(entry, list) else (entry, None)
            comment = None
            if isinstance(key, dict) and "elem" in key:
                comment = key["elem"].get("comment")
                key = key["elem"]["val"]
            elements[_text(key)] = (None if value is None else _text(value), comment)
    return sets


def api_objects(api: Any) -> list[dict[str, Any]]:
    """Every Service, EndpointSlice and Node the stand-in holds now, as the agent's watches deliver them."""
    from e2e.apiserver.resources import find

    out: list[dict[str, Any]] = []
    with api.store.lock:
        for resource, kind in (("services", "Service"), ("endpointslices.discovery.k8s.io", "EndpointSlice"),
                               ("nodes", "Node")):
            rtype = find(resource)
            for obj in api.store.data.get(rtype.storage_key, {}).values():
                out.append({**rtype.view(obj), "kind": kind})
    return out


def expected_elements(objects: list[dict[str, Any]], config: Any, skip: frozenset[str]) -> dict[str, dict[str, Any]]:
    """What a fresh rebuild (the in-memory kernel, as `--dry-run` computes it) makes of `objects`."""
    from nftproxy.agent.proxier import Proxier
    from nftproxy.kernel.fake import FakeKernel

    kernel = FakeKernel()
    proxier = Proxier(config, kernel)
    for obj in objects:
        proxier.upsert(obj)
    proxier.sync()
    return {name: dict(elements) for name, elements in kernel.sets.items() if name not in skip}


def compare(actual: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per set: elements only one side holds, or held with another value or comment."""
    diff: dict[str, Any] = {}
    for name in sorted(set(actual) | set(expected)):
        have, want = actual.get(name, {}), expected.get(name, {})
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        changed = sorted(k for k in set(have) & set(want) if have[k] != want[k])
        if missing or extra or changed:
            diff[name] = {"missing": missing[:5], "extra": extra[:5], "changed": changed[:5],
                          "counts": [len(missing), len(extra), len(changed)]}
    return {"equal": not diff, "elements": sum(len(v) for v in actual.values()), "diff": diff}


# --- the run -----------------------------------------------------------------------------------------------
@dataclass
class SoakResult:
    services: int
    stable: int
    minutes: float
    changes: int = 0
    client: dict[str, Any] = field(default_factory=dict)
    rss_mib: dict[str, float] = field(default_factory=dict)
    rss_series: list[tuple[float, float]] = field(default_factory=list)  # (minutes since start, MiB), every 10 s
    kernel: dict[str, Any] = field(default_factory=dict)
    drift: list[dict[str, Any]] = field(default_factory=list)
    syncs: dict[str, int] = field(default_factory=dict)
    first_sync_s: float = 0.0
    log_tail: list[str] = field(default_factory=list)

    def summary(self) -> str:
        c, r, k = self.client, self.rss_mib, self.kernel
        drift = ", ".join(f"{d['what'].split(' {')[0]} restored in {d['restored_ms']} ms" for d in self.drift)
        return (f"{self.services:,} Services ({self.stable} stable), {self.minutes:g} min, {self.changes:,} changes, "
                f"syncs {self.syncs}: {c.get('connections', 0):,} connections, {c.get('failed')} failed "
                f"(slow >1 s: {c.get('slow_over_1s')}, worst {c.get('worst_ms')} ms); agent RSS start/middle/end "
                f"{r.get('start')}/{r.get('middle')}/{r.get('end')} MiB (max {r.get('max')}); kernel elements "
                f"{k.get('elements', 0):,}, equal to the API's: {k.get('equal')}; {drift}")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def run_soak(minutes: float, services: int, stable: int = 20, endpoints: int = 10, rate: float = 10.0,
             sync_period: str = "10m", tamper: bool = True, seed: int = 7, say: Any = print) -> SoakResult:
    from e2e.agent import NodeAgent
    from e2e.cluster_api import ClusterApi
    from e2e.netns import NamespaceCluster
    from e2e.netns.cluster import _python_env, cleanup_stale
    from nftproxy.config import ProxyConfig

    result = SoakResult(services, stable, minutes)
    rng = random.Random(seed)
    cleanup_stale()
    cluster = NamespaceCluster(nodes=1)
    api: Any = None
    agent: Any = None
    client_proc: subprocess.Popen[str] | None = None
    try:
        node = cluster.nodes[0]
        pods = [cluster.add_pod(node, f"web-{k}", udp=()) for k in range(PODS)]
        client_pod = cluster.add_pod(node, "client", tcp=(), udp=())
        api = ClusterApi(cluster.lan_netns, cluster.lan_gateway, service_cidr=cluster.service_cidr,
                         history_size=100000, bookmark_interval=5.0).start()
        store = api.api
        store.put_raw("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        current: dict[int, tuple[str, list[str]]] = {}  # slot -> (Service name, endpoint addresses)
        address = iter(range(1, 1 << 24))
        for slot in range(services):
            svc = service(slot, 0)
            name = svc["metadata"]["name"]
            addrs = ([p.ip for p in pods] if slot < stable else [fake_address(next(address)) for _ in range(endpoints)])
            current[slot] = (name, addrs)
            store.put_raw("services", svc)
            store.put_raw("endpointslices.discovery.k8s.io", endpoint_slice(name, addrs))
        say(f"stand-in holds {services} Services; starting the agent")

        started = time.monotonic()
        agent = NodeAgent(cluster, node, ["--kubeconfig", api.kubeconfig_for_nodes], "--min-sync-period", "1s",
                          "--sync-period", sync_period, "--metrics-bind-address", "0")
        agent.start(timeout=900)
        result.first_sync_s = round(time.monotonic() - started, 1)
        assert agent.process is not None
        pid = agent.process.pid  # `ip netns exec` execs: this is the agent's own process
        say(f"first sync after {result.first_sync_s} s")

        targets = [cluster_ip(slot) for slot in range(stable)]
        client_proc = subprocess.Popen(
            ["ip", "netns", "exec", client_pod.netns, sys.executable, "-m", "e2e.soak", "client", ",".join(targets)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_python_env(), cwd=REPO)
        time.sleep(2.0)
        samples = [rss_mib(pid)]
        result.rss_mib["start"] = samples[0]
        soak_started = time.monotonic()
        result.rss_series.append((0.0, samples[0]))

        deadline = time.monotonic() + minutes * 60
        middle_at = time.monotonic() + minutes * 30
        next_sample = time.monotonic() + 10
        generation = 0
        while time.monotonic() < deadline:
            slot = rng.randrange(stable, services)
            name, addrs = current[slot]
            roll = rng.random()
            if roll < 0.6:  # one endpoint replaced
                addrs = addrs[1:] + [fake_address(next(address))]
                store.put_raw("endpointslices.discovery.k8s.io", endpoint_slice(name, addrs))
            elif roll < 0.8:  # the slice grows or shrinks (another shared chain)
                size = rng.randint(1, endpoints + 4)
                addrs = (addrs + [fake_address(next(address)) for _ in range(size)])[:size]
                store.put_raw("endpointslices.discovery.k8s.io", endpoint_slice(name, addrs))
            else:  # the Service is deleted and another takes its address
                store.delete_raw("endpointslices.discovery.k8s.io", f"{name}-1", NAMESPACE)
                store.delete_raw("services", name, NAMESPACE)
                generation += 1
                svc = service(slot, generation)
                name = svc["metadata"]["name"]
                store.put_raw("services", svc)
                store.put_raw("endpointslices.discovery.k8s.io", endpoint_slice(name, addrs))
            current[slot] = (name, addrs)
            result.changes += 1
            now = time.monotonic()
            if now >= next_sample:
                samples.append(rss_mib(pid))
                result.rss_series.append((round((now - soak_started) / 60, 2), samples[-1]))
                next_sample = now + 10
                if "middle" not in result.rss_mib and now >= middle_at:
                    result.rss_mib["middle"] = samples[-1]
                    say(f"middle: {result.changes} changes, RSS {samples[-1]} MiB")
                if agent.process.poll() is not None:
                    raise RuntimeError("the agent exited:\n" + agent.log_text()[-3000:])
            time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - now)))

        # settle: the last change synced, then nothing more to do
        mark = agent.mark()
        agent.wait_synced(mark, timeout=120)
        time.sleep(3.0)
        result.rss_mib["end"] = rss_mib(pid)
        samples.append(result.rss_mib["end"])
        result.rss_mib["max"] = max(samples)
        client_proc.send_signal(signal.SIGTERM)
        out, err = client_proc.communicate(timeout=60)
        result.client = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-2000:]}

        skip = frozenset({"affinity-v4", "affinity-v6"})  # written by packets, never by a sync
        config = ProxyConfig(node_name=node.name, cluster_cidrs=(cluster.cluster_cidr,),
                             service_cidrs=(cluster.service_cidr,))
        result.kernel = compare(kernel_elements(node.netns, skip), expected_elements(api_objects(store), config, skip))
        log = agent.log_text()
        result.syncs = {"full rebuilds": log.count("full rebuild"), "diffs": log.count(": diff,"),
                        "failed": log.count("sync failed"), "drift reports": log.count("behind the agent's back")}
        if tamper:
            for what in ("element", "flush"):
                out_t = subprocess.run(["ip", "netns", "exec", node.netns, sys.executable, "-m", "e2e.tamper", what,
                                        "--timeout", "300"], capture_output=True, text=True, env=_python_env(),
                                       cwd=REPO, timeout=600)
                result.drift.append(json.loads(out_t.stdout.strip().splitlines()[-1]) if out_t.stdout.strip()
                                    else {"what": what, "restored_ms": None, "error": out_t.stderr[-500:]})
        result.log_tail = agent.log_text().splitlines()[-15:]
        return result
    finally:
        if client_proc is not None and client_proc.poll() is None:
            client_proc.kill()
        if agent is not None:
            agent.stop()
        if api is not None:
            api.stop()
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["client"]:
        parser = argparse.ArgumentParser(prog="python -m e2e.soak client")
        parser.add_argument("targets")
        parser.add_argument("--port", type=int, default=80)
        parser.add_argument("--interval", type=float, default=0.02)
        parser.add_argument("--timeout", type=float, default=3.0)
        args = parser.parse_args(argv[1:])
        return client(args.targets.split(","), args.port, args.interval, args.timeout)
    parser = argparse.ArgumentParser(prog="python -m e2e.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--stable", type=int, default=20, help="Services with real endpoints the client connects to")
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints of each churning Service")
    parser.add_argument("--rate", type=float, default=10.0, help="changes per second")
    parser.add_argument("--sync-period", default="10m", help="the agent's full rebuild period during the soak")
    parser.add_argument("--no-tamper", dest="tamper", action="store_false")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    result = run_soak(args.minutes, args.services, args.stable, args.endpoints, args.rate, args.sync_period,
                      args.tamper, say=lambda text: print(f"{time.strftime('%H:%M:%S')} {text}", flush=True))
    print(result.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=1))
    ok = (result.client.get("failed") == 0 and result.kernel.get("equal")
          and all(d.get("restored_ms") is not None for d in result.drift))
    if not ok:
        print(json.dumps({"client": result.client, "kernel": result.kernel, "drift": result.drift,
                          "log": result.log_tail}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
