"""What a scenario can ask of a cluster: the Target interface, and how a target is chosen.

A scenario (see :mod:`e2e.scenarios.scenarios`) only talks to a :class:`Target`. Two implement it:

* :class:`e2e.scenarios.namespace.NamespaceTarget`: the namespace cluster of ``e2e/netns`` (two nodes,
  pods, an outside client on the LAN), the API server stand-in and one ``nftproxy run --kubeconfig``
  agent per node. The target plays the EndpointSlice controller. Needs root; runs in CI.
* :class:`e2e.scenarios.kube.KubeTarget`: a real cluster through its API (``$KUBECONFIG``), with
  nftproxy deployed in place of kube-proxy. Backends are agnhost Pods.

Vocabulary shared by both:

* a **backend** is a Pod on a chosen node serving HTTP on 8080 (``/hostname``, ``/clientip``) and UDP
  on 5353 (``hostname``, ``clientip``), labelled ``nftproxy-e2e/app: <app>``; its name is what it answers
  to ``hostname``.
* a **Service** selects the backends of one app; its EndpointSlice comes from the cluster's controller
  (KubeTarget) or from the target itself (NamespaceTarget).
* a **source** is where requests come from: a client pod on a node, a node itself (host network), a
  backend (for hairpin), or a machine outside the nodes.
* a **reply** says which backend answered (``backend``) and the source address it saw (``client``);
  ``error`` is ``refused``, ``timeout``, ``reset``, ``unreachable`` or a message.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any


class Skip(Exception):
    """A scenario needs something this target lacks; the message says what."""


@dataclasses.dataclass(frozen=True)
class Backend:
    """A Pod serving the echo endpoints on a chosen node."""

    name: str
    app: str
    node: str
    ip: str


@dataclasses.dataclass(frozen=True)
class Service:
    """A Service as the API server stored it (allocated addresses and ports included)."""

    name: str
    cluster_ip: str
    #: port name -> Service port
    ports: dict[str, int]
    #: port name -> allocated nodePort (NodePort and LoadBalancer Services)
    node_ports: dict[str, int]
    spec: dict[str, Any] = dataclasses.field(compare=False, repr=False)

    @classmethod
    def from_api(cls, stored: dict[str, Any]) -> "Service":
        """From a Service as the API returned it (a plain dict)."""
        spec = stored.get("spec", {})
        ports = spec.get("ports") or []
        return cls(name=stored["metadata"]["name"], cluster_ip=spec.get("clusterIP", ""),
                   ports={p.get("name", ""): p["port"] for p in ports},
                   node_ports={p.get("name", ""): p["nodePort"] for p in ports if p.get("nodePort")},
                   spec=spec)

    def port(self, name: str = "http") -> int:
        return self.ports[name]

    def node_port(self, name: str = "http") -> int:
        if name not in self.node_ports:
            raise AssertionError(f"Service {self.name} has no nodePort for port {name!r}: {self.node_ports}")
        return self.node_ports[name]


@dataclasses.dataclass(frozen=True)
class Source:
    """Where requests are sent from.

    ``kind`` is ``pod``, ``node``, ``outside`` or ``backend``; ``ip`` is the address it sends from
    (what an endpoint sees when nothing rewrites the source); ``node`` is the node it runs on, if any.
    """

    kind: str
    name: str
    ip: str
    node: str | None = None
    handle: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        where = f" on {self.node}" if self.node and self.kind != "node" else ""
        return f"{self.kind} {self.name}{where} ({self.ip})"


@dataclasses.dataclass(frozen=True)
class Reply:
    """The outcome of one request."""

    ok: bool
    backend: str | None = None
    client: str | None = None
    error: str | None = None

    @property
    def outcome(self) -> str:
        """The backend's name, or ``error:<kind>``."""
        return self.backend if self.ok and self.backend else f"error:{self.error}"


#: The Service ports scenarios use: HTTP on 80 -> 8080, and UDP on 53 -> 5353.
HTTP = {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}
DNS = {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}
#: label carried by every backend Pod; Services select on it
APP_LABEL = "nftproxy-e2e/app"


