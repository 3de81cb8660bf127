"""BGP mode, the pure part: which sessions this node opens and which prefixes it advertises on each,
with which attributes. No sockets, no files: `bird` turns a `Plan` into BIRD's configuration.

Unlike L2 mode, no node is chosen: every node advertises what it can serve and the routers spread
connections over them (ECMP). A node advertises a Service's address when
- a BGPAdvertisement covers the address's pool and its nodeSelectors pick this node;
- this node's rules for the address are committed (it never attracts traffic it cannot forward);
- for externalTrafficPolicy Local, this node holds a ready endpoint of the Service;
to every BGPPeer session of the address's family that the advertisement names (none named: all).

The prefix is the address itself (/32, /128) or, with aggregationLength, the covering prefix of that
length (MetalLB's "roll up"). LOCAL_PREF goes to iBGP sessions only, as in MetalLB. Two
advertisements giving one prefix to one peer merge: the communities of both, the higher LOCAL_PREF.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from ..objects.model import ObjectRef
from .announce import AnnouncedService, NodeInfo, pool_of
from .bgp_objects import BFDProfile, BGPAdvertisement, BGPPeer, Community
from .model import AddressPool, AddressRange, Family, address_value


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str  # "198.51.100.10/32"
    local_pref: int | None = None
    communities: tuple[Community, ...] = ()


@dataclass(frozen=True, slots=True)
class Session:
    """One BGP session this node opens: the peer, what BIRD calls it, and what goes over it."""

    peer: BGPPeer
    name: str  # a BIRD symbol, stable for the peer
    routes: tuple[Route, ...] = ()  # by prefix
    password: str | None = None
    bfd: BFDProfile | None = None

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(r.prefix for r in self.routes)


@dataclass(frozen=True, slots=True)
class Problem:
    """Something an object asks that cannot be done, reported once on that object."""

    kind: str
    ref: ObjectRef
    message: str


@dataclass(frozen=True, slots=True)
class Plan:
    sessions: tuple[Session, ...] = ()  # by peer
    advertised: Mapping[str, frozenset[str]] = field(default_factory=dict)  # address -> peer names
    problems: tuple[Problem, ...] = ()


def session_name(peer: ObjectRef) -> str:
    """A BIRD protocol name for a peer: readable, and unique even when names differ only in characters
    BIRD does not take."""
    digest = hashlib.sha256(f"{peer.namespace}/{peer.name}".encode()).hexdigest()[:8]
    return f"peer_{re.sub(r'[^A-Za-z0-9]', '_', peer.name)[:40]}_{digest}"


def router_id(node: NodeInfo | None, me: str) -> str:
    """BGP identifier: the node's IPv4 InternalIP, or (IPv6-only nodes) one derived from its name."""
    if node is not None and node.address and ":" not in node.address:
        return node.address
    value = int.from_bytes(hashlib.sha256(me.encode()).digest()[:4], "big") or 1
    return str(ipaddress.IPv4Address(value))


def aggregate(address: str, length: int) -> str:
    return str(ipaddress.ip_network(f"{address}/{length}", strict=False))


def _cidrs(r: AddressRange) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    cls = ipaddress.IPv4Address if r.family == 4 else ipaddress.IPv6Address
    return list(ipaddress.summarize_address_range(cls(r.first), cls(r.last)))


def aggregation_fits(pool: AddressPool, length: int, family: Family) -> bool:
    """MetalLB's rule: the aggregate may not be wider than any CIDR the pool is made of."""
    return all(net.prefixlen <= length for r in pool.ranges if r.family == family for net in _cidrs(r))


def plan(
    me: str,
    node: NodeInfo | None,
    services: Iterable[AnnouncedService],
    committed: Collection[str],
    pools: Iterable[AddressPool],
    advertisements: Iterable[BGPAdvertisement],
    peers: Iterable[BGPPeer],
    bfd_profiles: Mapping[str, BFDProfile] | None = None,
    passwords: Mapping[ObjectRef, str] | None = None,
) -> Plan:
    """Sessions this node opens and the routes on each (see the module docstring for the rules)."""
    labels = dict(node.labels) if node is not None else {}
    bfd_profiles = bfd_profiles or {}
    passwords = passwords or {}
    problems: list[Problem] = []
    mine = sorted((p for p in peers if p.allows_node(labels)), key=lambda p: (p.ref.namespace, p.ref.name))
    pools = list(pools)
    adverts = sorted((a for a in advertisements if a.allows_node(labels)),
                     key=lambda a: (a.ref.namespace, a.ref.name))
    routes: dict[str, dict[str, Route]] = {p.name: {} for p in mine}
    advertised: dict[str, set[str]] = {}
    unfit: set[tuple[ObjectRef, str, Family]] = set()
    for service in services:
        if service.local_only and me not in service.local_nodes:
            continue
        for address in service.addresses:
            if address not in committed:
                continue
            pool = pool_of(address, pools)
            if pool is None:
                continue
            _, family = address_value(address)
            for advert in adverts:
                if not advert.covers(pool):
                    continue
                length = advert.length(family)
                if not aggregation_fits(pool, length, family):
                    unfit.add((advert.ref, pool.name, family))
                    continue
                prefix = aggregate(address, length)
                for peer in mine:
                    if peer.family != family or not advert.allows_peer(peer.name):
                        continue
                    route = Route(prefix, advert.local_pref if peer.internal else None, advert.communities)
                    held = routes[peer.name].get(prefix)
                    routes[peer.name][prefix] = route if held is None else _merge(held, route)
                    advertised.setdefault(address, set()).add(peer.name)
    for ref, pool_name, family in sorted(unfit, key=lambda u: (u[0].namespace, u[0].name, u[1], u[2])):
        field_name = "aggregationLength" if family == 4 else "aggregationLengthV6"
        problems.append(Problem("BGPAdvertisement", ref, f"spec.{field_name}: wider than a CIDR of pool "
                                f"{pool_name!r}: its addresses are not advertised by this advertisement"))
    sessions: list[Session] = []
    for peer in mine:
        bfd = None
        if peer.bfd_profile is not None:
            bfd = bfd_profiles.get(peer.bfd_profile)
            if bfd is None:
                problems.append(Problem("BGPPeer", peer.ref, f"spec.bfdProfile: no BFDProfile named "
                                        f"{peer.bfd_profile!r}: the session runs without BFD"))
        password = peer.password
        if peer.password_secret is not None:
            password = passwords.get(peer.ref)
            if password is None:
                continue  # not read (yet): a session without its key would only be refused
        by_prefix = routes[peer.name]
        sessions.append(Session(peer, session_name(peer.ref), tuple(by_prefix[p] for p in sorted(by_prefix)),
                                password, bfd))
    opened = {s.peer.name for s in sessions}
    return Plan(tuple(sessions), {a: frozenset(p & opened) for a, p in advertised.items() if p & opened},
                tuple(problems))


def _merge(a: Route, b: Route) -> Route:
    prefs = [p for p in (a.local_pref, b.local_pref) if p is not None]
    communities = tuple(sorted(set(a.communities) | set(b.communities), key=lambda c: (c.large, c.values)))
    return Route(a.prefix, max(prefs) if prefs else None, communities)
