"""Translate one Service (with its EndpointSlices) into the elements and chains it needs.

Pure: the same Service, slices, configuration and node always give the same Fragment, so the agent
can recompute only the Services that changed and diff their fragments against what it committed.

Frontends and where they go (per family; each map value is a class, see skeleton.class_id):
- ClusterIP:            service-ips -> lb-cluster-N (masquerade from outside the cluster CIDR)
- externalIP / LB IP:   service-ips -> lb-external-N (masquerade), or with externalTrafficPolicy Local
                        -> external-local (static): pods and the node -> lb-short-N (every endpoint),
                        outside clients -> lb-local-N (this node's endpoints, source kept) or drop
- NodePort:             service-nodeports -> lb-nodeport-N, or nodeport-local with the same split
- no endpoints at all:  no-endpoint-services / no-endpoint-nodeports (sets) -> reject
- sessionAffinity:      every frontend is sticky: client . address . port for ClusterIPs, externalIPs
                        and LB IPs, client . NodePort for NodePorts (whichever local address was reached)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..config import ProxyConfig
from ..objects.addresses import family_of_text
from ..objects.model import EndpointSlice, Service
from . import sets
from .chains import AFFINITY_IPS, AFFINITY_NODEPORTS, AffinityNames, affinity_record_chain, lb_chain
from .decisions import PortDecisions, decide_port, family_frontends
from .elements import Chain, Element, Fragment
from .endpoints import Backend, expand
from .sets import SetFamily
from .skeleton import class_id

_new = tuple.__new__  # builds an Element without the NamedTuple constructor's call overhead (hot path)


class _Builder:
    """Collects one family's elements and chains while decisions are turned into them."""

    def __init__(self, config: ProxyConfig, family: int) -> None:
        self.config = config
        self.family = family
        self.elements: list[Element] = []
        self.chains: set[Chain] = set()
        self.hairpin: set[str] = set()

    def add(self, where: SetFamily, key: str, value: str | None = None, comment: str | None = None) -> None:
        self.elements.append(_new(Element, (where.names[self.family], key, value, comment)))

    def balance(self, kind: str, key: str, backends: tuple[Backend, ...], comment: str) -> str:
        """Backends elements for one frontend; returns the class that sends it to them, or the drop
        class when this traffic has no endpoint (see PortDecisions)."""
        values = expand(backends)
        if not values:
            return class_id("drop", self.family)
        chain = lb_chain(kind, self.family, len(values), self.config)
        self.chains.add(chain)
        table = chain.maps[0].name
        self.elements.extend([_new(Element, (table, f"{key} . {i}", value, comment)) for i, value in enumerate(values)])
        return chain.entries[0].key


def service_fragment(svc: Service, slices: Iterable[EndpointSlice], config: ProxyConfig,
                     node_zone: str | None = None) -> Fragment:
    """Everything the kernel must hold for one Service."""
    elements, chains = service_elements(svc, slices, config, node_zone)
    return Fragment(frozenset(elements), frozenset(chains))


def service_elements(svc: Service, slices: Iterable[EndpointSlice], config: ProxyConfig,
                     node_zone: str | None = None) -> tuple[list[Element], set[Chain]]:
    """The same as service_fragment, as a list (keys are unique by construction; a rebuild needs no set)."""
    slices = tuple(slices)
    elements: list[Element] = []
    chains: set[Chain] = set()
    for frontends in family_frontends(svc):
        b = _Builder(config, frontends.family)
        b.add(sets.CLUSTER_IPS, frontends.cluster_ip, None, str(svc.ref))
        for port in svc.ports:
            _emit_port(b, decide_port(svc, port, frontends, slices, config.node_name, node_zone))
        for address in sorted(b.hairpin):
            b.add(sets.HAIRPIN, f"{address} . {address}")
        elements += b.elements
        chains |= b.chains
    return elements, chains


@dataclass(frozen=True, slots=True)
class _ExternalNames:
    """Where one kind of external frontend goes (keyed by address, or a NodePort keyed by port)."""

    entry: SetFamily  # the map the services chain looks the frontend up in
    cluster_kind: str  # lb chain kind under externalTrafficPolicy Cluster
    local_chain: str  # the static chain that splits traffic under externalTrafficPolicy Local
    short_map: SetFamily
    short_kind: str
    local_map: SetFamily
    local_kind: str


