"""Plain immutable data for bare-metal LoadBalancers: MetalLB's pools and advertisements, and what a
Service asks of them. Everything is validated and normalised by `parse` before it gets here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..objects.model import ObjectRef

Family = Literal[4, 6]
Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # NotIn: also true when the label is absent


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """metav1.LabelSelector: every matchLabels pair and every expression must hold (empty: everything)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )


def any_matches(selectors: tuple[LabelSelector, ...], labels: Mapping[str, str]) -> bool:
    """MetalLB's rule for a list of selectors: no selectors match everything, else any one must."""
    return not selectors or any(s.matches(labels) for s in selectors)


@dataclass(frozen=True, slots=True)
class AddressRange:
    """An inclusive range of addresses of one family, as integers (a CIDR or "first-last")."""

    first: int
    last: int
    family: Family

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def contains(self, value: int, family: Family) -> bool:
        return family == self.family and self.first <= value <= self.last


@dataclass(frozen=True, slots=True)
class AddressPool:
    """metallb.io/v1beta1 IPAddressPool."""

    ref: ObjectRef
    ranges: tuple[AddressRange, ...]
    auto_assign: bool = True
    avoid_buggy_ips: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    # spec.serviceAllocation: absent means the pool serves every Service
    restricted: bool = False
    priority: int | None = None
    namespaces: tuple[str, ...] = ()
    namespace_selectors: tuple[LabelSelector, ...] = ()
    service_selectors: tuple[LabelSelector, ...] = ()

    @property
    def name(self) -> str:
        return self.ref.name

    def families(self) -> frozenset[int]:
        return frozenset(r.family for r in self.ranges)

    def contains(self, address: str) -> bool:
        value, family = address_value(address)
        if self.avoid_buggy_ips and is_buggy(value, family):
            return False
        return any(r.contains(value, family) for r in self.ranges)

    def serves(self, namespace: str, namespace_labels: Mapping[str, str], service_labels: Mapping[str, str]) -> bool:
        """Whether spec.serviceAllocation lets this pool give addresses to a Service."""
        if not self.restricted:
            return True
        if self.namespaces or self.namespace_selectors:
            in_namespace = namespace in self.namespaces or any(
                s.matches(namespace_labels) for s in self.namespace_selectors
            )
            if not in_namespace:
                return False
        return any_matches(self.service_selectors, service_labels)


@dataclass(frozen=True, slots=True)
class L2Advertisement:
    """metallb.io/v1beta1 L2Advertisement: which pools are announced, from which nodes, on which interfaces."""

    ref: ObjectRef
    pools: tuple[str, ...] = ()
    pool_selectors: tuple[LabelSelector, ...] = ()
    node_selectors: tuple[LabelSelector, ...] = ()
    interfaces: tuple[str, ...] = ()

    def covers(self, pool: AddressPool) -> bool:
        return covers_pool(self.pools, self.pool_selectors, pool)

    def allows_node(self, node_labels: Mapping[str, str]) -> bool:
        return any_matches(self.node_selectors, node_labels)


def covers_pool(names: tuple[str, ...], selectors: tuple[LabelSelector, ...], pool: AddressPool) -> bool:
    """An advertisement's ipAddressPools and ipAddressPoolSelectors (L2 or BGP): with neither names nor
    selectors it covers every pool (MetalLB)."""
    if not names and not selectors:
        return True
    return pool.name in names or any(s.matches(dict(pool.labels)) for s in selectors)


@dataclass(frozen=True, slots=True)
class PortUse:
    protocol: str  # tcp | udp | sctp
    port: int

    def __str__(self) -> str:
        return f"{self.protocol.upper()}/{self.port}"


@dataclass(frozen=True, slots=True)
class LBRequest:
    """What a `type: LoadBalancer` Service asks of the allocator."""

    ref: ObjectRef
    families: tuple[Family, ...]
    ports: tuple[PortUse, ...]
    requested: tuple[str, ...] = ()  # specific addresses (annotations or spec.loadBalancerIP)
    pool: str | None = None  # metallb.io/address-pool
    sharing_key: str | None = None  # metallb.io/allow-shared-ip, lbipam.cilium.io/sharing-key
    backend_key: str = ""  # eTP Local: the selector; such Services share only with identical selectors
    labels: tuple[tuple[str, str], ...] = ()
    creation: str = ""  # older Services are allocated first, so a restart decides as before


def address_value(address: str) -> tuple[int, Family]:
    ip = ipaddress.ip_address(address)
    return int(ip), (4 if ip.version == 4 else 6)


def address_text(value: int, family: Family) -> str:
    return str(ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value))


def is_buggy(value: int, family: Family) -> bool:
    """avoidBuggyIPs: IPv4 addresses ending in .0 or .255 upset some old CPE firmware."""
    return family == 4 and (value & 0xFF) in (0, 255)
