"""Plain immutable data for what nftproxy reads from the API: Services, endpoints, Nodes.

Everything here is already validated and normalised (canonical IP text, lower-case protocol), so the
translation to rules never has to second-guess its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .addresses import family_of_text

Protocol = Literal["tcp", "udp", "sctp"]
Family = Literal[4, 6]
PROTOCOLS: dict[str, Protocol] = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """namespace/name of an API object, used in logs, comments and as an owner of rules."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: Protocol
    port: int
    node_port: int | None = None


@dataclass(frozen=True, slots=True)
class Service:
    """A Service as far as the data path is concerned."""

    ref: ObjectRef
    type: str  # ClusterIP | NodePort | LoadBalancer (ExternalName and headless never get here)
    cluster_ips: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    external_traffic_local: bool = False
    internal_traffic_local: bool = False
    health_check_node_port: int | None = None
    affinity_timeout: int | None = None  # seconds, when sessionAffinity is ClientIP
    source_ranges: tuple[str, ...] = ()
    publish_not_ready: bool = False
    prefer_close: bool = False  # trafficDistribution PreferClose, or topology-mode Auto: use zone hints
    creation: str = ""  # metadata.creationTimestamp: the oldest Service wins a conflict
    weights: tuple[tuple[str, int], ...] = ()  # nftproxy.io/endpoint-weights: (endpoint IP or Pod name, weight)

    def families(self) -> tuple[int, ...]:
        return tuple(sorted({family_of_text(ip) for ip in self.cluster_ips}))


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    family: Family
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    zone_hints: tuple[str, ...] | None = None  # None: no hints at all
    target_name: str | None = None  # targetRef.name, usually the Pod's name
    weight: int = 1  # relative share of connections (nftproxy.io/weight on the slice)


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    protocol: Protocol
    port: int


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    ref: ObjectRef
    service: ObjectRef
    family: Family
    ports: tuple[EndpointPort, ...]
    endpoints: tuple[Endpoint, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (field, why) of endpoints left out, as upstream does


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    zone: str | None = None
    labels: tuple[tuple[str, str], ...] = field(default=())
