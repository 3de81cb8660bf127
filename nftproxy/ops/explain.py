"""`nftproxy explain DEST`: what this node's rules do with a new connection, read from the kernel.

Pure over a `TableView`: the packet path of rules/nftproxy.nft replayed against the kernel's own maps
(firewall-check, then the services chain's lookups and the lb chain's slots, then the filter checks),
so the answer is what the kernel holds now, not what the agent meant to write. Without `--from` the
answer is given for each kind of source that is treated differently (pods, this node, other hosts).
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol
from ipaddress import ip_address, ip_network

from ..desired import sets
from ..desired.sets import SetFamily
from .layout import (
    AFFINITY_DISPATCH,
    AFFINITY_IPS,
    AFFINITY_NODEPORTS,
    DISPATCH,
    EXTERNAL_IPS,
    LOCAL_DISPATCH,
    NODE_PORTS,
    affinity_timeout,
    is_verdict,
    lb_chain,
)
from .view import TableView

PROTOCOLS = ("tcp", "udp", "sctp")


class BadDestination(ValueError):
    """DEST or --from is not an address (and port) nftproxy could have rules for."""


@dataclass(frozen=True, slots=True)
class Packet:
    dest: str
    port: int
    proto: str = "tcp"
    source: str | None = None

    @property
    def family(self) -> int:
        return 6 if ":" in self.dest else 4


def parse_packet(dest: str, proto: str = "tcp", source: str | None = None) -> Packet:
    """DEST is `IP:PORT` or `[IPv6]:PORT`; addresses made canonical, as the maps hold them."""
    text = dest.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    try:
        address = ip_address(host)
        number = int(port)
    except ValueError:
        raise BadDestination(f"{dest!r}: expected IP:PORT, or [IPv6]:PORT") from None
    if not 0 < number < 65536:
        raise BadDestination(f"{dest!r}: port out of range")
    if proto not in PROTOCOLS:
        raise BadDestination(f"--proto {proto!r}: expected one of {', '.join(PROTOCOLS)}")
    src = None
    if source is not None:
        try:
            parsed = ip_address(source.strip())
        except ValueError:
            raise BadDestination(f"--from {source!r}: not an IP address") from None
        if parsed.version != address.version:
            raise BadDestination(f"--from {source}: IPv{parsed.version} source for an IPv{address.version} destination")
        src = str(parsed)
    return Packet(str(address), number, proto, src)


class ExternalNames(Protocol):
    """Where an external frontend kind's eTP Local split lives (translate.EXTERNAL_IPS / NODE_PORTS)."""

    @property
    def local_chain(self) -> str: ...

    @property
    def short_map(self) -> SetFamily: ...

    @property
    def local_map(self) -> SetFamily: ...


class AffinityNames(Protocol):
    """A frontend kind's sessionAffinity sets (chains.AFFINITY_IPS / AFFINITY_NODEPORTS)."""

    @property
    def entries(self) -> SetFamily: ...

    @property
    def frontends(self) -> SetFamily: ...

    @property
    def services(self) -> SetFamily: ...

    @property
    def valid(self) -> SetFamily: ...

    @property
    def ports(self) -> SetFamily: ...


