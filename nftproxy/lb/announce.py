"""Which node answers ARP/NDP for each LoadBalancer address, decided the same way on every node.

Every agent runs this over the same inputs (Services' addresses, pools, L2Advertisements, Nodes,
EndpointSlices, and the membership layer's set of live eligible nodes) and reaches the same answer
without talking to anyone: among the nodes eligible for a Service, the first by
sha256("<node>#<first address>") wins. That is MetalLB's order, so a migration from MetalLB keeps
every address on the node that already announces it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..objects.model import ObjectRef
from .model import AddressPool, L2Advertisement


@dataclass(frozen=True, slots=True)
class AnnouncedService:
    """A LoadBalancer Service with addresses, as far as announcement cares."""

    ref: ObjectRef
    addresses: tuple[str, ...]  # status.loadBalancer.ingress order; the first one picks the node
    local_only: bool = False  # externalTrafficPolicy Local
    local_nodes: frozenset[str] = frozenset()  # nodes with a ready endpoint (matters when local_only)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    address: str | None = None  # InternalIP: heartbeats go there


@dataclass(frozen=True, slots=True)
class Decision:
    """One Service's announcement: who announces, on which interfaces, or why nobody does."""

    service: ObjectRef
    addresses: tuple[str, ...]
    node: str | None
    interfaces: tuple[str, ...] = ()  # empty: the interface holding the node's InternalIP
    reason: str = ""  # when node is None


def order_key(node: str, address: str) -> bytes:
    return hashlib.sha256(f"{node}#{address}".encode()).digest()


def choose(address: str, candidates: Iterable[str]) -> str | None:
    """MetalLB's deterministic choice among candidate nodes for a Service whose first address is `address`."""
    return min(candidates, key=lambda node: order_key(node, address), default=None)


def pool_of(address: str, pools: Iterable[AddressPool]) -> AddressPool | None:
    return next((p for p in sorted(pools, key=lambda p: p.name) if p.contains(address)), None)


def decide(
    service: AnnouncedService,
    pools: Iterable[AddressPool],
    advertisements: Iterable[L2Advertisement],
    nodes: Mapping[str, NodeInfo],
    live: frozenset[str],
) -> Decision:
    """Who announces `service`'s addresses: live nodes allowed by an L2Advertisement covering the
    address's pool (and, for eTP Local, holding a ready endpoint), first in MetalLB's order."""
    if not service.addresses:
        return Decision(service.ref, (), None, reason="no address")
    pool = pool_of(service.addresses[0], pools)
    if pool is None:
        return Decision(service.ref, service.addresses, None, reason="address is in no IPAddressPool")
    covering = [a for a in advertisements if a.covers(pool)]
    if not covering:
        return Decision(service.ref, service.addresses, None,
                        reason=f"no L2Advertisement covers pool {pool.name!r}")
    candidates = []
    for name in live:
        info = nodes.get(name)
        if info is None:
            continue
        labels = dict(info.labels)
        if not any(a.allows_node(labels) for a in covering):
            continue
        if service.local_only and name not in service.local_nodes:
            continue
        candidates.append(name)
    winner = choose(service.addresses[0], candidates)
    if winner is None:
        why = "no live node with a ready local endpoint" if service.local_only else "no live eligible node"
        return Decision(service.ref, service.addresses, None, reason=why)
    labels = dict(nodes[winner].labels)
    interfaces: set[str] = set()
    for advert in covering:
        if advert.allows_node(labels):
            if not advert.interfaces:
                interfaces.clear()
                break
            interfaces.update(advert.interfaces)
    return Decision(service.ref, service.addresses, winner, tuple(sorted(interfaces)))


def wanted_on(me: str, decisions: Iterable[Decision], default_interface: str | None) -> dict[str, frozenset[str]]:
    """interface -> addresses this node answers for: the `L2Responder.set_addresses` argument."""
    out: dict[str, set[str]] = {}
    for decision in decisions:
        if decision.node != me:
            continue
        interfaces = decision.interfaces or ((default_interface,) if default_interface else ())
        for interface in interfaces:
            out.setdefault(interface, set()).update(decision.addresses)
    return {k: frozenset(v) for k, v in out.items()}
