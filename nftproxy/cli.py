"""Command line: `nftproxy run | cleanup | demo | bench`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence

from .config import ConfigError, ProxyConfig, default_node_name, parse_cidr_list
from .logs import setup_logging

log = logging.getLogger("nftproxy")


def _add_proxy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node-name", "--hostname-override", dest="node_name", default=None,
                   help="this node's name (default: the host name)")
    p.add_argument("--cluster-cidr", default="", help="pod CIDRs, comma-separated, at most one per family")
    p.add_argument("--service-cidr", default="", help="Service CIDRs, comma-separated, at most one per family")
    p.add_argument("--nodeport-addresses", default="",
                   help="CIDRs whose local addresses accept NodePorts (default: every local address but loopback)")
    p.add_argument("--masquerade-all", action="store_true", help="masquerade all traffic to Services")
    p.add_argument("--log-format", choices=("plain", "json"), default="plain")


def config_from_args(args: argparse.Namespace) -> ProxyConfig:
    return ProxyConfig(
        node_name=args.node_name or default_node_name(),
        cluster_cidrs=parse_cidr_list("--cluster-cidr", args.cluster_cidr, one_per_family=True),
        service_cidrs=parse_cidr_list("--service-cidr", args.service_cidr, one_per_family=True),
        nodeport_cidrs=parse_cidr_list("--nodeport-addresses", args.nodeport_addresses, one_per_family=False),
        masquerade_all=args.masquerade_all,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nftproxy", description="Kubernetes Services as nftables maps")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="keep this node's nftables in step with Services and EndpointSlices")
    run.add_argument("--manifests", help="read objects from a YAML/JSON file or directory instead of the API")
    run.add_argument("--once", action="store_true", help="sync once and exit (0 on success)")
    run.add_argument("--dry-run", action="store_true", help="print the transaction instead of applying it")
    run.add_argument("--poll-interval", type=float, default=1.0, help="seconds between manifest re-reads")
    _add_proxy_flags(run)

    cleanup = sub.add_parser("cleanup", help="remove everything nftproxy created, and nothing else")
    cleanup.add_argument("--log-format", choices=("plain", "json"), default="plain")

    demo = sub.add_parser("demo", help="build a namespace cluster, apply example Services, show traffic")
    demo.add_argument("--keep", action="store_true", help="leave the demo cluster running until Ctrl-C")
    demo.add_argument("--log-format", choices=("plain", "json"), default="plain")

    bench = sub.add_parser("bench", help="cold sync and one-Service changes against nft -f, at scale")
    bench.add_argument("--services", default="1000,10000,30000", help="comma-separated Service counts")
    bench.add_argument("--endpoints", type=int, default=10)
    bench.add_argument("--changes", type=int, default=50, help="one-Service changes measured per kind")
    bench.add_argument("--output", help="also write the results as Markdown to this file")
    bench.add_argument("--log-format", choices=("plain", "json"), default="plain")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "cleanup":
            return cmd_cleanup()
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(keep=args.keep)
        if args.command == "bench":
            from .bench import run_bench

            counts = [int(x) for x in args.services.split(",") if x.strip()]
            return run_bench(counts, args.endpoints, args.changes, args.output)
    except ConfigError as err:
        log.error("invalid configuration: %s", err)
        return 2
    return 2


def cmd_cleanup() -> int:
    from .kernel import KernelError
    from .kernel.nft import NftablesKernel

    try:
        NftablesKernel().delete_table()
    except KernelError as err:
        log.error("cleanup failed: %s", err)
        return 1
    log.info("removed table inet nftproxy")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .agent.manifest_source import ManifestSource
    from .agent.proxier import Proxier
    from .kernel import KernelError
    from .kernel.fake import FakeKernel
    from .kernel.nft import NftablesKernel
    from .objects.manifests import ManifestError

    config = config_from_args(args)
    if not args.manifests:
        log.error("watching the API server is not available yet: pass --manifests PATH")
        return 2
    source = ManifestSource(args.manifests)
    try:
        changes = source.poll(strict=args.once or args.dry_run)
    except ManifestError as err:
        log.error("%s", err)
        return 1
    proxier = Proxier(config, FakeKernel() if args.dry_run else NftablesKernel())
    for obj in changes.upserts:
        proxier.upsert(obj)
    if args.dry_run:
        _plan, tx, _inputs, _rebuild = proxier.compute()
        sys.stdout.write(tx.render())
        return 0
    stop = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True
        log.info("received %s: exiting, rules stay in place", signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while True:
        if proxier.pending():
            try:
                result = proxier.sync()
                log.info(
                    "synced %d Service(s): %s, %d operation(s) in %.1f ms",
                    result.services_synced, "full rebuild" if result.rebuild else "diff",
                    result.operations, result.seconds * 1000,
                )
            except KernelError as err:
                log.error("sync failed, the next sync rebuilds the table: %s", err)
                if args.once:
                    return 1
        if args.once or stop:
            return 0
        deadline = time.monotonic() + args.poll_interval
        while not stop and time.monotonic() < deadline:
            time.sleep(0.05)
        if stop:
            return 0
        try:
            changes = source.poll()
        except ManifestError as err:
            log.error("%s", err)
            continue
        for obj in changes.upserts:
            proxier.upsert(obj)
        for kind, namespace, name in changes.deletes:
            proxier.delete(kind, namespace, name)