EXTERNAL_IPS = _ExternalNames(sets.SERVICE_IPS, "external", "external-local", sets.EXTERNAL_SHORT_CIRCUIT, "short",
                              sets.EXTERNAL_LOCAL_DISPATCH, "local")
NODE_PORTS = _ExternalNames(sets.SERVICE_NODEPORTS, "nodeport", "nodeport-local",
                            sets.NODEPORT_SHORT_CIRCUIT, "npshort", sets.NODEPORT_LOCAL_DISPATCH, "nplocal")


def _external(b: _Builder, names: _ExternalNames, key: str, d: PortDecisions) -> None:
    """An external frontend: balanced over every endpoint (masqueraded), or with externalTrafficPolicy
    Local, split by source into this node's endpoints and the short-circuit over every endpoint."""
    if not d.external_local:
        b.add(names.entry, key, b.balance(names.cluster_kind, key, d.external_backends, d.comment), d.comment)
        return
    b.add(names.entry, key, class_id(names.local_chain, b.family), d.comment)
    b.add(names.short_map, key, b.balance(names.short_kind, key, d.external_backends, d.comment), d.comment)
    b.add(names.local_map, key, b.balance(names.local_kind, key, d.local_backends, d.comment), d.comment)


def _emit_port(b: _Builder, d: PortDecisions) -> None:
    """The elements (and chains) of one port's decisions."""
    for frontend in d.firewalled:
        b.add(sets.FIREWALL_IPS, frontend, None, d.comment)
        for cidr in d.allowed_sources:
            b.add(sets.FIREWALL_ALLOW, f"{frontend} . {cidr}", None, d.comment)
    if not d.has_endpoints:
        for key in (d.cluster_frontend, *d.external_frontends):
            b.add(sets.NO_ENDPOINT_SERVICES, key, None, d.comment)
        if d.node_port:
            b.add(sets.NO_ENDPOINT_NODEPORTS, d.node_port, None, d.comment)
        return
    b.add(sets.SERVICE_IPS, d.cluster_frontend,
          b.balance("cluster", d.cluster_frontend, d.cluster_backends, d.comment), d.comment)
    for key in d.external_frontends:
        _external(b, EXTERNAL_IPS, key, d)
    if d.node_port:
        _external(b, NODE_PORTS, d.node_port, d)
    if d.affinity_timeout:
        sticky = [(d.cluster_frontend, d.cluster_backends), *((k, d.external_backends) for k in d.external_frontends)]
        _affinity(b, AFFINITY_IPS, sticky, d.affinity_timeout, d.comment)
        if d.node_port:
            _affinity(b, AFFINITY_NODEPORTS, [(d.node_port, d.external_backends)], d.affinity_timeout, d.comment)
    b.hairpin.update(d.hairpin)


def _affinity(b: _Builder, names: AffinityNames, frontends: list[tuple[str, tuple[Backend, ...]]], timeout: int,
              comment: str) -> None:
    """Frontends of a sessionAffinity Service: sticky, recorded with its timeout, valid for its endpoints."""
    record = affinity_record_chain(b.family, timeout, names)
    for key, backends in frontends:
        if b.family == 6:
            ports = {backend.port for backend in backends}
            if len(ports) != 1:
                continue  # an IPv6 entry holds no port (see _HASH): endpoints on different ports are not sticky
            b.add(names.ports, key, str(ports.pop()), comment)
        b.chains.add(record)
        b.add(names.services, key, record.entries[0].key, comment)
        b.add(names.frontends, key, None, comment)
        for backend in backends:
            b.add(names.valid, f"{key} . {backend.value}", None, comment)


def config_fragment(config: ProxyConfig) -> Fragment:
    """Elements owned by the configuration: cluster and Service CIDRs, NodePort address ranges."""
    elements = [Element(sets.SERVICE_CIDRS.name(family_of_text(c)), c) for c in config.service_cidrs]
    elements += [Element(sets.CLUSTER_CIDRS.name(family_of_text(c)), c) for c in config.cluster_cidrs]
    for family in sets.FAMILIES:
        elements += [Element(sets.NODEPORT_CIDRS.name(family), c) for c in config.nodeport_cidrs_of(family)]
    return Fragment(frozenset(elements))
