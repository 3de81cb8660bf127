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

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from ..config import ProxyConfig
from ..objects.addresses import family_of_text
from ..objects.model import EndpointSlice, Service, ServicePort
from . import sets
from .elements import Chain, Element, Fragment
from .endpoints import Backend, Selection, expand, select
from .sets import SetFamily
from .skeleton import MASQUERADE_MARK, class_id

MARK_FOR_MASQUERADE = f"meta mark set meta mark | {MASQUERADE_MARK}"
# every chain a class leads to first clears the class from `meta priority` (the packet's own priority
# is not kept: its first packet goes out with priority 0; IPv4 forwarding resets it anyway)
CLEAR_CLASS = "meta priority set none"
_IPX = {4: "ip", 6: "ip6"}
# lb chain kinds: (keyed by daddr?, masquerade)
KINDS = {
    "cluster": (True, "cluster"),
    "external": (True, "always"),
    "local": (True, "never"),
    "short": (True, "never"),
    "nodeport": (False, "always"),
    "nplocal": (False, "never"),
    "npshort": (False, "never"),
}
# the dispatch map of each lb chain kind: the externalTrafficPolicy Local chains, reached from @classes,
# have their own (the kernel refuses a chain that could reach itself)
KIND_CLASSES = {kind: sets.LOCAL_CLASSES.name if kind in ("local", "short", "nplocal", "npshort") else sets.CLASSES.name
                for kind in KINDS}
_PROTOCOLS = ("tcp", "udp", "sctp")


# nft 1.0.6 gives the key and the data of a map updated from the packet path one 16-byte register each
# (fixed upstream in 1.0.7 and 1.1.0). An IPv4 client . frontend (16 bytes) and endpoint (8) fit; IPv6
# ones do not, so an IPv6 entry is keyed by two 32-bit hashes of client (. address) followed by
# protocol . port (two different clients or addresses collide with odds ~2^-64), holds the endpoint
# address only, and the endpoint port comes from the frontend's @affinity-*ports-v6 map.
_HASH = ("mod 4294967295 seed 0x6e667031", "mod 4294967295 seed 0x6e667032")


@dataclass(frozen=True, slots=True)
class _AffinityNames:
    """sessionAffinity for one kind of frontend: its maps, and how the frontend reads in a packet.

    A NodePort is keyed by protocol . port only, so a client sticks whichever local address it reached.
    """

    entries: SetFamily  # client . frontend -> endpoint, filled from the packet path
    frontends: SetFamily  # frontends whose Service has affinity now
    services: SetFamily  # frontend -> the record chain with the Service's timeout
    valid: SetFamily  # frontend . endpoint pairs an entry may point at
    ports: SetFamily  # IPv6: frontend -> endpoint port (see above)
    record_chain: str  # record chains' name prefix
    by_daddr: bool  # keyed by destination address . protocol . port (else protocol . port)

    def frontend(self, ipx: str, original: bool = False) -> str:
        """The frontend as the packet has it before DNAT, or as conntrack remembers it once DNAT rewrote it."""
        proto_port = "meta l4proto . ct original proto-dst" if original else "meta l4proto . th dport"
        daddr = f"ct original {ipx} daddr" if original else f"{ipx} daddr"
        return f"{daddr} . {proto_port}" if self.by_daddr else proto_port

    def key(self, family: int, original: bool = False) -> str:
        """client . frontend as the entries map is keyed."""
        ipx = _IPX[family]
        ct = "ct original " if original else ""
        if family == 4:
            return f"{ct}{ipx} saddr . {self.frontend(ipx, original)}"
        hashed = f"{ct}{ipx} saddr . {ct}{ipx} daddr" if self.by_daddr else f"{ct}{ipx} saddr"
        proto_port = "meta l4proto . ct original proto-dst" if original else "meta l4proto . th dport"
        return f"jhash {hashed} {_HASH[0]} . jhash {hashed} {_HASH[1]} . {proto_port}"

    def steer(self, family: int) -> str:
        """The lb chains' rule: a client with a live entry goes to its endpoint."""
        ipx = _IPX[family]
        frontend = self.frontend(ipx)
        target = f"{self.key(family)} map @{self.entries.name(family)}"
        if family == 6:
            target += f" : {frontend} map @{self.ports.name(family)}"
        # only frontends that have affinity now: entries of a Service that dropped it, or of a deleted
        # Service whose address was reused, must not steer anything
        return f"{frontend} @{self.frontends.name(family)} meta l4proto {{ tcp, udp, sctp }} dnat {ipx} to {target}"


AFFINITY_IPS = _AffinityNames(sets.AFFINITY, sets.AFFINITY_FRONTENDS, sets.AFFINITY_SERVICES, sets.AFFINITY_VALID,
                              sets.AFFINITY_PORTS, "affinity-record", True)
