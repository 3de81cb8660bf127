"""Network programming latency through the API: a one-endpoint change at N Services, end to end.

The agent runs as in production (`nftproxy run --kubeconfig ...`, `--min-sync-period 0`) in a
throwaway network namespace, watching the in-repo API server stand-in that holds N Services x E
endpoints. Each change replaces one endpoint of one EndpointSlice through the real `kubernetes`
client; the latency is from just before that write to the arrival of the agent's "synced" log line,
which it writes after the kernel accepted the transaction. (`nft monitor` would be the direct
witness, but it reads the whole ruleset first and dies at 10,000 Services here.)

The agent's first full sync is split in two: the API's time to serve the lists (measured by listing
as the agent does, in pages of 500, before the agent starts: first with nothing cached in the
stand-in, then again, as the agent will find it), and the agent's own share, measured by replaying
the very pages in a process in the namespace: decode (json), parse (`Proxier.upsert`) and rebuild
(`Proxier.sync`, nft included), as the agent runs them.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.netns.cluster import REPO_ROOT

_SYNCED = re.compile(r"synced (\d+) Service\(s\): full rebuild")
_CONTINUE = re.compile(rb'"continue":"([^"]+)"')


@dataclass
class LatencyResult:
    services: int
    endpoints: int
    changes: int
    cold_sync_seconds: float
    latencies_ms: list[float]
    agent_histogram: dict[str, float]
    first_sync: dict[str, float] = field(default_factory=dict)  # the split of the first full sync

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    def summary(self) -> str:
        return (f"{self.services:>6} Services x {self.endpoints}: network programming latency over {self.changes} "
                f"one-endpoint changes: median {statistics.median(self.latencies_ms):.1f} ms, "
                f"p99 {self.percentile(0.99):.1f} ms, max {max(self.latencies_ms):.1f} ms "
                f"(target p99 <= 100 ms); first full sync {self.cold_sync_seconds:.2f} s")

    def first_sync_summary(self) -> str:
        f = self.first_sync
        own = f["decode_s"] + f["parse_s"] + f["rebuild_s"]
        return (f"{self.services:>6} Services x {self.endpoints}: first full sync {self.cold_sync_seconds:.2f} s "
                f"from agent start; the API serves the lists ({f['objects']:,.0f} objects) "
                f"in {f['api_cold_s']:.2f} s uncached, "
                f"{f['api_warm_s']:.2f} s cached ({f['objects'] / f['api_warm_s']:,.0f} objects/s); the agent's own "
                f"share {own:.2f} s: decode {f['decode_s']:.2f} s, parse {f['parse_s']:.2f} s "
                f"({f['objects'] / f['parse_s']:,.0f} objects/s), rebuild {f['rebuild_s']:.2f} s")


def _address(i: int, j: int) -> str:
    n = i * 64 + j
    return f"100.64.{(n >> 8) & 255}.{n & 255}" if n < 65536 else f"100.{65 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def _service(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"svc-{i}", "namespace": "bench", "uid": str(uuid.uuid4()),
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "ClusterIP", "clusterIP": f"198.18.{i >> 8}.{i & 255}",
                     "clusterIPs": [f"198.18.{i >> 8}.{i & 255}"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}


def _slice(i: int, addresses: list[str], trigger: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"svc-{i}-abc", "namespace": "bench",
                            "labels": {"kubernetes.io/service-name": f"svc-{i}"}}
    if trigger:
        meta["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": trigger}
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}, "nodeName": "node-1"} for a in addresses]}


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e6):06d}Z"


LIST_PATHS = (("Service", "/api/v1/services"), ("EndpointSlice", "/apis/discovery.k8s.io/v1/endpointslices"))
PAGE_SIZE = 500  # as the agent's watchers list


def list_pages(base_url: str, directory: Path | None = None) -> float:
    """List Services and EndpointSlices as the agent does (pages of 500, raw bytes): seconds.

    Only the list's metadata is read (for the continue token), so the time is the API's. With
    `directory`, the pages are kept there for `replay`.
    """
    started = time.perf_counter()
    for kind, path in LIST_PATHS:
        token, page = "", 0
        while True:
            query = f"?limit={PAGE_SIZE}" + (f"&continue={urllib.parse.quote(token)}" if token else "")
            with urllib.request.urlopen(base_url + path + query, timeout=60) as resp:
                body = resp.read()
            if directory is not None:
                (directory / f"{kind}-{page:05d}.json").write_bytes(body)
            page += 1
            found = _CONTINUE.search(body[: body.index(b'"items":')])
            token = found.group(1).decode() if found else ""
            if not token:
                break
    return time.perf_counter() - started


def replay(directory: Path) -> dict[str, float]:
    """The agent's own share of a first sync, from the pages it was served: decode, parse, rebuild.

    Runs in the agent's namespace, the table absent; the collector as the agent has it.
    """
    from nftproxy.agent.proxier import Proxier
    from nftproxy.config import ProxyConfig
    from nftproxy.kernel.nft import NftablesKernel

    kernel = NftablesKernel()
    kernel.delete_table()
    proxier = Proxier(ProxyConfig(node_name="node-1"), kernel)
    pages = sorted(directory.glob("*.json"))
    started = time.perf_counter()
    batches = [(path.name.split("-")[0], json.loads(path.read_bytes())) for path in pages]
    decoded = time.perf_counter()
    objects = 0
    for kind, body in batches:
        for obj in body.get("items") or []:
            obj["kind"] = kind  # as the watcher does
            proxier.upsert(obj)
            objects += 1
    del batches
    parsed = time.perf_counter()
    proxier.sync()
    synced = time.perf_counter()
    return {"objects": objects, "decode_s": decoded - started, "parse_s": parsed - decoded,
            "rebuild_s": synced - parsed}


def _replay_in(netns: str, directory: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "e2e.bench.api", "--replay",
                           str(directory)], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"replay failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(services: int, endpoints: int, changes: int, timeout: float = 600.0) -> LatencyResult:
    from e2e.netns.scratch import scratch_netns

    # nfp-benchapi-<random>, lo up, tagged as the harness tags its own (a concurrent test session's
    # cleanup removes untagged nfp-* namespaces); deleted at the end with whatever still runs in it
    with scratch_netns("benchapi") as netns:
        return _measure_in(netns, services, endpoints, changes, timeout)


def _measure_in(netns: str, services: int, endpoints: int, changes: int, timeout: float) -> LatencyResult:
    from kubernetes import client

    from e2e.cluster_api import ClusterApi

    agent: subprocess.Popen[str] | None = None
    api: ClusterApi | None = None
    try:
        api = ClusterApi(netns, "127.0.0.1", 6443, service_cidr="198.18.0.0/15", history_size=200000).start()
        api.api.put_raw("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
        current = {}
        for i in range(services):
            api.api.put_raw("services", _service(i))
            current[i] = [_address(i, j) for j in range(endpoints)]
            api.api.put_raw("endpointslices.discovery.k8s.io", _slice(i, current[i]))

        # the API's share: list as the agent will, first uncached, then as the agent finds it; keep the pages
        pages = Path(tempfile.mkdtemp(prefix="nfp-benchapi-pages-"))
        first_sync: dict[str, float] = {}
        first_sync["api_cold_s"] = list_pages(api.api.url)
        first_sync["api_warm_s"] = list_pages(api.api.url, pages)

        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        started = time.monotonic()
        agent = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "nftproxy", "run", "--kubeconfig",
             api.kubeconfig_for_nodes, "--node-name", "node-1", "--min-sync-period", "0",
             "--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=REPO_ROOT)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in agent.stderr], daemon=True).start()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError("the agent did not finish its first sync in time") from None
            if os.environ.get("NFTPROXY_BENCH_VERBOSE"):
                sys.stderr.write(f"{time.monotonic() - started:7.2f}s agent: {line}")
            match = _SYNCED.search(line)
            if match and int(match.group(1)) >= services:
                break
            if agent.poll() is not None:
                raise RuntimeError("the agent exited:\n" + line)
        cold = time.monotonic() - started

        discovery = client.DiscoveryV1Api(api.api.client())
        rng = random.Random(7)
        latencies: list[float] = []
        while not lines.empty():
            lines.get_nowait()
        for k in range(changes):
            i = rng.randrange(services)
            fresh = f"100.{100 + k // 65536}.{(k >> 8) & 255}.{k & 255}"
            current[i] = current[i][1:] + [fresh]
            t0 = time.time()
            discovery.replace_namespaced_endpoint_slice(f"svc-{i}-abc", "bench", _slice(i, current[i], _rfc3339(t0)))
            wait_until = time.monotonic() + 30
            while True:
                try:
                    line = lines.get(timeout=max(0.01, wait_until - time.monotonic()))
                except queue.Empty:
                    raise RuntimeError(f"change {k}: the agent did not sync it") from None
                if "synced 1 Service(s): diff" in line:
                    latencies.append((time.time() - t0) * 1000)
                    break
            time.sleep(0.02)
        histogram = _scrape_histogram(netns)
        agent.send_signal(signal.SIGTERM)  # the replay below rebuilds in the agent's namespace
        agent.wait(10)
        first_sync.update(_replay_in(netns, pages))
        shutil.rmtree(pages, ignore_errors=True)
        return LatencyResult(services, endpoints, changes, cold, latencies, histogram, first_sync)
    finally:
        for proc in (agent,):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if api is not None:
            api.stop()


def _scrape_histogram(netns: str) -> dict[str, float]:
    code = ("import urllib.request;"
            "print(urllib.request.urlopen('http://127.0.0.1:10249/metrics',timeout=5).read().decode())")
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                         capture_output=True, text=True).stdout
    values = {}
    for line in out.splitlines():
        if line.startswith("kubeproxy_network_programming_duration_seconds"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m e2e.bench.api", description=__doc__)
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--replay", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replay:
        print(json.dumps(replay(Path(args.replay))))
        return 0
    result = measure(args.services, args.endpoints, args.changes)
    if args.json:
        print(json.dumps({"services": result.services, "median_ms": statistics.median(result.latencies_ms),
                          "p99_ms": result.percentile(0.99), "max_ms": max(result.latencies_ms),
                          "cold_sync_s": result.cold_sync_seconds, "first_sync": result.first_sync}))
    else:
        print(result.summary())
        print(result.first_sync_summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
