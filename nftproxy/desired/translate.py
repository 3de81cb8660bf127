"""Translate one Service (with its EndpointSlices) into the elements and chains it needs.

Pure: the same Service, slices and configuration always give the same Fragment, so the agent can
recompute only the Services that changed and diff their fragments against what it committed.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..config import ProxyConfig
from ..objects.model import EndpointSlice, Service, ServicePort
from .elements import Chain, Element, Fragment
from .endpoints import usable_endpoints
from .skeleton import MASQUERADE_MARK, REJECT_VERDICT

MARK_FOR_MASQUERADE = f"meta mark set meta mark | {MASQUERADE_MARK}"
_IPX = {4: "ip", 6: "ip6"}


def lb_chain_name(kind: str, family: int, count: int) -> str:
    """lb-cluster-v4-3: load-balances over 3 endpoints for every ClusterIP frontend that has 3."""
    return f"lb-{kind}-v{family}-{count}"


def backends_map_name(kind: str, family: int, count: int) -> str:
    return f"backends-{kind}-v{family}-{count}"


def lb_chain(kind: str, family: int, count: int, config: ProxyConfig) -> Chain:
    """A shared load-balancing chain; kinds: cluster (ClusterIP), external (externalIP/LB IP), nodeport."""
    ipx = _IPX[family]
    rules: list[str] = []
    if kind == "cluster":
        cidr = config.cluster_cidr(family)
        if config.masquerade_all:
            rules.append(MARK_FOR_MASQUERADE)
        elif cidr:
            rules.append(f"{ipx} saddr != {cidr} {MARK_FOR_MASQUERADE}")
    else:
        rules.append(MARK_FOR_MASQUERADE)
    frontend = "meta l4proto . th dport" if kind == "nodeport" else f"{ipx} daddr . meta l4proto . th dport"
    table = backends_map_name(kind, family, count)
    rules.append(
        f"meta l4proto {{ tcp, udp, sctp }} dnat {ipx} to {frontend} . numgen random mod {count} map @{table}"
    )
    plural = "s" if count != 1 else ""
    declaration = (
        f"typeof {frontend} . numgen random mod 1 : {ipx} daddr . th dport ; "
        f'comment "{kind} frontend . endpoint index -> endpoint, for {count} endpoint{plural}" ;'
    )
    return Chain(
        name=lb_chain_name(kind, family, count),
        rules=tuple(rules),
        comment=f"{kind} frontends with {count} endpoint{plural}",
        maps=((table, declaration),),
    )


def port_comment(svc: Service, port: ServicePort) -> str:
    """namespace/name:port, the label every element of a Service port carries in `nft list ruleset`."""
    return f"{svc.ref}:{port.name or port.port}"


def service_fragment(svc: Service, slices: Iterable[EndpointSlice], config: ProxyConfig) -> Fragment:
    """Everything the kernel must hold for one Service."""
    slices = tuple(slices)
    elements: list[Element] = []
    chains: set[Chain] = set()
    svc_comment = str(svc.ref)
    for cluster_ip in svc.cluster_ips:
        family = 6 if ":" in cluster_ip else 4
        v = f"-v{family}"
        elements.append(Element("cluster-ips" + v, cluster_ip, None, svc_comment))
        externals = [a for a in (*svc.external_ips, *svc.load_balancer_ips) if (6 if ":" in a else 4) == family]
        for port in svc.ports:
            comment = port_comment(svc, port)
            proto_port = f"{port.protocol} . {port.port}"
            backends = [f"{ep.address} . {target}" for ep, target in usable_endpoints(port, family, slices)]
            count = len(backends)
            frontends = [(cluster_ip, "cluster")] + [(a, "external") for a in externals]
            if count == 0:
                for address, _ in frontends:
                    elements.append(Element("no-endpoint-services" + v, f"{address} . {proto_port}", REJECT_VERDICT, comment))
                if port.node_port:
                    elements.append(
                        Element("no-endpoint-nodeports" + v, f"{port.protocol} . {port.node_port}", REJECT_VERDICT, comment)
                    )
                continue
            for address, kind in frontends:
                chain = lb_chain(kind, family, count, config)
                chains.add(chain)
                key = f"{address} . {proto_port}"
                elements.append(Element("service-ips" + v, key, "goto " + chain.name, comment))
                table = chain.maps[0][0]
                elements.extend(Element(table, f"{key} . {i}", b, comment) for i, b in enumerate(backends))
            if port.node_port:
                chain = lb_chain("nodeport", family, count, config)
                chains.add(chain)
                key = f"{port.protocol} . {port.node_port}"
                elements.append(Element("service-nodeports" + v, key, "goto " + chain.name, comment))
                table = chain.maps[0][0]
                elements.extend(Element(table, f"{key} . {i}", b, comment) for i, b in enumerate(backends))
            for b in backends:
                address = b.split(" . ", 1)[0]
                elements.append(Element("hairpin" + v, f"{address} . {address}"))
    return Fragment(frozenset(elements), frozenset(chains))


def config_fragment(config: ProxyConfig) -> Fragment:
    """Elements owned by the configuration: service CIDRs and NodePort address ranges."""
    elements = [Element(f"service-cidrs-v{_fam(c)}", c) for c in config.service_cidrs]
    for family in (4, 6):
        elements += [Element(f"nodeport-cidrs-v{family}", c) for c in config.nodeport_cidrs_of(family)]
    return Fragment(frozenset(elements))


def _fam(cidr: str) -> int:
    return 6 if ":" in cidr else 4