AFFINITY_NODEPORTS = _AffinityNames(sets.AFFINITY_NODEPORTS, sets.AFFINITY_NODEPORT_FRONTENDS,
                                    sets.AFFINITY_NODEPORT_SERVICES, sets.AFFINITY_NODEPORT_VALID,
                                    sets.AFFINITY_NODEPORT_PORTS, "affinity-nodeport-record", False)


def lb_chain_name(kind: str, family: int, count: int) -> str:
    """lb-cluster-v4-3: load-balances over 3 endpoint slots for every ClusterIP frontend that has 3."""
    return f"lb-{kind}-v{family}-{count}"


@lru_cache(maxsize=4096)
def lb_chain(kind: str, family: int, count: int, config: ProxyConfig) -> Chain:
    """A shared load-balancing chain with its own backends map (see rules/nftproxy.nft for why)."""
    ipx = _IPX[family]
    by_daddr, masquerade = KINDS[kind]
    rules: list[str] = [CLEAR_CLASS]
    if masquerade == "always" or (masquerade == "cluster" and config.masquerade_all):
        rules.append(MARK_FOR_MASQUERADE)
    elif masquerade == "cluster" and config.cluster_cidr(family):
        rules.append(f"{ipx} saddr != {config.cluster_cidr(family)} {MARK_FOR_MASQUERADE}")
    affinity = AFFINITY_IPS if by_daddr else AFFINITY_NODEPORTS
    frontend = affinity.frontend(ipx)
    rules.append(affinity.steer(family))
    backends = sets.backends_map(kind, family, count, frontend, f"{ipx} daddr . th dport")
    rules.append(f"meta l4proto {{ tcp, udp, sctp }} dnat {ipx} to {frontend} . numgen random mod {count} map @{backends.name}")
    plural = "s" if count != 1 else ""
    name = lb_chain_name(kind, family, count)
    return Chain(name, tuple(rules), f"{kind} frontends with {count} endpoint slot{plural}", (backends,),
                 (Element(KIND_CLASSES[kind], class_id(kind, family, count), "goto " + name),))


@lru_cache(maxsize=1024)
def affinity_record_chain(family: int, timeout: int, names: _AffinityNames = AFFINITY_IPS) -> Chain:
    """Records client . frontend -> endpoint with a Service's timeout; expires entries whose endpoint left."""
    ipx = _IPX[family]
    frontend, key = names.frontend(ipx, original=True), names.key(family, original=True)
    entries, valid, endpoint = f"@{names.entries.name(family)}", f"@{names.valid.name(family)}", f"{ipx} daddr . th dport"
    stored = endpoint if family == 4 else f"{ipx} daddr"  # IPv6: the port is the frontend's (see _HASH)
    rules = [CLEAR_CLASS]
    # the client's entry steered this connection to an endpoint that left: expire it, drop, the retry rebalances
    for proto in _PROTOCOLS:
        rules.append(f"meta l4proto {proto} {key} {entries} {frontend} . {endpoint} != {valid} "
                     f"update {entries} {{ {key} timeout 1s : {stored} }} drop")
    # only endpoints of this frontend are recorded (a NodePort key cannot tell a NodePort from another
    # frontend with the same port number)
    for proto in _PROTOCOLS:
        rules.append(f"meta l4proto {proto} {frontend} . {endpoint} {valid} "
                     f"update {entries} {{ {key} timeout {timeout}s : {stored} }}")
    kind = "" if names.by_daddr else "NodePorts, "
    name = f"{names.record_chain}-v{family}-{timeout}"
    return Chain(name, tuple(rules), f"sessionAffinity ClientIP, {kind}timeout {timeout}s",
                 entries=(Element(sets.AFFINITY_CLASSES.name, class_id(names.record_chain, family, timeout), "jump " + name),))


@lru_cache(maxsize=4096)
def allowed_sources(ranges: tuple[str, ...], lb_ips: tuple[str, ...]) -> tuple[str, ...]:
    """loadBalancerSourceRanges plus the Service's own LB addresses (as upstream: a node that reaches
    the LB from that address, e.g. SNATted to it), merged: the kernel refuses overlapping intervals."""
    networks = [ipaddress.ip_network(r, strict=False) for r in ranges] + [ipaddress.ip_network(a) for a in lb_ips]
    return tuple(str(n) for n in ipaddress.collapse_addresses(networks))


def port_comment(svc: Service, port: ServicePort) -> str:
    """namespace/name:port, the label every element of a Service port carries in `nft list ruleset`."""
    return f"{svc.ref}:{port.name or port.port}"


_new = tuple.__new__  # builds an Element without the NamedTuple constructor's call overhead (hot path)


