"""`python -m e2e.bench.lb`: see the package's docstring."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import e2e.bench.lb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.bench.lb",
                                     description=(e2e.bench.lb.__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=lambda s: [int(x) for x in s.split(",")], default=[1000],
                        help="how many Services; a comma-separated list runs each in turn")
    parser.add_argument("--rate", type=float, default=320.0, help="creates per second the clients aim at")
    parser.add_argument("--clients", type=int, default=4, help="client threads creating Services")
    parser.add_argument("--standin", choices=("subprocess", "inprocess"), default="subprocess",
                        help="the stand-in in its own process, or inside the allocator's")
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    parser.add_argument("--output", help="write the figures as a Markdown table here")
    parser.add_argument("--json", action="store_true", help="print each result as JSON")
    parser.add_argument("--profile-dir", help="cProfile the allocator's loop thread into this folder")
    parser.add_argument("--progress", action="store_true", help="print progress every 5 s")
    parser.add_argument("--role", choices=("driver", "allocator"), default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "allocator":
        from e2e.bench.lb.allocator import run_allocator

        return run_allocator(args.kubeconfig, args.standin == "inprocess", args.workdir, args.profile)

    from e2e.bench.lb.driver import measure
    from e2e.bench.lb.result import render_markdown

    results = []
    for n in args.services:
        result = measure(n, args.rate, args.clients, args.standin, args.timeout, args.profile_dir,
                         progress=args.progress)
        results.append(result)
        print(json.dumps(asdict(result)) if args.json else result.summary(), flush=True)
        if args.profile_dir:
            print(f"  the allocator loop's profile: {args.profile_dir}/allocator-loop.prof (python -m pstats)")
    if args.output:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        Path(args.output).write_text(render_markdown(results, when, f"{os.cpu_count()} cores"))
        print(f"Markdown written to {args.output}")
    return 0 if all(r.complete for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