@dataclass(frozen=True, slots=True)
class Candidate:
    address: str
    port: int
    probability: float
    slots: int  # how many of the lb chain's slots it holds (its weight)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happens to a new connection from one kind of source."""

    source: str
    verdict: str  # dnat (to one of `endpoints`), reject, drop, accept (not ours: left alone)
    masquerade: bool
    endpoints: tuple[Candidate, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Explanation:
    destination: str
    protocol: str
    source: str | None
    service: str | None  # namespace/name:port from the element's comment
    path: str | None  # ClusterIP, NodePort, externalIP, LoadBalancer, "externalIP or LoadBalancer"
    outcomes: tuple[Outcome, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class _Source:
    label: str
    address: str | None
    pod: bool  # in --cluster-cidr (cluster-cidrs set)
    local: bool  # one of this node's addresses


def _contains(ranges: list[str], address: str) -> bool:
    ip = ip_address(address)
    for text in ranges:
        if "-" in text:
            first, last = (ip_address(x) for x in text.split("-", 1))
            if first.version == ip.version and first <= ip <= last:  # type: ignore[operator]  # same version: comparable
                return True
        elif ip in ip_network(text, strict=False):
            return True
    return False


def _sources(view: TableView, pkt: Packet) -> list[_Source]:
    cidrs = [text for text, _ in view.keys(sets.CLUSTER_CIDRS.name(pkt.family))]
    if pkt.source is not None:
        return [_Source(pkt.source, pkt.source, bool(cidrs) and _contains(cidrs, pkt.source),
                        view.is_local(pkt.source))]
    pods = f"pods ({', '.join(cidrs)})" if cidrs else "pods"
    return [_Source(pods, None, True, False), _Source("this node", None, False, True),
            _Source("other hosts", None, False, False)]


def explain(view: TableView, pkt: Packet) -> Explanation:
    f = pkt.family
    key = [pkt.dest, pkt.proto, str(pkt.port)]
    sources = _sources(view, pkt)
    firewall: list[str] | None = None
    if view.get(sets.FIREWALL_IPS.name(f), key) is not None:
        prefix = " . ".join(key) + " . "
        firewall = [text[len(prefix):] for text, _ in view.keys(sets.FIREWALL_ALLOW.name(f), key)
                    if text.startswith(prefix)]

    hit = view.get(sets.SERVICE_IPS.name(f), key)
    frontend: list[str] = key
    names: ExternalNames = EXTERNAL_IPS
    if hit is not None:
        if view.get(sets.CLUSTER_IPS.name(f), [pkt.dest]) is not None:
            path = "ClusterIP"
        else:
            path = "LoadBalancer" if firewall is not None else "externalIP or LoadBalancer"
    elif _nodeport_address(view, pkt):
        frontend, names, path = [pkt.proto, str(pkt.port)], NODE_PORTS, "NodePort"
        hit = view.get(sets.SERVICE_NODEPORTS.name(f), frontend)
    if hit is not None:
        verdict, comment = resolve(view, hit[0], DISPATCH), hit[1]
        outcomes = [_dnat(view, pkt, src, verdict or "", frontend, names, firewall) for src in sources]
        return Explanation(_dest(pkt), pkt.proto, pkt.source, comment, path, _merge(outcomes))
    return _unserved(view, pkt, key, sources)


def resolve(view: TableView, value: str | None, dispatch: str) -> str:
    """A frontend map's value as a verdict: a class through its dispatch map (a verdict stays one)."""
    if not value or is_verdict(value):
        return value or ""
    hit = view.get(dispatch, [value])
    return (hit[0] or "") if hit else f"class {value} (not in @{dispatch})"


def _dest(pkt: Packet) -> str:
    return f"[{pkt.dest}]:{pkt.port}" if pkt.family == 6 else f"{pkt.dest}:{pkt.port}"


def _nodeport_address(view: TableView, pkt: Packet) -> bool:
    """The services chain's NodePort condition: a local address, not loopback, within nodeport-cidrs."""
    if ip_address(pkt.dest).is_loopback or not view.is_local(pkt.dest):
        return False
    allowed = [text for text, _ in view.keys(sets.NODEPORT_CIDRS.name(pkt.family))]
    return _contains(allowed, pkt.dest)


def _dnat(view: TableView, pkt: Packet, src: _Source, verdict: str, frontend: list[str], names: ExternalNames,
          firewall: list[str] | None) -> Outcome:
    f = pkt.family
    notes: list[str] = []
    if firewall is not None:
        ranges = ", ".join(firewall)
        if src.address is not None and not _contains(firewall, src.address):
            return Outcome(src.label, "drop", False, notes=(f"source outside loadBalancerSourceRanges ({ranges})",))
        notes.append(f"loadBalancerSourceRanges: only {ranges} reach it, others are dropped")
    mark = False
    local_chain = f"{names.local_chain}-v{f}"
    if verdict == f"goto {local_chain}":
        if src.pod or src.local:
            hit = view.get(names.short_map.name(f), frontend)
            mark = src.local and not src.pod
            notes.append("externalTrafficPolicy Local: pods and this node reach every endpoint"
                         + (" (this node masqueraded)" if mark else ""))
        else:
            hit = view.get(names.local_map.name(f), frontend)
            notes.append("externalTrafficPolicy Local: outside traffic goes to this node's endpoints only, "
                         "source kept")
        verdict = resolve(view, hit[0], LOCAL_DISPATCH) if hit else ""
        if verdict == "drop":
            return Outcome(src.label, "drop", False, notes=(*notes, "no endpoint on this node"))
    chain = lb_chain(verdict)
    if chain is None:
        return Outcome(src.label, verdict.split(" ")[0] or "accept", False,
                       notes=(*notes, f"unexpected verdict {verdict!r} in the frontend map"))
    masq = view.masquerade(f"lb-{chain.kind}-v{f}-{chain.count}")
    if masq.unless_from is not None:
        inside = src.pod if src.address is None else _contains([masq.unless_from], src.address)
        if not inside:
            mark = True
        notes.append(f"masqueraded unless the source is in {masq.unless_from}")
    elif masq.always:
        mark = True
    endpoints = _slots(view, chain.backends, frontend, chain.count, notes)
    sticky = _affinity(view, pkt, src, frontend, AFFINITY_IPS if chain.by_address else AFFINITY_NODEPORTS,
                       f"lb-{chain.kind}-v{f}-{chain.count}", notes)
    if sticky == "drop":
        return Outcome(src.label, "drop", mark, notes=tuple(notes))
    if sticky is not None:
        address, _, port = sticky.partition(" . ")
        endpoints = (Candidate(address, int(port) if port else endpoints[0].port if endpoints else 0, 1.0,
                               next((c.slots for c in endpoints if c.address == address), 0)),)
    if src.address is not None and any(c.address == src.address for c in endpoints) and \
            view.get(sets.HAIRPIN.name(f), [src.address, src.address]) is not None:
        notes.append("hairpin: a connection the source makes to itself is masqueraded")
        if len(endpoints) == 1:
            mark = True
    return Outcome(src.label, "dnat", mark, endpoints, tuple(notes))


def _slots(view: TableView, backends: str, frontend: list[str], count: int, notes: list[str]) -> tuple[Candidate, ...]:
    """The frontend's slots in the lb chain's map: each endpoint as often as its weight."""
    seen: Counter[str] = Counter()
    missing = 0
    for i in range(count):
        hit = view.get(backends, [*frontend, str(i)])
        if hit is None or hit[0] is None:
            missing += 1
        else:
            seen[hit[0]] += 1
    if missing:
        notes.append(f"{missing} of {count} slots missing from {backends}: those connections are not balanced")
    out = []
    for value, slots in sorted(seen.items(), key=lambda item: (-item[1], item[0])):
        address, _, port = value.partition(" . ")
        out.append(Candidate(address, int(port), round(slots / count, 4), slots))
    return tuple(out)


def _affinity(view: TableView, pkt: Packet, src: _Source, frontend: list[str], names: AffinityNames, chain: str,
              notes: list[str]) -> str | None:
    """sessionAffinity: the endpoint a live entry pins this source to ("drop" if it left), else None."""
    f = pkt.family
    if view.get(names.frontends.name(f), frontend) is None:
        return None
    record = view.get(names.services.name(f), frontend)
    timeout = affinity_timeout(resolve(view, record[0], AFFINITY_DISPATCH) if record else None)
    notes.append(f"sessionAffinity ClientIP: a client sticks to its endpoint for {timeout or '?'} s after its last "
                 "new connection")
    if src.address is None:
        return None
    if f == 4:
        entry = view.get(names.entries.name(f), [src.address, *frontend])
    else:
        entry = _ipv6_entry(view, pkt, src.address, frontend, names, chain)
        if entry is not None and entry[0] is not None:
            port = view.get(names.ports.name(f), frontend)
            entry = (f"{entry[0]} . {port[0] if port else '?'}", entry[1])
    if entry is None or entry[0] is None:
        notes.append(f"{src.address} has no live affinity entry: balanced as below, then pinned")
        return None
    endpoint = entry[0].split(" . ")
    if view.get(names.valid.name(f), [*frontend, *endpoint]) is None:
        notes.append(f"{src.address}'s affinity entry points at {entry[0]}, no longer an endpoint: this connection "
                     "is dropped and the entry expired, the client's retry is balanced afresh")
        return "drop"
    notes.append(f"{src.address} is pinned to {entry[0]} by a live affinity entry")
    return entry[0]


def _ipv6_entry(view: TableView, pkt: Packet, client: str, frontend: list[str], names: AffinityNames,
                chain: str) -> tuple[str | None, str | None] | None:
    """IPv6 entries are keyed by two jhashes of client (. address), as the lb chain's rule computes them."""
    hashes = view.hashes(chain)
    if len(hashes) != 2:
        return None
    data = socket.inet_pton(socket.AF_INET6, client) + socket.inet_pton(socket.AF_INET6, pkt.dest)
    return view.get(names.entries.name(6), [str(hashes[0](data)), str(hashes[1](data)), *frontend[-2:]])


def _unserved(view: TableView, pkt: Packet, key: list[str], sources: list[_Source]) -> Explanation:
    """Not DNATed: the filter chains' checks (no endpoints, unserved ClusterIP port, unallocated address)."""
    f = pkt.family
    label = "any source"
    if _nodeport_address(view, pkt):
        hit = view.get(sets.NO_ENDPOINT_NODEPORTS.name(f), [pkt.proto, str(pkt.port)])
        if hit is not None:
            return Explanation(_dest(pkt), pkt.proto, pkt.source, hit[1], "NodePort",
                               (Outcome(label, "reject", False, notes=("the Service has no endpoints",)),))
    hit = view.get(sets.NO_ENDPOINT_SERVICES.name(f), key)
    if hit is not None:
        path = "ClusterIP" if view.get(sets.CLUSTER_IPS.name(f), [pkt.dest]) is not None else None
        return Explanation(_dest(pkt), pkt.proto, pkt.source, hit[1], path,
                           (Outcome(label, "reject", False, notes=("the Service has no endpoints",)),))
    if not view.is_local(pkt.dest):
        owner = view.get(sets.CLUSTER_IPS.name(f), [pkt.dest])
        if owner is not None:
            return Explanation(_dest(pkt), pkt.proto, pkt.source, owner[1], "ClusterIP", (Outcome(
                label, "reject", False, notes=(f"{pkt.proto}/{pkt.port} is not a port of this ClusterIP's Service",)),))
        cidrs = [text for text, _ in view.keys(sets.SERVICE_CIDRS.name(f))]
        if cidrs and _contains(cidrs, pkt.dest):
            note = f"no Service holds this address of the service CIDR ({', '.join(cidrs)})"
            return Explanation(_dest(pkt), pkt.proto, pkt.source, None, None, (Outcome(
                label, "drop", False, notes=(note,)),))
    return Explanation(_dest(pkt), pkt.proto, pkt.source, None, None, (Outcome(
        label, "accept", False, notes=("not ours: no Service frontend, nftproxy leaves it alone",)),))


def _merge(outcomes: list[Outcome]) -> tuple[Outcome, ...]:
    """Sources treated alike are listed once."""
    groups: dict[Outcome, list[str]] = {}
    for o in outcomes:
        groups.setdefault(replace(o, source=""), []).append(o.source)
    if len(groups) == 1 and len(outcomes) > 1:
        return (replace(outcomes[0], source="any source"),)
    return tuple(replace(o, source=", ".join(labels)) for o, labels in groups.items())


# --- output ---------------------------------------------------------------------------------------------
def to_json(exp: Explanation) -> str:
    return json.dumps(asdict(exp), indent=2)


def to_text(exp: Explanation) -> str:
    """A short table for people."""
    src = f" from {exp.source}" if exp.source else ""
    lines = [f"{exp.destination}/{exp.protocol}{src}"]
    if exp.service:
        lines.append(f"  service   {exp.service}" + (f"  ({exp.path})" if exp.path else ""))
    for o in exp.outcomes:
        verdict = {"dnat": "DNAT to an endpoint", "reject": "REJECT", "drop": "DROP",
                   "accept": "not ours (accepted untouched)"}.get(o.verdict, o.verdict)
        masq = ", source masqueraded" if o.verdict == "dnat" and o.masquerade else (
            ", source kept" if o.verdict == "dnat" else "")
        lines.append(f"  {o.source}: {verdict}{masq}")
        if o.endpoints:
            width = max(len(f"{c.address}:{c.port}") for c in o.endpoints) + 2
            for c in o.endpoints:
                where = f"[{c.address}]:{c.port}" if ":" in c.address else f"{c.address}:{c.port}"
                plural = "s" if c.slots != 1 else ""
                lines.append(f"    {where:<{width}} {c.probability * 100:5.1f}%  ({c.slots} slot{plural})")
        lines += [f"    - {note}" for note in o.notes]
    return "\n".join(lines) + "\n"
