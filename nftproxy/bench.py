"""`nftproxy bench`: cold start, cold sync and one-Service changes at scale, next to `nft -f` of the same ruleset.

Safety first: libnftables acts on the network namespace of the calling process, so nothing here
ever touches the host's nftables. `run_bench` creates a throwaway namespace (nfp-bench-<random>),
runs one measuring process per Service count inside it (`ip netns exec NS python -m nftproxy.bench
--inside ...`, which refuses to run in the namespace it was started from) and deletes the namespace
at the end, on errors and on Ctrl-C too. Counts run in increasing order; a probe at 1,000 Services
comes first, and the run stops before a larger count when the probe's cold sync took more than 5 s
or a step (one cold start, loading, one cold sync, one `nft -f`, the changes; not counting the repeated
runs that only steady the figures) took more than 60 s.

Per count N (E endpoints per Service, every Service a ClusterIP with one TCP port and one
EndpointSlice; cluster IPs from 198.18.0.0/15, endpoints from 100.64.0.0/10: these addresses are
only map elements in the throwaway namespace, no packet is sent):

1. Cold start, the headline: the objects are written as one JSON List, and `nftproxy run
   --manifests DIR --once` is timed as a new process from spawn to exit (the table absent), its
   memory and its nft child's sampled from /proc. The ruleset it leaves is dumped (`nft list
   table`) and `nft -f` of the dump is timed in a new, empty namespace (`unshare -n`). Three
   interleaved runs of each; medians compared. Parsing speed is measured on its own.
2. N Services and N slices are generated as API dicts and fed to `Proxier.upsert` one at a time, so
   the dicts never accumulate and do not count in the memory figures.
3. Cold sync: `proxier.sync()` with the table absent (a full rebuild, streamed to nft). The same
   rebuild is written to a file (checked to be what was streamed), the table deleted, and `nft -f
   FILE` is timed as a child process. Both start from the same state: the table absent. Three
   interleaved runs of each; medians compared.
4. Memory: VmRSS after gc.collect() once synced (the steady state), the process's peak RSS, the
   peak of the nft a rebuild streams to and that of `nft -f FILE` (both nft peaks measured from a
   small parent: see peak_rss_kib).
5. One-Service changes, `changes` times each on different Services: replace one endpoint address,
   add a Service with E endpoints, delete a Service; median and p95 latency of `proxier.sync()`
   and its operation count.

`python -m nftproxy.bench` takes the same flags as `nftproxy bench`, plus `--profile DIR` (cProfile
of the cold sync and of the changes, per count) and `--tracemalloc` (what the steady state holds,
by allocation site): both slow the run down and are for finding bottlenecks, not for figures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

NETNS_PREFIX = "nfp-bench-"
PROBE_SERVICES = 1000  # probed first before any larger count
PROBE_LIMIT_S = 5.0  # cold sync at the probe above this: stop before larger counts
STEP_LIMIT_S = 60.0  # a step above this: stop before larger counts
CHILD_TIMEOUT_S = 1800.0  # a step running longer than this is killed
CHILD_ADDRESS_SPACE = 16 << 30  # RLIMIT_AS of the measuring process and its nft children

SERVICE_BASE = (198 << 24) | (18 << 16)  # 198.18.0.0/15
SERVICE_SPACE = 1 << 17
POD_BASE = (100 << 24) | (64 << 16)  # 100.64.0.0/10
POD_SPACE = 1 << 22
NAMESPACE = "bench"

TARGET_RATIO = 1.3  # nftproxy cold sync <= 1.3 x nft -f; a cold start <= 1.3 x nft -f of its dump
TARGET_PARSE_PER_S = 50000.0  # objects parsed per second
TARGET_STEADY_MIB = 250.0  # at 30,000 x 10
TARGET_CHANGE_MS = 10.0  # median one-Service change at 30,000
TARGET_SERVICES = 30000

CHANGE_KINDS = (
    ("endpoint", "replace one endpoint"),
    ("add", "add a Service"),
    ("delete", "delete a Service"),
)


# --------------------------------------------------------------------------------------------------
# the objects
# --------------------------------------------------------------------------------------------------
def _ipv4(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def service_name(i: int) -> str:
    return f"svc-{i:06d}"


def cluster_ip(i: int) -> str:
    return _ipv4(SERVICE_BASE + 1 + i)


def pod_ip(i: int) -> str:
    return _ipv4(POD_BASE + 1 + i)


def _mixed() -> bool:
    """--mix policies: the policy-rich scenario mix (passed to the measuring process by environment)."""
    return os.environ.get("NFTPROXY_BENCH_MIX") == "policies"


def service_object(i: int) -> dict[str, Any]:
    ip = cluster_ip(i)
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(i), "namespace": NAMESPACE, "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ipFamilies": ["IPv4"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    }
    if _mixed():
        # a quarter each: NodePort; eTP Local LoadBalancer with source ranges; ClientIP affinity with an
        # externalIP; iTP Local. Addresses from 240.0.0.0/4: only elements in a throwaway namespace.
        # The NodePort range holds 2,768 ports: past them, LoadBalancers get none (as with
        # allocateLoadBalancerNodePorts: false) and the NodePort quarter stays ClusterIP.
        spec, port, kind = obj["spec"], obj["spec"]["ports"][0], i % 4
        extra = f"240.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        node_ports_left = i // 4 < 1384
        if kind == 0 and node_ports_left:
            spec["type"], port["nodePort"] = "NodePort", 30000 + 2 * (i // 4)
        elif kind == 1:
            spec.update(type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=32000,
                        loadBalancerSourceRanges=["192.0.2.0/24", "198.51.100.0/24"])
            if node_ports_left:
                port["nodePort"] = 30001 + 2 * (i // 4)
            obj["status"] = {"loadBalancer": {"ingress": [{"ip": extra}]}}
        elif kind == 2:
            spec.update(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}},
                        externalIPs=[extra])
        else:
            spec["internalTrafficPolicy"] = "Local"
    return obj


def slice_object(i: int, addresses: Sequence[str]) -> dict[str, Any]:
    name = service_name(i)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-abcde", "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True},
                       "nodeName": "bench-node" if not _mixed() or j % 2 == 0 else "other-node"}
                      for j, a in enumerate(addresses)],
    }


def original_addresses(i: int, endpoints: int) -> list[str]:
    return [pod_ip(i * endpoints + j) for j in range(endpoints)]


def check_capacity(n: int, endpoints: int, changes: int) -> str | None:
    if n < 1 or endpoints < 1 or changes < 1:
        return "Service count, endpoints and changes must be at least 1"
    if n + changes + 2 > SERVICE_SPACE:
        return f"{n} Services (+{changes} added) do not fit 198.18.0.0/15"
    if (n + changes) * endpoints + changes + 2 > POD_SPACE:
        return f"{n} x {endpoints} endpoints do not fit 100.64.0.0/10"
    return None


# --------------------------------------------------------------------------------------------------
# measuring, inside the namespace
# --------------------------------------------------------------------------------------------------
def vmrss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p95 of 3 samples is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def timed_nft_file(path: Path, fresh_netns: bool = False) -> tuple[float, int, int, str]:
    """`nft -f path` as a child: seconds (fork to reap), peak RSS in KiB, exit code, stderr.

    `fresh_netns`: in a new, empty network namespace of its own (`unshare -n`).
    """
    nft = shutil.which("nft")
    if nft is None:
        raise RuntimeError("the nft command is not installed (Debian package nftables)")
    argv = [nft, "-f", str(path)]
    if fresh_netns:
        unshare = shutil.which("unshare")
        if unshare is None:
            raise RuntimeError("the unshare command is not installed (Debian package util-linux)")
        argv = [unshare, "--net", *argv]
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return seconds, usage.ru_maxrss, proc.returncode, err.read().decode(errors="replace")


def _write_rebuild(proxier: Any, path: Path) -> int:
    """Write the rebuild the proxier would stream now (not timed); its fingerprint as CapturingKernel's."""
    proxier.needs_rebuild = True
    fingerprint = 0
    with path.open("w") as out:
        for chunk in proxier.compute(stream=True).script:
            fingerprint = hash((fingerprint, chunk))
            out.write(chunk)
    proxier.needs_rebuild = False
    return fingerprint


