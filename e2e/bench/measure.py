"""The measuring process, inside the throwaway namespace (`python -m e2e.bench --inside`, started by
the driver): for one Service count, the cold start (e2e.bench.coldstart), then the N Services and
slices fed to `Proxier.upsert` one at a time (the dicts never accumulate and do not count in the memory
figures), the cold sync against `nft -f` of the identical script, memory, and the one-Service changes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from e2e.bench.coldstart import measure_cold_start
from e2e.bench.probes import (
    NETNS_PREFIX,
    cold_repeats,
    netns_id,
    peak_rss_kib,
    percentile,
    progress,
    timed_nft_file,
    vmrss_kib,
)
from e2e.bench.workload import (
    CHANGE_KINDS,
    NAMESPACE,
    original_addresses,
    pod_ip,
    service_name,
    service_object,
    slice_object,
)


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


def measure(n: int, endpoints: int, changes: int, profile_dir: Path | None = None, trace: bool = False,
            baseline: Path | None = None) -> dict[str, Any]:
    """Everything for one Service count; must run inside the throwaway namespace."""
    import cProfile

    from nftproxy.agent.proxier import Proxier
    from nftproxy.config import ProxyConfig
    from nftproxy.kernel import Applied
    from nftproxy.kernel.nft import NftablesKernel

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
    progress(f"{n} x {endpoints}: cold start (nftproxy run --once as a new process) ...")
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
    progress(f"{n} x {endpoints}: objects loaded in {result['load_s']:.2f} s, cold sync ...")

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
            progress(f"{n} x {endpoints}: steady state by allocation site (tracemalloc):")
            for line in _trace_top():
                progress("  " + line)
        progress(f"{n} x {endpoints}: nftproxy cold sync {cold[0]:.3f} s; nft -f of the same script ...")
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
    progress(f"{n} x {endpoints}: cold syncs {', '.join(f'{x:.3f}' for x in cold)} s; "
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
    progress(f"profile written to {directory / name}.prof / .txt")


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
    here = netns_id()
    if here is None or not args.host_netns or here in (args.host_netns, netns_id("1")):
        print(f"[bench] refusing to measure: {here} is not a throwaway namespace", file=sys.stderr)
        return 3
    ns = subprocess.run(["ip", "netns", "identify", str(os.getpid())], capture_output=True, text=True).stdout.strip()
    if not ns.startswith(NETNS_PREFIX):
        print(f"[bench] refusing to measure: running in namespace {ns or '(unnamed)'}, not {NETNS_PREFIX}*",
              file=sys.stderr)
        return 3
    result = measure(args.services_one, args.endpoints, args.changes,
                     Path(args.profile) if args.profile else None, args.tracemalloc,
                     Path(args.baseline) if args.baseline else None)
    result["netns"] = ns
    Path(args.result).write_text(json.dumps(result))
    return 0
