"""The headline step: a cold start, `nftproxy run --manifests DIR --once` as a new process from spawn to
exit (the table absent), its memory and its nft child's sampled from /proc, against `nft -f` of the
ruleset it left (as `nft list table` prints it) into a new, empty namespace (`unshare -n`); and how
fast a cold start parses objects. Interleaved runs, medians compared; `baseline`: another checkout's
cold start in the same rounds.
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2e.bench import workload
from e2e.bench.probes import CHILD_TIMEOUT_S, progress, timed_nft_file
from e2e.bench.workload import BENCH_FLAGS, write_manifests

SAMPLE_S = 0.02  # memory sampling interval of a cold start
# The checkout whose nftproxy a cold start runs (the one holding this benchmark; found from here, so
# that the measuring process imports nothing of the test bed beyond the benchmark itself).
THIS_TREE = Path(__file__).resolve().parents[2]


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
            tail = err.read().decode(errors='replace')[-2000:]
            raise RuntimeError(f"nftproxy run --once failed ({proc.returncode}): {tail}")
    return seconds, memory


def timed_nft_fresh(path: Path) -> float:
    """`nft -f path` in a namespace of its own, new and empty (`unshare -n`), from spawn to exit."""
    seconds, _maxrss, rc, err = timed_nft_file(path, fresh_netns=True)
    if rc != 0:
        raise RuntimeError(f"nft -f of the dumped ruleset failed ({rc}): {err.strip()[:2000]}")
    return seconds


PARSE_RATE = """
import gc, importlib.util, sys, time
from nftproxy.agent.proxier import Proxier
from nftproxy.config import ProxyConfig
from nftproxy.kernel.fake import FakeKernel
spec = importlib.util.spec_from_file_location("bench_workload", sys.argv[3])
workload = importlib.util.module_from_spec(spec)
spec.loader.exec_module(workload)
n, endpoints = int(sys.argv[1]), int(sys.argv[2])
objects = [obj for i in range(n)
           for obj in (workload.service_object(i), workload.slice_object(i, workload.original_addresses(i, endpoints)))]
proxier = Proxier(ProxyConfig(node_name="bench-node"), FakeKernel())
gc.disable()
started = time.perf_counter()
for obj in objects:
    proxier.upsert(obj)
print(len(objects) / (time.perf_counter() - started))
"""


def parse_rate(n: int, endpoints: int, tree: Path = THIS_TREE) -> float:
    """Objects parsed per second by `Proxier.upsert`, the collector off as in a cold start, over up to
    10,000 Services; in a process of its own, running the checkout at `tree` (with this checkout's
    workload, loaded by its path, so that a baseline parses the very same objects)."""
    proc = subprocess.run([sys.executable, "-c", PARSE_RATE, str(min(n, 10000)), str(endpoints), workload.__file__],
                          capture_output=True, text=True, env=_tree_env(tree), cwd=tree, timeout=CHILD_TIMEOUT_S)
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
            progress(f"{n} x {endpoints}: cold start {seconds:.3f} s"
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