def cold_repeats(n: int) -> int:
    """Cold starts and cold syncs (and nft -f runs) per count, interleaved; the medians are compared.

    NFTPROXY_BENCH_RUNS overrides it (`--runs`): on a shared machine more runs steady the medians.
    """
    return int(os.environ.get("NFTPROXY_BENCH_RUNS") or 3)


def peak_rss_kib(argv: Sequence[str], stdin: Path | None = None) -> tuple[int, str]:
    """Peak RSS of a command, spawned from a small process (GNU time, else a bare Python).

    A child spawned straight from this process would report at least this process's RSS: Linux
    carries the parent's hiwater mark over the exec into the child's ru_maxrss.
    """
    with tempfile.TemporaryDirectory(prefix="nfp-bench-") as tmp, \
            (open(stdin, "rb") if stdin else open(os.devnull, "rb")) as src:
        out = Path(tmp) / "maxrss"
        gnu_time = Path("/usr/bin/time")
        if gnu_time.exists():
            wrapper, method = [str(gnu_time), "-f", "%M", "-o", str(out)], "GNU time (floor ~1 MiB)"
        else:
            code = ("import os,sys,subprocess;p=subprocess.Popen(sys.argv[2:]);_,s,ru=os.wait4(p.pid,0);"
                    "open(sys.argv[1],'w').write(str(ru.ru_maxrss));sys.exit(os.waitstatus_to_exitcode(s))")
            wrapper, method = [sys.executable, "-S", "-c", code, str(out)], "python -S wrapper (floor ~11 MiB)"
        proc = subprocess.run([*wrapper, *argv], stdin=src, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[:2000]}")
        return int(out.read_text().split()[-1]), method


def _netns_id(pid: str = "self") -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:  # e.g. PID 1 of a sandbox we may not inspect
        return None


BENCH_FLAGS = ["--cluster-cidr", "100.64.0.0/10", "--service-cidr", "198.18.0.0/15", "--node-name", "bench-node"]
SAMPLE_S = 0.02  # memory sampling interval of a cold start


def write_manifests(directory: Path, n: int, endpoints: int) -> int:
    """The N Services and slices as one JSON List (as `kubectl get -o json` writes them); objects written."""
    with (directory / "objects.json").open("w") as out:
        out.write('{"apiVersion": "v1", "kind": "List", "items": [\n')
        for i in range(n):
            out.write(("" if i == 0 else ",\n") + json.dumps(service_object(i)) + ",\n"
                      + json.dumps(slice_object(i, original_addresses(i, endpoints))))
        out.write("\n]}\n")
    return 2 * n