class Target(abc.ABC):
    """A cluster the scenarios run against. Use as a context manager (``start``/``close``)."""

    #: short name, as ``--target`` spells it
    name: str = ""
    #: how long a scenario waits for the proxy to reach an expected state, seconds
    converge_timeout: float = 15.0
    #: per-request timeout used when a request is expected to be dropped, seconds
    drop_timeout: float = 1.0

    def __enter__(self) -> Target:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def start(self) -> Target:
        """Build or connect to the cluster; ready for scenarios afterwards."""

    @abc.abstractmethod
    def close(self) -> None:
        """Remove everything the target created (idempotent)."""

    # -- the cluster -------------------------------------------------------- #

    @property
    @abc.abstractmethod
    def nodes(self) -> list[str]:
        """Names of the nodes scenarios place backends and clients on (at least two)."""

    @abc.abstractmethod
    def node_address(self, node: str) -> str:
        """The node's address that outside clients reach (its InternalIP)."""

    # -- workloads ---------------------------------------------------------- #

    @abc.abstractmethod
    def deploy_backends(self, app: str, nodes: list[str]) -> list[Backend]:
        """One backend per entry of ``nodes`` (named ``<app>-1``, ``<app>-2``, ...), each ready to serve."""

    @abc.abstractmethod
    def delete_backend(self, backend: Backend) -> None:
        """Remove a backend: it leaves its Services' endpoints."""

    @abc.abstractmethod
    def create_service(self, name: str, app: str, ports: list[dict[str, Any]], **spec: Any) -> Service:
        """A Service selecting the backends of ``app``; ``spec`` adds fields (type, policies, ...)."""

    @abc.abstractmethod
    def patch_service(self, service: Service, spec: dict[str, Any]) -> Service:
        """Merge ``spec`` into the Service's spec."""

    @abc.abstractmethod
    def delete_service(self, service: Service) -> None:
        """Delete the Service (and, where the target made it, its EndpointSlice)."""

    @abc.abstractmethod
    def external_ip(self, via: str) -> str:
        """An address outside clients reach through node ``via``, usable as a Service externalIP.

        Raises :class:`Skip` if the target has none.
        """

    @abc.abstractmethod
    def load_balancer_ip(self, service: Service, via: str) -> str:
        """Give a LoadBalancer Service an ingress IP routed to node ``via`` (where the target can choose)
        and return it once ``status.loadBalancer.ingress`` holds it. Raises :class:`Skip` if the target
        has no way to get one."""

    # -- traffic ------------------------------------------------------------ #

    @abc.abstractmethod
    def pod_client(self, node: str) -> Source:
        """A client pod on ``node`` (created on first use, kept until close)."""

    @abc.abstractmethod
    def node_client(self, node: str) -> Source:
        """The node itself (host network)."""

    @abc.abstractmethod
    def outside_client(self) -> Source:
        """A machine outside the nodes that reaches the nodes' addresses."""

    @abc.abstractmethod
    def backend_client(self, backend: Backend) -> Source:
        """The backend pod itself, as a client (hairpin)."""

    @abc.abstractmethod
    def request(self, source: Source, ip: str, port: int, proto: str = "tcp", count: int = 1,
                ask: str = "hostname", timeout: float = 2.0) -> list[Reply]:
        """``count`` requests (each a new connection, or a new UDP socket) from ``source``.

        ``ask`` is ``hostname`` (fill ``Reply.backend``) or ``clientip`` (fill ``Reply.client``); a
        target may fill both whatever is asked.
        """


TARGETS = ("namespace", "kube")


def default_target_name(environ: dict[str, str] | None = None) -> str:
    """``$NFTPROXY_E2E_TARGET`` if set, else ``kube`` when ``$KUBECONFIG`` is set, else ``namespace``."""
    env = os.environ if environ is None else environ
    chosen = env.get("NFTPROXY_E2E_TARGET", "").strip()
    if chosen:
        if chosen not in TARGETS:
            raise ValueError(f"NFTPROXY_E2E_TARGET={chosen!r}: expected one of {', '.join(TARGETS)}")
        return chosen
    return "kube" if env.get("KUBECONFIG") else "namespace"


def make_target(name: str) -> Target:
    """A (not yet started) target by name."""
    if name == "namespace":
        from e2e.scenarios.namespace import NamespaceTarget

        return NamespaceTarget()
    if name == "kube":
        from e2e.scenarios.kube import KubeTarget

        return KubeTarget()
    raise ValueError(f"unknown target {name!r}: expected one of {', '.join(TARGETS)}")
