"""Run the scenario suite: ``python -m e2e.scenarios [--list] [--target namespace|kube] [-k SUBSTRING]``.

One line per scenario (``PASS``, ``FAIL: message``, ``SKIP: reason``), then ``N passed, M failed``
(``, K skipped`` when any were). Exit status 1 if any scenario failed, 2 if the target could not be
set up. The target defaults to ``$NFTPROXY_E2E_TARGET``, else ``kube`` when ``$KUBECONFIG`` is set,
else ``namespace``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from e2e.scenarios.scenarios import SCENARIOS, describe
from e2e.scenarios.targets import TARGETS, Skip, default_target_name, make_target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.scenarios", description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the scenarios and their expected outcome")
    parser.add_argument("--target", choices=TARGETS, default=None,
                        help="where to run (default: $NFTPROXY_E2E_TARGET, else kube if $KUBECONFIG is set, "
                             "else namespace)")
    parser.add_argument("-k", dest="keyword", default="", help="only scenarios whose name contains this")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="on failure, print the traceback (and the agents' logs on the namespace target)")
    args = parser.parse_args(argv)

    chosen = {name: fn for name, fn in SCENARIOS.items() if args.keyword in name}
    if args.list:
        width = max((len(n) for n in chosen), default=0)
        for name, fn in chosen.items():
            print(f"{name:<{width}}  {describe(fn)}")
        return 0
    if not chosen:
        print(f"no scenario name contains {args.keyword!r}", file=sys.stderr)
        return 2

    try:
        target_name = args.target or default_target_name()
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    target = make_target(target_name)
    started = time.monotonic()
    try:
        target.start()
    except Exception as err:  # noqa: BLE001 - reported, not raised
        print(f"the {target_name} target could not be set up: {type(err).__name__}: {err}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        return 2
    print(f"target {target_name}: ready in {time.monotonic() - started:.1f} s", file=sys.stderr)

    passed = failed = skipped = 0
    width = max(len(n) for n in chosen)
    try:
        for name, fn in chosen.items():
            t0 = time.monotonic()
            try:
                fn(target)
            except Skip as reason:
                skipped += 1
                print(f"SKIP  {name:<{width}}  ({reason})", flush=True)
            except Exception as err:  # noqa: BLE001 - every failure is reported the same way
                failed += 1
                message = str(err) if isinstance(err, AssertionError) else f"{type(err).__name__}: {err}"
                print(f"FAIL  {name:<{width}}  ({message})  [{time.monotonic() - t0:.1f} s]", flush=True)
                if args.verbose:
                    traceback.print_exc()
                    logs = getattr(target, "agent_logs", None)
                    if logs is not None:
                        print(logs(), file=sys.stderr)
            else:
                passed += 1
                print(f"PASS  {name:<{width}}  [{time.monotonic() - t0:.1f} s]", flush=True)
    finally:
        target.close()
    print(f"total {time.monotonic() - started:.1f} s", file=sys.stderr)
    summary = f"{passed} passed, {failed} failed"
    if skipped:
        summary += f", {skipped} skipped"
    print(summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