class _Builder:
    def __init__(self, config: ProxyConfig, family: int) -> None:
        self.config = config
        self.family = family
        self.elements: list[Element] = []
        self.chains: set[Chain] = set()
        self.hairpin: set[str] = set()

    def add(self, where: SetFamily, key: str, value: str | None = None, comment: str | None = None) -> None:
        self.elements.append(_new(Element, (where.name(self.family), key, value, comment)))

    def balance(self, kind: str, key: str, backends: tuple[Backend, ...], comment: str) -> str:
        """Backends elements for one frontend; returns the class that sends it to them."""
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
    for cluster_ip in svc.cluster_ips:
        family = family_of_text(cluster_ip)
        b = _Builder(config, family)
        b.add(sets.CLUSTER_IPS, cluster_ip, None, str(svc.ref))
        # each frontend address once: an externalIP equal to the ClusterIP, or listed again as LB IP, is one frontend
        externals = [a for a in svc.external_ips if family_of_text(a) == family and a != cluster_ip]
        lb_ips = [a for a in svc.load_balancer_ips
                  if family_of_text(a) == family and a != cluster_ip and a not in externals]
        ranges = [c for c in svc.source_ranges if family_of_text(c) == family]
        for port in svc.ports:
            _translate_port(b, svc, port, cluster_ip, externals, lb_ips, ranges, slices, node_zone)
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
NODE_PORTS = _ExternalNames(sets.SERVICE_NODEPORTS, "nodeport", "nodeport-local", sets.NODEPORT_SHORT_CIRCUIT, "npshort",
                            sets.NODEPORT_LOCAL_DISPATCH, "nplocal")


def _external(b: _Builder, names: _ExternalNames, key: str, local_policy: bool, chosen: Selection, comment: str) -> None:
    """An external frontend: balanced over every endpoint (masqueraded), or with externalTrafficPolicy
    Local, split by source into this node's endpoints and the short-circuit over every endpoint."""
    if not local_policy:
        b.add(names.entry, key, b.balance(names.cluster_kind, key, chosen.all, comment), comment)
        return
    b.add(names.entry, key, class_id(names.local_chain, b.family), comment)
    b.add(names.short_map, key, b.balance(names.short_kind, key, chosen.all, comment), comment)
    b.add(names.local_map, key, b.balance(names.local_kind, key, chosen.local, comment), comment)


def _translate_port(b: _Builder, svc: Service, port: ServicePort, cluster_ip: str, externals: list[str],
                    lb_ips: list[str], ranges: list[str], slices: tuple[EndpointSlice, ...],
                    node_zone: str | None) -> None:
    comment = port_comment(svc, port)
    proto_port = f"{port.protocol} . {port.port}"
    chosen = select(svc, port, b.family, slices, b.config.node_name, node_zone)
    external_frontends = [f"{a} . {proto_port}" for a in (*externals, *lb_ips)]
    cluster_key = f"{cluster_ip} . {proto_port}"
    if ranges and lb_ips:
        allowed = allowed_sources(tuple(ranges), tuple(a for a in svc.load_balancer_ips if family_of_text(a) == b.family))
        for address in lb_ips:
            b.add(sets.FIREWALL_IPS, f"{address} . {proto_port}", None, comment)
            for cidr in allowed:
                b.add(sets.FIREWALL_ALLOW, f"{address} . {proto_port} . {cidr}", None, comment)
    if not chosen.any_endpoints:
        for key in (cluster_key, *external_frontends):
            b.add(sets.NO_ENDPOINT_SERVICES, key, None, comment)
        if port.node_port:
            b.add(sets.NO_ENDPOINT_NODEPORTS, f"{port.protocol} . {port.node_port}", None, comment)
        return

    b.add(sets.SERVICE_IPS, cluster_key, b.balance("cluster", cluster_key, chosen.cluster, comment), comment)
    for key in external_frontends:
        _external(b, EXTERNAL_IPS, key, svc.external_traffic_local, chosen, comment)
    if port.node_port:
        _external(b, NODE_PORTS, f"{port.protocol} . {port.node_port}", svc.external_traffic_local, chosen, comment)
    if svc.affinity_timeout:
        sticky = [(cluster_key, chosen.cluster), *((k, chosen.all) for k in external_frontends)]
        _affinity(b, AFFINITY_IPS, sticky, svc.affinity_timeout, comment)
        if port.node_port:
            _affinity(b, AFFINITY_NODEPORTS, [(f"{port.protocol} . {port.node_port}", chosen.all)],
                      svc.affinity_timeout, comment)
    # hairpin: only a pod on this node can reach itself through this node's rules (or an endpoint
    # whose node is unknown, to be safe)
    b.hairpin.update(x.address for x in chosen.all if x.local or x.node_unknown)


def _affinity(b: _Builder, names: _AffinityNames, frontends: list[tuple[str, tuple[Backend, ...]]], timeout: int,
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
