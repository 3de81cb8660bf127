"""Driving the benchmark, outside the throwaway namespace: the namespace itself, the order of the
Service counts, the safety gates, one measuring process per count (e2e.bench.measure), the report."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from e2e.bench.probes import CHILD_TIMEOUT_S, NETNS_PREFIX, netns_id
from e2e.bench.report import render_markdown, render_text, summary
from e2e.bench.workload import check_capacity
from e2e.netns.cluster import REPO_ROOT, _owner_tag

PROBE_SERVICES = 1000  # probed first before any larger count
PROBE_LIMIT_S = 5.0  # cold sync at the probe above this: stop before larger counts
STEP_LIMIT_S = 60.0  # a step above this: stop before larger counts
CHILD_ADDRESS_SPACE = 16 << 30  # RLIMIT_AS of the measuring process and its nft children


def describe_machine() -> dict[str, str]:
    try:
        nft = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nft = "nft not found"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    commit = ""
    if (REPO_ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
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
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "e2e.bench", "--inside",
                "--services-one", str(n), "--endpoints", str(endpoints), "--changes", str(changes),
                "--result", str(result_path), "--host-netns", netns_id() or "unknown", *extra]
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

    machine = describe_machine()
    ns = f"{NETNS_PREFIX}{secrets.token_hex(4)}"
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    rc = 0
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        # tagged as the namespace harness tags its own: a test session's cleanup removes nfp-* namespaces
        # whose `lo` alias names no live process, and would kill an untagged one mid-run
        subprocess.run(["ip", "-n", ns, "link", "set", "dev", "lo", "alias", _owner_tag()],
                       check=True, capture_output=True)
        print(f"netns {ns} (deleted at the end)", flush=True)
        for n, probe in steps:
            per_step_changes = min(changes, max(1, n // 2))  # deletes and endpoint changes on distinct Services
            if per_step_changes < changes:
                notes.append(f"{n} Services: {per_step_changes} changes per kind instead of {changes} "
                             "(distinct Services)")
            started = time.perf_counter()
            res = _run_step(ns, n, endpoints, per_step_changes, extra)
            res["step_s"] = time.perf_counter() - started
            res["probe"] = probe
            results.append(res)
            print(summary(res), flush=True)
            larger = [m for m, _ in steps if m > n]
            if not larger:
                continue
            if n <= PROBE_SERVICES and res["cold_s"] > PROBE_LIMIT_S:
                notes.append(f"stopped: cold sync at {n} Services took {res['cold_s']:.1f} s "
                             f"(> {PROBE_LIMIT_S:.0f} s); not running {', '.join(map(str, larger))}")
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
        more = (": " + detail.decode(errors="replace").strip()) if isinstance(detail, bytes) else ""
        notes.append(f"error: {err}{more}")
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