class TreeMemory(threading.Thread):
    """Samples a process and its children: each one's VmHWM by name, and the largest sum of VmRSS.

    A child is counted from its exec on (its name changes then): before it, vfork shares the parent's
    memory. Peaks within the last sampling interval before a process exits can be missed.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.hwm_kib: dict[str, int] = {}
        self.together_kib = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(SAMPLE_S):
            total = 0
            for pid in [self.pid, *_children(self.pid)]:
                status = _status(pid)
                if status is None or (pid != self.pid and status["Name"] != "nft"):
                    continue
                name = "self" if pid == self.pid else "nft"
                self.hwm_kib[name] = max(self.hwm_kib.get(name, 0), int(status["VmHWM"].split()[0]))
                total += int(status["VmRSS"].split()[0])
            self.together_kib = max(self.together_kib, total)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


def _status(pid: int) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    fields = {key: value.strip() for key, value in fields.items()}
    return fields if "VmHWM" in fields and "VmRSS" in fields else None


def _tree_env(tree: Path) -> dict[str, str]:
    """Environment that makes `python -m nftproxy` run the checkout at `tree` (run with cwd=tree)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]))


THIS_TREE = Path(__file__).resolve().parents[1]


def timed_cold_start(manifests: Path, tree: Path = THIS_TREE) -> tuple[float, TreeMemory]:
    """`nftproxy run --manifests DIR --once` as a new process: seconds from spawn to exit, and its memory.

    `tree`: the checkout to run (another one gives a baseline, side by side).
    """
    argv = [sys.executable, "-m", "nftproxy", "run", "--manifests", str(manifests), "--once", *BENCH_FLAGS]
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env=_tree_env(tree), cwd=tree)
        memory = TreeMemory(proc.pid)
        memory.start()
        _pid, status, _usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        memory.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"nftproxy run --once failed ({proc.returncode}): {err.read().decode(errors='replace')[-2000:]}")
    return seconds, memory


def timed_nft_fresh(path: Path) -> float:
    """`nft -f path` in a namespace of its own, new and empty (`unshare -n`), from spawn to exit."""
    seconds, _maxrss, rc, err = timed_nft_file(path, fresh_netns=True)
    if rc != 0:
        raise RuntimeError(f"nft -f of the dumped ruleset failed ({rc}): {err.strip()[:2000]}")
    return seconds


PARSE_RATE = """
import gc, sys, time
from nftproxy.agent.proxier import Proxier
from nftproxy.bench import original_addresses, service_object, slice_object
from nftproxy.config import ProxyConfig
from nftproxy.kernel.fake import FakeKernel
n, endpoints = int(sys.argv[1]), int(sys.argv[2])
objects = [obj for i in range(n) for obj in (service_object(i), slice_object(i, original_addresses(i, endpoints)))]
proxier = Proxier(ProxyConfig(node_name="bench-node"), FakeKernel())
gc.disable()
started = time.perf_counter()
for obj in objects:
    proxier.upsert(obj)
print(len(objects) / (time.perf_counter() - started))
"""


def parse_rate(n: int, endpoints: int, tree: Path = THIS_TREE) -> float:
    """Objects parsed per second by `Proxier.upsert`, the collector off as in a cold start, over up to
    10,000 Services; in a process of its own, running the checkout at `tree`."""
    proc = subprocess.run([sys.executable, "-c", PARSE_RATE, str(min(n, 10000)), str(endpoints)], capture_output=True,
                          text=True, env=_tree_env(tree), cwd=tree, timeout=CHILD_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"parse rate in {tree} failed: {proc.stderr[-2000:]}")
    return float(proc.stdout.split()[-1])


