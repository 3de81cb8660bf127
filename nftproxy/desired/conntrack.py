"""Which UDP conntrack entries a change leaves stale (pure).

UDP has no connection close: a client that keeps sending from one source port (a DNS resolver) rides
its conntrack entry, and so its NAT, until the entry idles out. When an endpoint goes away, entries
pointing at it must be deleted so the next datagram is balanced afresh; when a UDP frontend gains
its first endpoints, entries created while it had none (packets that went elsewhere, un-NATed) must
go too. Upstream kube-proxy does the same (pkg/proxy/conntrack).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ProxyConfig
from ..objects.addresses import family_of_text
from ..objects.model import EndpointSlice, Service
from .endpoints import select


@dataclass(frozen=True, slots=True)
class StaleFlows:
    """conntrack entries to delete: UDP to a frontend (address or, for NodePorts, any local address)
    and port, optionally only those whose reply comes from one endpoint."""

    family: int
    frontend_address: str | None  # None: a NodePort
    port: int
    endpoint: tuple[str, int] | None = None  # None: every entry to the frontend


Inputs = tuple[Service, tuple[EndpointSlice, ...]]


def _udp_frontends(inputs: Inputs | None, config: ProxyConfig,
                   zone: str | None) -> dict[tuple[int, str | None, int], set[tuple[str, int]]]:
    """(family, address or None for NodePort, port) -> endpoints that frontend can send to."""
    out: dict[tuple[int, str | None, int], set[tuple[str, int]]] = {}
    if inputs is None:
        return out
    svc, slices = inputs
    for cluster_ip in svc.cluster_ips:
        family = family_of_text(cluster_ip)
        others = [a for a in (*svc.external_ips, *svc.load_balancer_ips) if family_of_text(a) == family]
        for port in svc.ports:
            if port.protocol != "udp":
                continue
            chosen = select(svc, port, family, slices, config.node_name, zone)
            every = {(b.address, b.port) for b in (*chosen.all, *chosen.cluster)}
            out[(family, cluster_ip, port.port)] = {(b.address, b.port) for b in chosen.cluster}
            for address in others:
                out[(family, address, port.port)] = every
            if port.node_port:
                out[(family, None, port.node_port)] = every
    return out


def stale_udp_flows(old: Inputs | None, new: Inputs | None, config: ProxyConfig, zone: str | None = None,
                    old_zone: str | None = None) -> list[StaleFlows]:
    """`zone`/`old_zone`: the node's zone now, and the one the old rules were made against."""
    before = _udp_frontends(old, config, old_zone)
    after = _udp_frontends(new, config, zone)
    stale: list[StaleFlows] = []
    for (family, address, port), endpoints in sorted(before.items(), key=str):
        gone = endpoints - after.get((family, address, port), set())
        stale.extend(StaleFlows(family, address, port, ep) for ep in sorted(gone))
    for (family, address, port), endpoints in sorted(after.items(), key=str):
        if endpoints and not before.get((family, address, port)):
            stale.append(StaleFlows(family, address, port))
    return stale
