"""`python -m e2e.bench`: the flags of `nftproxy bench`, plus --profile, --tracemalloc, --baseline, --runs and
--mix (see the package's docstring); `--inside` starts the measuring process (the driver does)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import e2e.bench


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.bench", description=(e2e.bench.__doc__ or "").split("\n\n")[0])
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
    if args.inside:  # the measuring process imports only what it measures with
        from e2e.bench.measure import inside_main

        return inside_main(args)
    from e2e.bench.driver import run_bench

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
