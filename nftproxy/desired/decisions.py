"""What one Service port needs on this node, decided before any element is written (pure).

As upstream's proxier first computes named facts per Service (has internal endpoints, has external
endpoints, which verdict for each) and only then writes rules, translation first fills a
PortDecisions per family and port; `translate` then only turns each decision into elements.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple

from ..objects.addresses import family_of_text
from ..objects.model import EndpointSlice, Service, ServicePort
from .endpoints import Backend, select


class FamilyFrontends(NamedTuple):
    """A Service's addresses in one IP family, each frontend address once: an externalIP equal to the
    ClusterIP, or an LB IP also listed as externalIP, is one frontend. (Immutable tuples, like every
    decision here: built for every Service of a rebuild, so built cheaply.)"""

    family: int
    cluster_ip: str
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]
    source_ranges: tuple[str, ...]  # loadBalancerSourceRanges of this family
    all_lb_ips: tuple[str, ...]  # every LB IP of this family, including one equal to another frontend


def family_frontends(svc: Service) -> list[FamilyFrontends]:
    """One FamilyFrontends per ClusterIP (a dual-stack Service has two)."""
    out = []
    for cluster_ip in svc.cluster_ips:
        family = family_of_text(cluster_ip)
        if not (svc.external_ips or svc.load_balancer_ips or svc.source_ranges):  # most Services
            out.append(FamilyFrontends(family, cluster_ip, (), (), (), ()))
            continue
        externals = tuple(a for a in svc.external_ips if family_of_text(a) == family and a != cluster_ip)
        all_lb = tuple(a for a in svc.load_balancer_ips if family_of_text(a) == family)
        lb_ips = tuple(a for a in all_lb if a != cluster_ip and a not in externals)
        ranges = tuple(c for c in svc.source_ranges if family_of_text(c) == family)
        out.append(FamilyFrontends(family, cluster_ip, externals, lb_ips, ranges, all_lb))
    return out


@lru_cache(maxsize=4096)
def allowed_sources(ranges: tuple[str, ...], lb_ips: tuple[str, ...]) -> tuple[str, ...]:
    """loadBalancerSourceRanges plus the Service's own LB addresses (as upstream: a node that reaches
    the LB from that address, e.g. SNATted to it), merged: the kernel refuses overlapping intervals."""
    networks = [ipaddress.ip_network(r, strict=False) for r in ranges] + [ipaddress.ip_network(a) for a in lb_ips]
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]  # one family in practice: collapse
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]  # takes one type at a time
    return tuple(str(n) for n in (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)))


def port_comment(svc: Service, port: ServicePort) -> str:
    """namespace/name:port, the label every element of a Service port carries in `nft list ruleset`."""
    return f"{svc.ref}:{port.name or port.port}"


class PortDecisions(NamedTuple):
    """Everything translation needs to know of one Service port in one family.

    A backends tuple left empty means that traffic has no endpoint on this path and is dropped (as
    upstream: internalTrafficPolicy or externalTrafficPolicy Local with none on this node); when the
    port has no usable endpoint at all, every frontend rejects instead (`has_endpoints` False).
    """

    family: int
    comment: str
    cluster_frontend: str  # ClusterIP . protocol . port
    external_frontends: tuple[str, ...]  # externalIPs and LB IPs . protocol . port
    node_port: str | None  # protocol . NodePort
    firewalled: tuple[str, ...]  # LB frontends only loadBalancerSourceRanges may reach
    allowed_sources: tuple[str, ...]  # what may reach those
    has_endpoints: bool
    cluster_backends: tuple[Backend, ...]  # ClusterIP traffic (internalTrafficPolicy, topology)
    external_backends: tuple[Backend, ...]  # every usable endpoint: external traffic, and short-circuited pods
    external_local: bool  # externalTrafficPolicy Local: outside clients keep their source
    local_backends: tuple[Backend, ...]  # externalTrafficPolicy Local's outside clients
    affinity_timeout: int | None  # sessionAffinity ClientIP
    hairpin: tuple[str, ...]  # endpoints that can reach themselves through this node's rules


def decide_port(svc: Service, port: ServicePort, frontends: FamilyFrontends, slices: Iterable[EndpointSlice],
                node_name: str, node_zone: str | None) -> PortDecisions:
    proto_port = f"{port.protocol} . {port.port}"
    chosen = select(svc, port, frontends.family, slices, node_name, node_zone)
    firewalled: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    if frontends.source_ranges and frontends.lb_ips:
        firewalled = tuple(f"{a} . {proto_port}" for a in frontends.lb_ips)
        allowed = allowed_sources(frontends.source_ranges, frontends.all_lb_ips)
    return PortDecisions(
        family=frontends.family,
        comment=port_comment(svc, port),
        cluster_frontend=f"{frontends.cluster_ip} . {proto_port}",
        external_frontends=tuple(f"{a} . {proto_port}" for a in (*frontends.external_ips, *frontends.lb_ips))
        if frontends.external_ips or frontends.lb_ips else (),
        node_port=f"{port.protocol} . {port.node_port}" if port.node_port else None,
        firewalled=firewalled,
        allowed_sources=allowed,
        has_endpoints=chosen.any_endpoints,
        cluster_backends=chosen.cluster,
        external_backends=chosen.all,
        external_local=svc.external_traffic_local,
        local_backends=chosen.local,
        affinity_timeout=svc.affinity_timeout or None,
        # only a pod on this node can reach itself through this node's rules (or an endpoint whose node
        # is unknown, to be safe)
        hairpin=tuple(b.address for b in chosen.all if b.local or b.node_unknown),
    )
