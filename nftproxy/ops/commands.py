"""`nftproxy explain` and `nftproxy status`: their flags and what they print (the shell of ops/)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def add_parsers(sub: Any) -> None:
    explain = sub.add_parser("explain", help="where a connection to DEST goes on this node, read from the kernel")
    explain.add_argument("dest", metavar="DEST", help="IP:PORT or [IPv6]:PORT")
    explain.add_argument("--proto", choices=("tcp", "udp", "sctp"), default="tcp")
    explain.add_argument("--from", dest="source", metavar="SRC",
                         help="the client's address (default: every kind of source that is treated differently)")
    explain.add_argument("--json", action="store_true", help="print JSON for scripts")
    explain.add_argument("--log-format", choices=("plain", "json"), default="plain")


def run(args: argparse.Namespace) -> int:
    if args.command == "explain":
        return cmd_explain(args)
    return 2


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import BadDestination, explain, parse_packet, to_json, to_text
    from .netlink import NetlinkError
    from .view import LiveTable, TableAbsent

    try:
        packet = parse_packet(args.dest, args.proto, args.source)
    except BadDestination as err:
        sys.stderr.write(f"nftproxy explain: {err}\n")
        return 2
    started = time.monotonic()
    try:
        result = explain(LiveTable(), packet)
    except TableAbsent as err:
        sys.stderr.write(f"nftproxy explain: {err}: nftproxy has not programmed this node\n")
        return 1
    except (NetlinkError, PermissionError) as err:
        sys.stderr.write(f"nftproxy explain: cannot read the kernel's nftables ({err}): run as root (CAP_NET_ADMIN)\n")
        return 1
    sys.stdout.write(to_json(result) + "\n" if args.json else to_text(result))
    if not args.json:
        sys.stdout.write(f"  (read from the kernel in {(time.monotonic() - started) * 1000:.1f} ms)\n")
    return 0
