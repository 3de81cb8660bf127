"""Step 4 of the demo: the part of a node's ruleset a packet to a Service walks through, in that order,
each block with a note on what it does."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from e2e.demo.terminal import Terminal

_BLOCK_START = re.compile(r"^\t(set|map|chain) (\S+) \{$")


def show_ruleset(t: Terminal, cluster: Any, keep: bool) -> None:
    """Step 4: the maps and chains a packet to a Service walks through, from the first node's ruleset."""
    node = cluster.nodes[0]
    t.step(4, f"The ruleset: nft list table inet nftproxy  (in {node.name}'s namespace)")
    text = cluster.exec(node, ["nft", "list", "table", "inet", "nftproxy"]).stdout
    lines = text.rstrip("\n").splitlines()
    blocks = _blocks(text)
    picked: list[tuple[str, list[str]]] = []

    def pick(note: str, match: Callable[[str], bool]) -> None:
        for name in sorted(n for n in blocks if match(n)):
            picked.append((note, blocks[name]))
            note = ""

    pick("every new connection to a Service: its frontend (address . protocol . port) picks a class, "
         "the class a chain",
         lambda n: n == "chain services")
    pick("ClusterIPs, externalIPs and LoadBalancer IPs", lambda n: n == "map service-ips-v4")
    pick("NodePorts, on any local address", lambda n: n == "map service-nodeports-v4")
    pick("the class found there -> its chain", lambda n: n == "map classes")
    pick("one chain per kind and endpoint count, shared by all such Services: mark for masquerade "
         "(not for pod sources of ClusterIPs), then DNAT to a random endpoint",
         lambda n: n.startswith("chain lb-"))
    pick("frontend . random index -> endpoint", lambda n: n.startswith("map backends-"))
    pick("postrouting: masquerade what was marked", lambda n: n == "chain masquerading")
    if len(picked) < 4:  # the format is not what this expects: show it all rather than a wrong excerpt
        t.say(text.rstrip("\n"))
        return
    t.say(t.dim("      the maps and chains a packet to a Service walks through, in that order:"))
    t.say("table inet nftproxy {")
    shown = 2
    for note, block in picked:
        if note:
            t.say(t.dim(t.wrap(note, 8, "#").replace(" " * 8, "\t")))
        for line in block:
            t.say(line)
        shown += len(block)
    t.say("}")
    how = (f"ip netns exec {node.netns} nft list table inet nftproxy" if keep else
           f"`nftproxy demo --keep`, then ip netns exec {cluster.prefix.split('-')[0]}-<id>-{node.name} "
           "nft list table inet nftproxy")
    t.say(t.dim(t.wrap(f"({shown} of {len(lines)} lines; the rest: the IPv6 twins, the empty no-endpoint maps, "
                       f"the reject/drop checks and the base chains with their hooks. All of it: {how})", 6)))

# -- summary and --keep --------------------------------------------------- #


def _blocks(text: str) -> dict[str, list[str]]:
    """Top-level sets, maps and chains of `nft list table` output, by "kind name"."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if current is None:
            m = _BLOCK_START.match(line)
            if m:
                current = [line]
                blocks[f"{m.group(1)} {m.group(2)}"] = current
        else:
            current.append(line)
            if line == "\t}":
                current = None
    return blocks