def measure_cold_start(n: int, endpoints: int, repeats: int, delete_table: Callable[[], None],
                       baseline: Path | None = None) -> dict[str, Any]:
    """The headline: a cold start from process start to rules committed, against `nft -f` of the ruleset
    it left (as `nft list table` prints it) into a fresh namespace; interleaved runs, medians.

    `baseline`: another checkout whose cold start runs in the same rounds (keys `base_*`).
    """
    out: dict[str, Any] = {"parse_objects_per_s": parse_rate(n, endpoints)}
    if baseline is not None:
        out["base_parse_objects_per_s"] = parse_rate(n, endpoints, baseline)
    gc.collect()
    runs: list[float] = []
    base_runs: list[float] = []
    nft_runs: list[float] = []
    peaks: dict[str, int] = {}

    def peak(prefix: str, memory: TreeMemory) -> None:
        for name, kib in (*memory.hwm_kib.items(), ("together", memory.together_kib)):
            peaks[prefix + name] = max(peaks.get(prefix + name, 0), kib)

    with tempfile.TemporaryDirectory(prefix="nfp-bench-cold-") as tmp:
        out["objects"] = write_manifests(Path(tmp), n, endpoints)
        dump = Path(tmp) / "dump.nft"
        for attempt in range(repeats):
            if baseline is not None:
                delete_table()
                seconds, memory = timed_cold_start(Path(tmp) / "objects.json", baseline)
                base_runs.append(seconds)
                peak("base_", memory)
            delete_table()
            seconds, memory = timed_cold_start(Path(tmp) / "objects.json")
            runs.append(seconds)
            peak("", memory)
            if attempt == 0:
                started = time.perf_counter()
                listed = subprocess.run(["nft", "list", "table", "inet", "nftproxy"], capture_output=True, text=True)
                if listed.returncode != 0:
                    raise RuntimeError(f"nft list table failed: {listed.stderr.strip()[:2000]}")
                out["list_s"] = time.perf_counter() - started
                dump.write_text(listed.stdout)
                out["dump_bytes"] = len(listed.stdout.encode())
                del listed
            nft_runs.append(timed_nft_fresh(dump))
            _progress(f"{n} x {endpoints}: cold start {seconds:.3f} s"
                      + (f" (baseline {base_runs[-1]:.3f} s)" if base_runs else "")
                      + f", nft -f of its dump {nft_runs[-1]:.3f} s")
    out["start_runs_s"], out["start_nft_runs_s"] = runs, nft_runs
    out["start_s"], out["start_nft_s"] = statistics.median(runs), statistics.median(nft_runs)
    out["start_ratio"] = out["start_s"] / out["start_nft_s"]
    out["start_peak_self_kib"] = peaks.get("self", 0)
    out["start_peak_nft_kib"] = peaks.get("nft", 0)
    out["start_peak_together_kib"] = peaks.get("together", 0)
    if base_runs:
        out["base_start_runs_s"] = base_runs
        out["base_start_s"] = statistics.median(base_runs)
        out["base_start_ratio"] = out["base_start_s"] / out["start_nft_s"]
        for name in ("self", "nft", "together"):
            out[f"base_start_peak_{name}_kib"] = peaks.get(f"base_{name}", 0)
    return out


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def measure(n: int, endpoints: int, changes: int, profile_dir: Path | None = None, trace: bool = False,
            baseline: Path | None = None) -> dict[str, Any]:
    """Everything for one Service count; must run inside the throwaway namespace."""
    import cProfile

    from .agent.proxier import Proxier
    from .config import ProxyConfig
    from .kernel import Applied
    from .kernel.nft import NftablesKernel

    class CapturingKernel(NftablesKernel):
        """NftablesKernel that fingerprints each streamed rebuild (str hashes: no copy, ~no time), so
        a repeated rebuild can be checked against the script `nft -f` is timed with."""

        captured: int | None = None

        def apply_stream(self, chunks: Iterable[str]) -> Applied:
            fingerprint = [0]

            def tee() -> Iterator[str]:
                for chunk in chunks:
                    fingerprint[0] = hash((fingerprint[0], chunk))
                    yield chunk

            applied = super().apply_stream(tee())
            self.captured = fingerprint[0]
            return applied

    if trace:
        import tracemalloc

        tracemalloc.start(8)
    config = ProxyConfig(node_name="bench-node", cluster_cidrs=("100.64.0.0/10",), service_cidrs=("198.18.0.0/15",))
    kernel = CapturingKernel()
    result: dict[str, Any] = {"services": n, "endpoints": endpoints, "changes": changes}
    started = time.perf_counter()
    _progress(f"{n} x {endpoints}: cold start (nftproxy run --once as a new process) ...")
    result.update(measure_cold_start(n, endpoints, cold_repeats(n), kernel.delete_table, baseline))
    result["start_section_s"] = time.perf_counter() - started
    kernel.delete_table()  # table absent; loads libnftables, as the first small transaction of an agent would
    proxier = Proxier(config, kernel)

    started = time.perf_counter()
    for i in range(n):
        proxier.upsert(service_object(i))
        proxier.upsert(slice_object(i, original_addresses(i, endpoints)))
    result["load_s"] = time.perf_counter() - started
    gc.collect()
    result["rss_loaded_kib"] = vmrss_kib()
    _progress(f"{n} x {endpoints}: objects loaded in {result['load_s']:.2f} s, cold sync ...")

    # --- cold sync: nftproxy, then nft -f of the identical script, each from an absent table
    repeats = cold_repeats(n)
    prof = cProfile.Profile() if profile_dir else None
    if prof:
        prof.enable()
    started = time.perf_counter()
    sync = proxier.sync()
    cold = [time.perf_counter() - started]
    if prof:
        prof.disable()
        _dump_profile(prof, profile_dir, f"cold-{n}")  # type: ignore[arg-type]
    assert sync.rebuild, "the first sync must be a rebuild"
    result["peak_self_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Not the child's own peak: a child's ru_maxrss starts at the RSS of the parent it was spawned
    # from (Linux carries the pre-exec hiwater over), so this is max(nftproxy's RSS, nft's peak).
    result["children_maxrss_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["cold_operations"] = sync.operations
    fingerprint = kernel.captured
    assert fingerprint is not None, "a rebuild is streamed"
    kernel.captured = None
    result["elements"] = sum(len(v) for v in proxier.committed.claims.values())
    result["chains"] = len(proxier.committed.chains)
    nft_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nfp-bench-") as tmp:
        path = Path(tmp) / "rebuild.nft"
        if _write_rebuild(proxier, path) != fingerprint:
            raise RuntimeError("the rebuild written for nft -f differs from the one streamed")
        result["script_bytes"] = path.stat().st_size
        result["script_lines"] = sum(1 for _ in path.open())
        result["via_child"] = True
        gc.collect()
        result["rss_steady_kib"] = vmrss_kib()
        if trace:
            _progress(f"{n} x {endpoints}: steady state by allocation site (tracemalloc):")
            for line in _trace_top():
                _progress("  " + line)
        _progress(f"{n} x {endpoints}: nftproxy cold sync {cold[0]:.3f} s; nft -f of the same script ...")
        repeat_started = 0.0
        for attempt in range(repeats):
            if attempt == 1:
                repeat_started = time.perf_counter()
            if attempt:  # another cold sync from the same objects, the table absent again
                kernel.delete_table()
                proxier.needs_rebuild = True
                started = time.perf_counter()
                proxier.sync()
                cold.append(time.perf_counter() - started)
                if kernel.captured != fingerprint:
                    raise RuntimeError("a repeated rebuild sent a different ruleset")
                kernel.captured = None
            kernel.delete_table()
            seconds, _maxrss, rc, err = timed_nft_file(path)
            if rc != 0:
                raise RuntimeError(f"nft -f of nftproxy's own rebuild script failed ({rc}): {err.strip()[:2000]}")
            nft_times.append(seconds)
        result["repeat_s"] = time.perf_counter() - repeat_started if repeat_started else 0.0
        # Peaks of nft alone, spawned from a small process so they are nft's own: `nft -f FILE`,
        # then nft reading the same script from its standard input, as NftablesKernel streams it.
        kernel.delete_table()
        result["nft_peak_kib"], result["peak_method"] = peak_rss_kib(["nft", "-f", str(path)])
        kernel.delete_table()
        result["nft_stdin_peak_kib"], _ = peak_rss_kib(["nft", "-f", "/proc/self/fd/0"], stdin=path)
    _progress(f"{n} x {endpoints}: cold syncs {', '.join(f'{x:.3f}' for x in cold)} s; "
              f"nft -f {', '.join(f'{x:.3f}' for x in nft_times)} s; one-Service changes ...")
    result["cold_runs_s"] = cold
    result["nft_runs_s"] = nft_times
    result["cold_s"] = statistics.median(cold)
    result["nft_s"] = statistics.median(nft_times)
    result["ratio"] = result["cold_s"] / result["nft_s"] if result["nft_s"] > 0 else float("inf")
    # The kernel now holds exactly what nftproxy committed (the same script), so diffs apply on top of it.

    # --- one-Service changes, each on a different Service
    picks = [(k * n) // changes for k in range(changes)]
    delete_picks = [p + max(1, n // (2 * changes)) for p in picks]
    next_pod = n * endpoints  # fresh endpoint addresses
    prof = cProfile.Profile() if profile_dir else None

    def timed(kind: str, mutate: Callable[[], None]) -> None:
        mutate()
        if prof:
            prof.enable()
        t0 = time.perf_counter()
        res = proxier.sync()
        dt = time.perf_counter() - t0
        if prof:
            prof.disable()
        assert not res.rebuild, "a change must not rebuild"
        result["change"][kind]["ms"].append(dt * 1000)
        result["change"][kind]["ops"].append(res.operations)

    result["change"] = {kind: {"ms": [], "ops": []} for kind, _ in CHANGE_KINDS}
    for k in range(changes):
        i = picks[k]

        def replace_endpoint(i: int = i, fresh: str = pod_ip(next_pod)) -> None:
            addresses = original_addresses(i, endpoints)
            addresses[0] = fresh
            proxier.upsert(slice_object(i, addresses))

        next_pod += 1
        timed("endpoint", replace_endpoint)
    for k in range(changes):
        i = n + k

        def add_service(i: int = i, first: int = next_pod) -> None:
            proxier.upsert(service_object(i))
            proxier.upsert(slice_object(i, [pod_ip(first + j) for j in range(endpoints)]))

        next_pod += endpoints
        timed("add", add_service)
    for k in range(changes):
        i = delete_picks[k]

        def delete_service(i: int = i) -> None:
            proxier.delete("Service", NAMESPACE, service_name(i))
            proxier.delete("EndpointSlice", NAMESPACE, f"{service_name(i)}-abcde")

        timed("delete", delete_service)
    if prof:
        _dump_profile(prof, profile_dir, f"changes-{n}")  # type: ignore[arg-type]
    for entry in result["change"].values():
        entry["median_ms"] = statistics.median(entry["ms"])
        entry["p95_ms"] = percentile(entry["ms"], 95)
        entry["ops_median"] = statistics.median(entry["ops"])
    gc.collect()
    result["rss_end_kib"] = vmrss_kib()
    result["peak_self_end_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kernel.delete_table()
    return result


def _dump_profile(prof: Any, directory: Path, name: str) -> None:
    import io
    import pstats

    directory.mkdir(parents=True, exist_ok=True)
    prof.dump_stats(str(directory / f"{name}.prof"))
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(25)
    stats.sort_stats("tottime").print_stats(15)
    (directory / f"{name}.txt").write_text(out.getvalue())
    _progress(f"profile written to {directory / name}.prof / .txt")


def _trace_top(limit: int = 25) -> list[str]:
    import tracemalloc

    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    lines = []
    for stat in snapshot.statistics("lineno")[:limit]:
        frame = stat.traceback[0]
        lines.append(f"{stat.size / 2**20:8.1f} MiB {stat.count:9d} blocks  {frame.filename}:{frame.lineno}")
    return lines


def inside_main(args: argparse.Namespace) -> int:
    """The measuring process: refuses to run in the namespace it was started from."""
    here = _netns_id()
    if here is None or not args.host_netns or here in (args.host_netns, _netns_id("1")):
        print(f"[bench] refusing to measure: {here} is not a throwaway namespace", file=sys.stderr)
        return 3
    ns = subprocess.run(["ip", "netns", "identify", str(os.getpid())], capture_output=True, text=True).stdout.strip()
    if not ns.startswith(NETNS_PREFIX):
        print(f"[bench] refusing to measure: running in namespace {ns or '(unnamed)'}, not {NETNS_PREFIX}*", file=sys.stderr)
        return 3
    result = measure(args.services_one, args.endpoints, args.changes,
                     Path(args.profile) if args.profile else None, args.tracemalloc,
                     Path(args.baseline) if args.baseline else None)
    result["netns"] = ns
    Path(args.result).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------------
# driving, outside: the namespace, the order of counts, the safety gates, the report
# --------------------------------------------------------------------------------------------------
def _machine() -> dict[str, str]:
    try:
        nft = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nft = "nft not found"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    root = Path(__file__).resolve().parents[1]
    commit = ""
    if (root / ".git").exists():
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True)
        if head.returncode == 0:
            commit = head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    return {
        "cores": str(cores),
        "kernel": platform.release(),
        "nft": nft,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load": "/".join(f"{x:.2f}" for x in os.getloadavg()),
        "commit": commit,
    }


def _step_plan(counts: Sequence[int]) -> list[tuple[int, bool]]:
    """Counts in increasing order, with a probe at 1,000 first when only larger counts were asked."""
    ordered = sorted(set(counts))
    steps = [(n, False) for n in ordered]
    if ordered and ordered[0] > PROBE_SERVICES:
        steps.insert(0, (PROBE_SERVICES, True))
    return steps


class _Interrupted(Exception):
    pass


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Interrupted("SIGTERM")


def _limit_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))


def _run_step(ns: str, n: int, endpoints: int, changes: int, extra: Sequence[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nfp-bench-result-") as tmp:
        result_path = Path(tmp) / "result.json"
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "nftproxy.bench", "--inside",
                "--services-one", str(n), "--endpoints", str(endpoints), "--changes", str(changes),
                "--result", str(result_path), "--host-netns", _netns_id() or "unknown", *extra]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr, env=env, preexec_fn=_limit_child)
        try:
            rc = proc.wait(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"step {n} x {endpoints} ran longer than {CHILD_TIMEOUT_S:.0f} s: killed") from None
        finally:
            if proc.poll() is None:
                proc.kill()  # only the process this step started
                proc.wait()
        if rc != 0 or not result_path.exists():
            raise RuntimeError(f"step {n} x {endpoints} failed (exit code {rc}); see its messages above")
        return json.loads(result_path.read_text())


def _owner_tag() -> str:
    """`nfp-owner:pid=PID:start=TICKS`, the convention of e2e/netns: the namespace test harness removes
    namespaces named nfp-* whose `lo` alias does not name a live process (leftovers of crashed runs),
    so an untagged benchmark namespace would be killed mid-run by a concurrent test session."""
    with open("/proc/self/stat") as f:
        start = f.read().rsplit(")", 1)[1].split()[19]
    return f"nfp-owner:pid={os.getpid()}:start={start}"


def _delete_netns(ns: str) -> None:
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def run_bench(counts: list[int], endpoints: int, changes: int, output: str | None, extra: Sequence[str] = ()) -> int:
    if os.geteuid() != 0:
        print("nftproxy bench needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            print(f"nftproxy bench needs the {tool} command", file=sys.stderr)
            return 2
    if not counts:
        print("no Service counts given", file=sys.stderr)
        return 2
    steps = _step_plan(counts)
    for n, _probe in steps:
        problem = check_capacity(n, endpoints, min(changes, max(1, n // 2)))
        if problem:
            print(f"nftproxy bench: {problem}", file=sys.stderr)
            return 2

    machine = _machine()
    ns = f"{NETNS_PREFIX}{secrets.token_hex(4)}"
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    rc = 0
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "dev", "lo", "alias", _owner_tag()], check=True, capture_output=True)
        print(f"netns {ns} (deleted at the end)", flush=True)
        for n, probe in steps:
            per_step_changes = min(changes, max(1, n // 2))  # deletes and endpoint changes on distinct Services
            if per_step_changes < changes:
                notes.append(f"{n} Services: {per_step_changes} changes per kind instead of {changes} (distinct Services)")
            started = time.perf_counter()
            res = _run_step(ns, n, endpoints, per_step_changes, extra)
            res["step_s"] = time.perf_counter() - started
            res["probe"] = probe
            results.append(res)
            print(_summary(res), flush=True)
            larger = [m for m, _ in steps if m > n]
            if not larger:
                continue
            if n <= PROBE_SERVICES and res["cold_s"] > PROBE_LIMIT_S:
                notes.append(f"stopped: cold sync at {n} Services took {res['cold_s']:.1f} s (> {PROBE_LIMIT_S:.0f} s); "
                             f"not running {', '.join(map(str, larger))}")
                break
            # load, one cold start, one cold sync, one nft -f, the changes
            one_pass = res["step_s"] - res["repeat_s"] - res["start_section_s"] + res["start_runs_s"][0]
            if one_pass > STEP_LIMIT_S:
                notes.append(f"stopped: the {n}-Service step took {one_pass:.0f} s (> {STEP_LIMIT_S:.0f} s); "
                             f"not running {', '.join(map(str, larger))}")
                break
    except (KeyboardInterrupt, _Interrupted):
        notes.append("interrupted")
        rc = 130
    except (RuntimeError, subprocess.CalledProcessError, OSError) as err:
        detail = getattr(err, "stderr", None)
        notes.append(f"error: {err}{(': ' + detail.decode(errors='replace').strip()) if isinstance(detail, bytes) else ''}")
        rc = 1
    finally:
        _delete_netns(ns)
        signal.signal(signal.SIGTERM, previous)
    text = render_text(results, notes, machine)
    print(text, flush=True)
    if output:
        Path(output).write_text(render_markdown(results, notes, machine))
        print(f"Markdown written to {output}")
    return rc


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------
def _mib(kib: float) -> float:
    return kib / 1024


def _summary(r: dict[str, Any]) -> str:
    head = f"{r['services']} x {r['endpoints']}{' (probe)' if r['probe'] else ''}"
    lines = [
        f"{head}: cold start {r['start_s']:.3f} s, nft -f of its dump {r['start_nft_s']:.3f} s, ratio "
        f"{r['start_ratio']:.2f}x (target <= {TARGET_RATIO}x); parsing {r['parse_objects_per_s']:,.0f} objects/s; "
        f"peak nftproxy {_mib(r['start_peak_self_kib']):.0f} MiB, its nft {_mib(r['start_peak_nft_kib']):.0f} MiB, "
        f"together {_mib(r['start_peak_together_kib']):.0f} MiB",
        f"{head}: cold sync {r['cold_s']:.3f} s, nft -f {r['nft_s']:.3f} s, ratio {r['ratio']:.2f}x "
        f"(target <= {TARGET_RATIO}x); steady RSS {_mib(r['rss_steady_kib']):.0f} MiB; "
        f"step {r['step_s']:.1f} s ({r['step_s'] - r['repeat_s']:.1f} s without the repeated cold syncs)",
    ]
    for kind, label in CHANGE_KINDS:
        c = r["change"][kind]
        lines.append(f"{head}: {label}: latency median {c['median_ms']:.2f} ms, p95 {c['p95_ms']:.2f} ms, "
                     f"{c['ops_median']:g} operations")
    return "\n".join(lines)


def _targets(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        out.append(f"{r['services']} x {r['endpoints']}: cold start ratio {r['start_ratio']:.2f}x <= {TARGET_RATIO}x: "
                   f"{'met' if r['start_ratio'] <= TARGET_RATIO else 'MISSED'}")
        rate = r["parse_objects_per_s"]
        out.append(f"{r['services']} x {r['endpoints']}: parsing {rate:,.0f} objects/s >= {TARGET_PARSE_PER_S:,.0f}: "
                   f"{'met' if rate >= TARGET_PARSE_PER_S else 'MISSED'}")
        ok = r["ratio"] <= TARGET_RATIO
        out.append(f"{r['services']} x {r['endpoints']}: cold sync ratio {r['ratio']:.2f}x <= {TARGET_RATIO}x: "
                   f"{'met' if ok else 'MISSED'}")
    big = [r for r in results if r["services"] >= TARGET_SERVICES]
    for r in big:
        steady = _mib(r["rss_steady_kib"])
        out.append(f"{r['services']} x {r['endpoints']}: steady RSS {steady:.0f} MiB <= {TARGET_STEADY_MIB:.0f} MiB: "
                   f"{'met' if steady <= TARGET_STEADY_MIB else 'MISSED'}")
        for kind, label in CHANGE_KINDS:
            med = r["change"][kind]["median_ms"]
            out.append(f"{r['services']} x {r['endpoints']}: {label} median {med:.2f} ms <= {TARGET_CHANGE_MS:.0f} ms: "
                       f"{'met' if med <= TARGET_CHANGE_MS else 'MISSED'}")
    if not big:
        out.append(f"memory and change-latency targets apply at {TARGET_SERVICES:,} Services: not measured in this run")
    return out


def _start_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Services", "Endpoints", "Objects", "Runs", "parsing", "nftproxy run --once", "nft -f of its dump",
              "ratio", "nftproxy peak", "its nft peak", "together"]
    rows = []
    for r in results:
        rows.append([
            f"{r['services']:,}{' (probe)' if r['probe'] else ''}", str(r["endpoints"]), f"{r['objects']:,}",
            str(len(r["start_runs_s"])), f"{r['parse_objects_per_s']:,.0f}/s", f"{r['start_s']:.3f} s",
            f"{r['start_nft_s']:.3f} s", f"{r['start_ratio']:.2f}x", f"{_mib(r['start_peak_self_kib']):.0f} MiB",
            f"{_mib(r['start_peak_nft_kib']):.0f} MiB", f"{_mib(r['start_peak_together_kib']):.0f} MiB",
        ])
    return header, rows


def _baseline_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Services", "Endpoints", "code", "parsing", "run --once", "ratio to nft -f", "nftproxy peak", "its nft peak",
              "together"]
    rows = []
    for r in results:
        if "base_start_s" not in r:
            continue
        for label, prefix in (("before (baseline)", "base_"), ("after (this tree)", "")):
            rows.append([f"{r['services']:,}", str(r["endpoints"]), label, f"{r[prefix + 'parse_objects_per_s']:,.0f}/s",
                         f"{r[prefix + 'start_s']:.3f} s", f"{r[prefix + 'start_ratio']:.2f}x",
                         f"{_mib(r[prefix + 'start_peak_self_kib']):.0f} MiB", f"{_mib(r[prefix + 'start_peak_nft_kib']):.0f} MiB",
                         f"{_mib(r[prefix + 'start_peak_together_kib']):.0f} MiB"])
    return header, rows


def _cold_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Services", "Endpoints", "Elements", "Script", "Runs", "nftproxy sync", "nft -f", "ratio",
              "steady RSS", "nftproxy peak", "its nft child peak", "nft -f peak"]
    rows = []
    for r in results:
        rows.append([
            f"{r['services']:,}{' (probe)' if r['probe'] else ''}", str(r["endpoints"]), f"{r['elements']:,}",
            f"{r['script_bytes'] / 2**20:.1f} MiB", str(len(r["cold_runs_s"])), f"{r['cold_s']:.3f} s", f"{r['nft_s']:.3f} s",
            f"{r['ratio']:.2f}x", f"{_mib(r['rss_steady_kib']):.0f} MiB", f"{_mib(r['peak_self_kib']):.0f} MiB",
            f"{_mib(r['nft_stdin_peak_kib']):.0f} MiB" if r["via_child"] else "(in-process)",
            f"{_mib(r['nft_peak_kib']):.0f} MiB",
        ])
    return header, rows


def _change_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Services", "Change", "Runs", "median", "p95", "operations (all seen)"]
    rows = []
    for r in results:
        for kind, label in CHANGE_KINDS:
            c = r["change"][kind]
            ops = sorted(set(c["ops"]))
            rows.append([f"{r['services']:,}", label, str(len(c["ms"])), f"{c['median_ms']:.2f} ms",
                         f"{c['p95_ms']:.2f} ms", "/".join(str(o) for o in ops)])
    return header, rows


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    text_columns = {"Change", "code"}
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if h in text_columns else "---:" for h in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _machine_line(m: dict[str, str], date: bool = True) -> str:
    commit = f", nftproxy {m['commit']}" if m.get("commit") else ""
    when = f", {m['date']}" if date else ""
    return (f"{m['cores']} cores, Linux {m['kernel']}, {m['nft']}, Python {m['python']}{commit}{when}, "
            f"load average {m['load']} at the start")


def render_text(results: list[dict[str, Any]], notes: list[str], machine: dict[str, str]) -> str:
    parts = [f"\nnftproxy bench: {_machine_line(machine)}"]
    if results:
        parts += ["", "Cold start (nftproxy run --manifests DIR --once, process start to rules committed):",
                  _text_table(*_start_rows(results)),
                  *(["", "Cold start, baseline checkout and this one in the same rounds:", _text_table(*_baseline_rows(results))]
                    if _baseline_rows(results)[1] else []),
                  "", "Cold sync (full rebuild, table absent before each) and memory:", _text_table(*_cold_rows(results)),
                  "", "One-Service changes (latency of proxier.sync()):", _text_table(*_change_rows(results)),
                  "", "Targets:", *("  " + t for t in _targets(results))]
    parts += ["", *notes] if notes else []
    return "\n".join(parts)


def render_markdown(results: list[dict[str, Any]], notes: list[str], machine: dict[str, str]) -> str:
    parts = [
        f"## nftproxy bench, {machine['date']}",
        "",
        f"Machine: {_machine_line(machine, date=False)}. Run in a throwaway network namespace.",
        "",
        "Every Service is a ClusterIP with one TCP port and one EndpointSlice.",
        "",
        "*Cold start* is what a user waits for: `nftproxy run --manifests DIR --once` as a new process "
        "(the objects as one JSON List), timed from spawn to exit, the table absent; against `nft -f` "
        "of the ruleset it left, as `nft list table inet nftproxy` prints it, loaded into a new, empty "
        "namespace (`unshare -n`), also from spawn to exit. Runs interleaved, medians compared. "
        "*parsing* is objects parsed per second as a cold start parses them (up to 10,000 Services). "
        "The peaks are sampled every 20 ms from /proc while the cold start runs: VmHWM of nftproxy and "
        "of its nft child, and the largest sum of their VmRSS (*together*).",
        "",
        "*nftproxy sync* is `Proxier.sync()` with the table absent (a full rebuild, including "
        "translation and the child nft it streams the script to); *nft -f* is `nft -f FILE` of the "
        "identical script, the table absent again. "
        "*steady RSS* is VmRSS after `gc.collect()` once synced; *nftproxy peak* is the process's "
        "ru_maxrss; *its nft child peak* is the peak of nft reading the same script from its standard "
        "input (what a rebuild runs, resident next to nftproxy while it runs), *nft -f peak* "
        "that of the plain `nft -f`. Both nft peaks are measured by spawning nft from a small process: "
        "spawned from nftproxy, a child's ru_maxrss starts at nftproxy's RSS.",
        "",
    ]
    if results:
        parts += ["### Cold start (headline)", "", _md_table(*_start_rows(results)), "",
                  *(["#### Before and after (`--baseline`)", "", _md_table(*_baseline_rows(results)), ""]
                    if _baseline_rows(results)[1] else []),
                  "### Cold sync and memory", "", _md_table(*_cold_rows(results)), "",
                  "### One-Service changes", "",
                  "Latency of `Proxier.sync()` for one change, each run on a different Service; operations are "
                  "`SyncResult.operations` (element and chain adds/deletes in the transaction), every count seen "
                  "listed.", "",
                  _md_table(*_change_rows(results)), "", "### Targets", "", *(f"- {t}" for t in _targets(results)), ""]
    if notes:
        parts += ["### Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------
# python -m nftproxy.bench
# --------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nftproxy.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--services", default="1000,10000,30000", help="comma-separated Service counts")
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--changes", type=int, default=50)
    p.add_argument("--output")
    p.add_argument("--profile", help="write cProfile stats of the cold sync and the changes to this directory")
    p.add_argument("--tracemalloc", action="store_true", help="report what the steady state holds (slow)")
    p.add_argument("--baseline", help="another checkout of nftproxy whose cold start runs side by side (before/after)")
    p.add_argument("--runs", type=int, help="interleaved runs of each cold start, cold sync and nft -f (default 3)")
    p.add_argument("--mix", choices=("plain", "policies"), default="plain",
                   help="plain: ClusterIPs only; policies: a quarter each NodePort, eTP Local LoadBalancer with "
                        "source ranges, ClientIP affinity with an externalIP, iTP Local; half the endpoints local")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--services-one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--host-netns", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mix == "policies":
        os.environ["NFTPROXY_BENCH_MIX"] = "policies"
    if args.runs:
        os.environ["NFTPROXY_BENCH_RUNS"] = str(max(1, args.runs))  # the measuring process inherits it
    if args.inside:
        return inside_main(args)
    extra: list[str] = []
    if args.profile:
        extra += ["--profile", str(Path(args.profile).resolve())]
    if args.tracemalloc:
        extra.append("--tracemalloc")
    if args.baseline:
        extra += ["--baseline", str(Path(args.baseline).resolve())]
    counts = [int(x) for x in args.services.split(",") if x.strip()]
    return run_bench(counts, args.endpoints, args.changes, args.output, extra)


if __name__ == "__main__":
    sys.exit(main())
