"""How long `nftproxy explain` and `nftproxy status` take on a big node, measured as a user runs them.

    python -m e2e.bench.ops [--services 10000] [--endpoints 10] [--runs 10]

In a throwaway network namespace: the benchmark's Services (e2e/bench/workload.py) loaded by a running
agent, then each command run as its own process, as an operator would. Wall time depends on what else
the machine runs, so each figure also has its CPU time (the command's process, and for status the
agent thread that computes drift), which does not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from e2e.bench.driver import describe_machine
from e2e.bench.workload import BENCH_FLAGS, cluster_ip, write_manifests
from e2e.netns.cluster import REPO_ROOT
from e2e.netns.scratch import scratch_netns

ENV = dict(os.environ, PYTHONPATH=str(REPO_ROOT))


def timed(ns: str, *argv: str) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, stdout) of `nftproxy ARGV` in the namespace."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "nftproxy", *argv],
                          capture_output=True, text=True, env=ENV, cwd=REPO_ROOT)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"nftproxy {' '.join(argv)} failed: {proc.stderr.strip()}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, proc.stdout


def measure(ns: str, services: int, endpoints: int, runs: int, manifests: Path) -> dict[str, Any]:
    write_manifests(manifests, services, endpoints)
    agent = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "nftproxy", "run", "--manifests",
                              str(manifests), "--poll-interval", "3600", *BENCH_FLAGS],
                             env=ENV, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stderr is not None
        for line in agent.stderr:
            if "synced" in line:
                break
        else:
            raise RuntimeError("the agent exited before its first sync")
        out: dict[str, Any] = {"services": services, "endpoints": endpoints}
        samples = [timed(ns, "explain", f"{cluster_ip(random.randrange(services))}:80", "--from", "100.64.0.7",
                         "--json") for _ in range(runs)]
        out["explain"] = {"wall_s": statistics.median(w for w, _, _ in samples),
                          "cpu_s": statistics.median(c for _, c, _ in samples)}
        first = timed(ns, "status", "--json")
        report = json.loads(first[2])
        out["status_first"] = {"wall_s": first[0], "cpu_s": first[1], "drift_ms": report["agent"]["drift_ms"],
                               "drift_cpu_ms": report["agent"]["drift_cpu_ms"],
                               "elements": report["kernel"]["elements"], "clean": report["agent"]["drift"]["clean"]}
        again = [timed(ns, "status", "--json") for _ in range(runs)]
        out["status_again"] = {"wall_s": statistics.median(w for w, _, _ in again),
                               "cpu_s": statistics.median(c for _, c, _ in again)}
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    alone = [timed(ns, "status", "--json") for _ in range(max(1, runs // 3))]
    out["status_without_agent"] = {"wall_s": statistics.median(w for w, _, _ in alone),
                                   "cpu_s": statistics.median(c for _, c, _ in alone)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.bench.ops", description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    # nfp-bench-<random>, tagged as the harness tags its own, lo up; deleted at the end
    with scratch_netns("bench") as ns, tempfile.TemporaryDirectory(prefix="nfp-bench-ops-") as tmp:
        result = measure(ns, args.services, args.endpoints, args.runs, Path(tmp))
    result["machine"] = describe_machine()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
