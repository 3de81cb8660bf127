"""`nftproxy explain` and `nftproxy status`: their flags and what they print (the shell of ops/)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any


def add_parsers(sub: Any) -> None:
    explain = sub.add_parser("explain", help="where a connection to DEST goes on this node, read from the kernel")
    explain.add_argument("dest", metavar="DEST", help="IP:PORT or [IPv6]:PORT")
    explain.add_argument("--proto", choices=("tcp", "udp", "sctp"), default="tcp")
    explain.add_argument("--from", dest="source", metavar="SRC",
                         help="the client's address (default: every kind of source that is treated differently)")
    explain.add_argument("--json", action="store_true", help="print JSON for scripts")
    explain.add_argument("--log-format", choices=("plain", "json"), default="plain")


    status = sub.add_parser("status",
                            help="sync state, what the kernel holds, invalid objects, LB announcements, drift")
    status.add_argument("--agent", default=AGENT_URL,
                        help="the running agent's /status, on its --metrics-bind-address (default %(default)s)")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.add_argument("--log-format", choices=("plain", "json"), default="plain")


AGENT_URL = "http://127.0.0.1:10249/status"


def run(args: argparse.Namespace) -> int:
    if args.command == "explain":
        return cmd_explain(args)
    if args.command == "status":
        return cmd_status(args)
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


def ask_agent(url: str, timeout: float = 10.0) -> tuple[dict[str, Any] | None, str | None]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return dict(json.loads(response.read())), None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return None, f"{url} not reachable ({reason})"


def cmd_status(args: argparse.Namespace) -> int:
    """Kernel first (absent table: exit 1, one line), then the agent; its drift, or a kernel-only report."""
    from .layout import TABLE
    from .netlink import NetlinkError, NetlinkReader
    from .status import SnapshotBusy, read_table, summary

    started = time.monotonic()
    try:
        with NetlinkReader() as reader:
            if not reader.has_table(TABLE):
                sys.stderr.write("nftproxy status: table inet nftproxy is absent: no agent has synced on this node "
                                 "(or `nftproxy cleanup` removed it)\n")
                return 1
            agent, why = ask_agent(args.agent)
            kernel = agent.get("kernel") if agent else None
            if kernel is None:
                kernel = summary(read_table(reader, keys=False))
    except (NetlinkError, PermissionError, SnapshotBusy) as err:
        sys.stderr.write(f"nftproxy status: cannot read the kernel's nftables ({err}): run as root (CAP_NET_ADMIN)\n")
        return 1
    report = {"kernel": kernel, "agent": agent if agent is not None else {"error": why},
              "ms": round((time.monotonic() - started) * 1000, 1)}
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else status_text(report))
    return 0


def status_text(report: dict[str, Any]) -> str:
    kernel, agent = report["kernel"], report["agent"]
    lines = [f"nftproxy status (kernel generation {kernel['generation']}, {report['ms']:.0f} ms)"]
    if "error" in agent:
        lines.append(f"  agent       {agent['error']}: what follows is the kernel's alone")
    else:
        sync = agent["sync"]
        last = sync["last"]
        what = "" if last is None else (f", last: {'rebuild' if last['rebuild'] else 'diff'} of {last['operations']}"
                                        f" operation(s) in {last['ms']} ms")
        lines.append(f"  sync        {sync['state']}; last sync {sync['last_sync'] or 'never'} "
                     f"({sync['syncs']} sync(s){what})")
    lines.append(f"  kernel      {kernel['services']} Service(s) ({kernel['services_without_endpoints']} without "
                 f"endpoints), {kernel['endpoints']} endpoint(s), "
                 + (f"{kernel['elements']} element(s), " if kernel["elements"] is not None else "")
                 + f"{len(kernel['lb_chains'])} lb chain(s)")
    config = kernel["config"]
    lines.append("  config      " + "; ".join(f"{k}: {', '.join(v) or '-'}" for k, v in config.items()))
    if "error" not in agent:
        lines.append(f"  agent       {agent['programmed']['services']} Service(s), "
                     f"{agent['programmed']['elements']} element(s) committed")
        invalid = agent["invalid"]
        lines.append(f"  invalid     {len(invalid) or 'none'}")
        lines += [f"    {i['reason']}" for i in invalid]
        lb = agent["load_balancer"]
        if lb is None:
            lines.append("  LB          not run by this agent (manifests, --once or --no-load-balancer)")
        else:
            announced = [f"{a} on {i}" for i, addresses in lb["announced"].items() for a in addresses]
            lines.append(f"  LB          announcing {', '.join(announced) if announced else 'nothing'}")
            for session in lb.get("bgp_sessions") or ():
                error = f" ({session['last_error']})" if session["last_error"] and not session["established"] else ""
                lines.append(f"  BGP         {session['peer']} {session['address']}: {session['state']}{error}; "
                             f"advertising {', '.join(session['prefixes']) or 'nothing'}")
        found = agent.get("drift") or {}
        if "error" in found:
            lines.append(f"  drift       not computed: {found['error']}")
        elif found.get("clean"):
            lines.append(f"  drift       none (kernel and committed state agree; "
                         f"computed in {agent.get('drift_ms')} ms, {agent.get('drift_cpu_ms')} ms CPU)")
        else:
            lines.append("  drift       THE KERNEL DIFFERS from what the agent committed:")
            for kind in ("missing", "unexpected"):
                for name, info in found[kind].items():
                    lines.append(f"    {kind:<10} {name}: {info['count']}: {', '.join(info['keys'][:5])}"
                                 f"{' ...' if info['count'] > 5 else ''}")
            for kind in ("chains_missing", "chains_unexpected"):
                if found[kind]:
                    lines.append(f"    {kind.replace('_', ' ')}: {', '.join(found[kind])}")
    return "\n".join(lines) + "\n"
