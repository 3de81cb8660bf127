"""`nftproxy bench` end to end, small: it measures in a throwaway namespace and leaves none behind."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.bench.coldstart import TreeMemory
from e2e.bench.driver import PROBE_SERVICES, _step_plan
from e2e.bench.probes import percentile
from e2e.bench.workload import check_capacity
from e2e.netns import require_root_and_netns

REPO_ROOT = Path(__file__).resolve().parents[1]


def bench_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("nfp-bench-")}


def test_counts_run_in_order_with_a_probe_first() -> None:
    assert _step_plan([30000, 10000]) == [(PROBE_SERVICES, True), (10000, False), (30000, False)]
    assert _step_plan([50, 1000, 50]) == [(50, False), (1000, False)]
    assert percentile([3.0, 1.0, 2.0], 95) == 3.0
    assert check_capacity(30000, 10, 50) is None
    assert check_capacity(200000, 10, 50) is not None


def test_memory_of_a_process_and_its_nft_child_is_sampled(tmp_path: Path) -> None:
    """A parent holding ~60 MiB and a child named nft (a copy of sleep): their peaks, and the sum."""
    fake_nft = tmp_path / "nft"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake_nft)
    code = ("import subprocess, sys, time; block = bytearray(60 << 20); child = subprocess.Popen([sys.argv[1], '0.5']);"
            "time.sleep(0.1); del block; child.wait()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(fake_nft)])
    memory = TreeMemory(proc.pid)
    memory.start()
    proc.wait()
    memory.stop()
    assert memory.hwm_kib["self"] > 60 << 10
    assert 0 < memory.hwm_kib["nft"] < 20 << 10
    assert memory.together_kib >= memory.hwm_kib["nft"] + (60 << 10)


@pytest.mark.kernel
def test_bench_smoke(tmp_path: Path) -> None:
    require_root_and_netns()
    before = bench_namespaces()
    report = tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, "-m", "nftproxy", "bench", "--services", "50", "--endpoints", "3", "--changes", "3",
         "--output", str(report)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    start = re.search(r"^50 x 3: cold start [\d.]+ s, nft -f of its dump [\d.]+ s, ratio [\d.]+x .*; parsing "
                      r"[\d,]+ objects/s; peak nftproxy (\d+) MiB, its nft (\d+) MiB, together (\d+) MiB", out, re.M)
    assert start, out
    assert int(start[1]) > 0 and int(start[3]) >= int(start[1]), "the cold start's memory was sampled"
    assert re.search(r"^50 x 3: cold sync [\d.]+ s, nft -f [\d.]+ s, ratio [\d.]+x", out, re.M), out
    for label in ("replace one endpoint", "add a Service", "delete a Service"):
        assert re.search(rf"^50 x 3: {label}: latency median [\d.]+ ms, p95 [\d.]+ ms, \d+ operations", out, re.M), out
    assert "### Cold start (headline)" in report.read_text() and "| Services |" in report.read_text()
    used = re.search(r"^netns (nfp-bench-\w+)", out, re.M)
    assert used, out
    after = bench_namespaces()
    assert used.group(1) not in after
    assert after <= before, f"left behind: {after - before}"
