"""Small measuring tools the benchmark's steps share: `nft -f` as a timed child, the peak RSS of a
command, this process's RSS, percentiles, the network namespace a process is in, progress lines."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

NETNS_PREFIX = "nfp-bench-"  # the throwaway namespaces the benchmark measures in
CHILD_TIMEOUT_S = 1800.0  # a step running longer than this is killed


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


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
            stderr = proc.stderr.decode(errors="replace")[:2000]
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {stderr}")
        return int(out.read_text().split()[-1]), method


def netns_id(pid: str = "self") -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:  # e.g. PID 1 of a sandbox we may not inspect
        return None

