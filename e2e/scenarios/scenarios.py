"""The scenario suite: one function per feature, each runnable against any Target.

A scenario creates what it needs under unique names (a :class:`Workload`), sends real requests,
waits for the proxy to converge by probing until the expected outcome or a deadline (never a blind
sleep), raises AssertionError with what was expected and what was seen, and deletes what it
created. Its docstring's first line is the expected outcome, as ``python -m e2e.scenarios --list``
prints it. Two nodes are assumed: ``n1, n2 = target.nodes[:2]``.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from e2e.scenarios.targets import DNS, HTTP, Backend, Reply, Service, Source, Target

T = TypeVar("T")
Scenario = Callable[[Target], None]

#: every scenario by name, in the order they run
SCENARIOS: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS[fn.__name__] = fn
    return fn


def describe(fn: Scenario) -> str:
    """The expected outcome: the docstring's first paragraph, its lines joined into one."""
    first = (fn.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(line.strip() for line in first.splitlines())


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


class Workload:
    """Backends and Services of one scenario, under unique names; deleted on exit (even on failure)."""

    def __init__(self, target: Target, prefix: str) -> None:
        self.target = target
        self.app = f"{prefix}-{secrets.token_hex(2)}"
        self.services: list[Service] = []
        self.backends: list[Backend] = []

    def deploy(self, *nodes: str) -> list[Backend]:
        """One backend per node given (a node may repeat)."""
        made = self.target.deploy_backends(self.app, list(nodes))
        self.backends += made
        return made

    def service(self, ports: Iterable[dict[str, Any]] = (HTTP,), suffix: str = "", **spec: Any) -> Service:
        svc = self.target.create_service(self.app + suffix, self.app, list(ports), **spec)
        self.services.append(svc)
        return svc

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        errors = []
        for svc in reversed(self.services):
            try:
                self.target.delete_service(svc)
            except Exception as err:  # noqa: BLE001 - keep cleaning up
                errors.append(f"Service {svc.name}: {err}")
        for backend in reversed(self.backends):
            try:
                self.target.delete_backend(backend)
            except Exception as err:  # noqa: BLE001
                errors.append(f"backend {backend.name}: {err}")
        if errors and exc_type is None:
            raise RuntimeError("cleanup failed: " + "; ".join(errors))


def eventually(target: Target, check: Callable[[], T], within: float | None = None) -> T:
    """Run ``check`` until it stops raising AssertionError or the target's convergence deadline passes."""
    budget = target.converge_timeout if within is None else within
    deadline = time.monotonic() + budget
    while True:
        try:
            return check()
        except AssertionError as err:
            if time.monotonic() > deadline:
                raise AssertionError(f"{err} (still so after {budget:.0f} s)") from None
        time.sleep(0.2)


def where(src: Source, ip: str, port: int, proto: str) -> str:
    return f"{src} -> {ip}:{port}/{proto}"


def fmt(counts: Counter[str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + "}"


def outcomes(replies: list[Reply]) -> Counter[str]:
    return Counter(r.outcome for r in replies)


def reachable(target: Target, src: Source, ip: str, port: int, proto: str = "tcp") -> None:
    """Eventually one request is answered (cheap: before the proxy converges, packets may be dropped)."""

    def check() -> None:
        reply = target.request(src, ip, port, proto=proto, count=1, timeout=target.drop_timeout)[0]
        assert reply.ok, f"{where(src, ip, port, proto)}: no answer yet ({reply.error})"

    eventually(target, check)


def lands_on(target: Target, src: Source, ip: str, port: int, backends: Iterable[Backend],
             proto: str = "tcp", count: int = 20) -> Counter[str]:
    """Eventually every one of ``count`` requests is answered, by these backends and each of them."""
    expected = {b.name for b in backends}
    reachable(target, src, ip, port, proto)

    def check() -> Counter[str]:
        got = outcomes(target.request(src, ip, port, proto=proto, count=count))
        assert set(got) == expected, (f"{where(src, ip, port, proto)}: expected {count} answers spread over "
                                      f"{sorted(expected)}, got {fmt(got)}")
        return got

    return eventually(target, check)


def sources_seen(target: Target, src: Source, ip: str, port: int, proto: str = "tcp",
                 count: int = 10) -> Counter[str]:
    """The source addresses endpoints saw for ``count`` requests (``error:<kind>`` for failures)."""
    replies = target.request(src, ip, port, proto=proto, count=count, ask="clientip")
    return Counter(r.client if r.ok and r.client else f"error:{r.error}" for r in replies)


def sees_source(target: Target, src: Source, ip: str, port: int, expected: str, proto: str = "tcp") -> None:
    """Eventually endpoints see exactly ``expected`` as the source of every request."""

    def check() -> None:
        got = sources_seen(target, src, ip, port, proto)
        assert set(got) == {expected}, (f"{where(src, ip, port, proto)}: endpoints should see the source "
                                        f"{expected}, saw {fmt(got)}")

    eventually(target, check)


def masqueraded(target: Target, src: Source, ip: str, port: int, proto: str = "tcp") -> None:
    """Eventually every request is answered and no endpoint sees the client's own address."""

    def check() -> None:
        got = sources_seen(target, src, ip, port, proto)
        errors = {k for k in got if k.startswith("error:")}
        assert not errors and src.ip not in got, (f"{where(src, ip, port, proto)}: expected answers from "
                                                  f"endpoints seeing a node's address instead of {src.ip}, "
                                                  f"saw {fmt(got)}")

    eventually(target, check)


def fails(target: Target, src: Source, ip: str, port: int, error: str, proto: str = "tcp") -> None:
    """Eventually a request fails with ``error`` (``refused``: rejected at once; ``timeout``: dropped)."""

    def check() -> None:
        reply = target.request(src, ip, port, proto=proto, count=1, timeout=target.drop_timeout)[0]
        assert reply.outcome == f"error:{error}", (f"{where(src, ip, port, proto)}: expected error:{error}, "
                                                   f"got {reply.outcome}")

    eventually(target, check)


def sticks(target: Target, src: Source, ip: str, port: int, count: int = 20) -> str:
    """Eventually all ``count`` requests are answered by one backend; returns its name."""
    reachable(target, src, ip, port)

    def check() -> str:
        got = outcomes(target.request(src, ip, port, count=count))
        assert len(got) == 1 and not next(iter(got)).startswith("error:"), (
            f"{where(src, ip, port, 'tcp')}: expected all {count} answers from one endpoint, got {fmt(got)}")
        return next(iter(got))

    return eventually(target, check)


def two_nodes(target: Target) -> tuple[str, str]:
    nodes = target.nodes
    if len(nodes) < 2:
        raise AssertionError(f"the scenarios need two nodes, the target has {nodes}")
    return nodes[0], nodes[1]


# --------------------------------------------------------------------------- #
# the scenarios
# --------------------------------------------------------------------------- #


@scenario
def clusterip_balances_across_nodes(target: Target) -> None:
    """A pod's connections to a ClusterIP are spread over the endpoints on both nodes."""
    n1, n2 = two_nodes(target)
    with Workload(target, "balance") as w:
        backends = w.deploy(n1, n2)
        svc = w.service()
        lands_on(target, target.pod_client(n1), svc.cluster_ip, svc.port(), backends, count=30)


@scenario
def clusterip_keeps_pod_source(target: Target) -> None:
    """Pod-to-ClusterIP traffic is not masqueraded: endpoints on both nodes see the client pod's own address."""
    n1, n2 = two_nodes(target)
    with Workload(target, "podsrc") as w:
        backends = w.deploy(n1, n2)
        svc = w.service()
        client = target.pod_client(n1)
        lands_on(target, client, svc.cluster_ip, svc.port(), backends)
        sees_source(target, client, svc.cluster_ip, svc.port(), client.ip)


@scenario
def clusterip_and_nodeport_from_a_node(target: Target) -> None:
    """A node reaches a ClusterIP and its own NodePort; connections are spread over both nodes' endpoints."""
    n1, n2 = two_nodes(target)
    with Workload(target, "fromnode") as w:
        backends = w.deploy(n1, n2)
        svc = w.service(type="NodePort")
        node = target.node_client(n1)
        lands_on(target, node, svc.cluster_ip, svc.port(), backends)
        lands_on(target, node, target.node_address(n1), svc.node_port(), backends)


@scenario
def nodeport_from_outside_is_masqueraded(target: Target) -> None:
    """Outside clients reach a NodePort on every node, spread over both nodes' endpoints, which see a node's address."""
    n1, n2 = two_nodes(target)
    with Workload(target, "nodeport") as w:
        backends = w.deploy(n1, n2)
        svc = w.service(type="NodePort")
        outside = target.outside_client()
        for node in (n1, n2):
            lands_on(target, outside, target.node_address(node), svc.node_port(), backends)
            masqueraded(target, outside, target.node_address(node), svc.node_port())


@scenario
def external_ip(target: Target) -> None:
    """An outside client reaches a Service's externalIP routed to a node, spread over both nodes' endpoints,
    masqueraded."""
    n1, n2 = two_nodes(target)
    with Workload(target, "extip") as w:
        backends = w.deploy(n1, n2)
        ip = target.external_ip(via=n1)
        svc = w.service(externalIPs=[ip])
        outside = target.outside_client()
        lands_on(target, outside, ip, svc.port(), backends)
        masqueraded(target, outside, ip, svc.port())
        lands_on(target, target.pod_client(n2), ip, svc.port(), backends)


@scenario
def load_balancer_ip(target: Target) -> None:
    """An outside client reaches a LoadBalancer ingress IP, spread over both nodes' endpoints, masqueraded."""
    n1, n2 = two_nodes(target)
    with Workload(target, "lb") as w:
        backends = w.deploy(n1, n2)
        svc = w.service(type="LoadBalancer")
        ip = target.load_balancer_ip(svc, via=n2)
        outside = target.outside_client()
        lands_on(target, outside, ip, svc.port(), backends)
        masqueraded(target, outside, ip, svc.port())
        lands_on(target, outside, target.node_address(n1), svc.node_port(), backends)


@scenario
def no_endpoints_rejects(target: Target) -> None:
    """A Service without endpoints refuses connections at once: TCP and UDP on its ClusterIP, and its NodePort."""
    n1, _ = two_nodes(target)
    with Workload(target, "empty") as w:
        svc = w.service(ports=(HTTP, DNS), type="NodePort")
        client = target.pod_client(n1)
        fails(target, client, svc.cluster_ip, svc.port("http"), "refused")
        fails(target, client, svc.cluster_ip, svc.port("dns"), "refused", proto="udp")
        fails(target, target.outside_client(), target.node_address(n1), svc.node_port("http"), "refused")


@scenario
def clusterip_unserved_port_rejects(target: Target) -> None:
    """A ClusterIP refuses connections to a port its Service does not serve, while the served port answers."""
    n1, n2 = two_nodes(target)
    with Workload(target, "unserved") as w:
        backends = w.deploy(n2)
        svc = w.service()
        client = target.pod_client(n1)
        lands_on(target, client, svc.cluster_ip, svc.port(), backends, count=3)
        fails(target, client, svc.cluster_ip, svc.port() + 1, "refused")


@scenario
def hairpin(target: Target) -> None:
    """A pod reaching its own Service lands on itself, masqueraded so that it does not see its own address."""
    n1, _ = two_nodes(target)
    with Workload(target, "hairpin") as w:
        backends = w.deploy(n1)
        svc = w.service()
        itself = target.backend_client(backends[0])
        lands_on(target, itself, svc.cluster_ip, svc.port(), backends, count=3)
        masqueraded(target, itself, svc.cluster_ip, svc.port())


@scenario
def external_traffic_policy_local_keeps_client_source(target: Target) -> None:
    """eTP Local: NodePort traffic from outside stays on that node's endpoints with the client's address;
    none there: dropped."""
    n1, n2 = two_nodes(target)
    with Workload(target, "etplocal") as w, Workload(target, "etpone") as one:
        b1, b2 = w.deploy(n1, n2)
        svc = w.service(type="NodePort", externalTrafficPolicy="Local")
        outside = target.outside_client()
        for node, local in ((n1, b1), (n2, b2)):
            address = target.node_address(node)
            lands_on(target, outside, address, svc.node_port(), [local], count=10)
            sees_source(target, outside, address, svc.node_port(), outside.ip)
        # endpoints on node 1 only: node 2 drops (a timeout, where a port without rules would refuse)
        (only,) = one.deploy(n1)
        svc1 = one.service(type="NodePort", externalTrafficPolicy="Local")
        lands_on(target, outside, target.node_address(n1), svc1.node_port(), [only], count=3)
        fails(target, outside, target.node_address(n2), svc1.node_port(), "timeout")


@scenario
def internal_traffic_policy_local(target: Target) -> None:
    """iTP Local: a pod's connections to the ClusterIP go only to the endpoints on its own node."""
    n1, n2 = two_nodes(target)
    with Workload(target, "itplocal") as w:
        b1, b2, b3 = w.deploy(n1, n2, n1)
        svc = w.service(internalTrafficPolicy="Local")
        lands_on(target, target.pod_client(n1), svc.cluster_ip, svc.port(), [b1, b3], count=30)
        lands_on(target, target.pod_client(n2), svc.cluster_ip, svc.port(), [b2], count=5)


@scenario
def session_affinity_client_ip(target: Target) -> None:
    """ClientIP affinity: all connections of a client go to one endpoint, for pods on either node and a node."""
    n1, n2 = two_nodes(target)
    with Workload(target, "affinity") as w:
        w.deploy(n1, n2)
        svc = w.service(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
        for client in (target.pod_client(n1), target.pod_client(n2), target.node_client(n1)):
            sticks(target, client, svc.cluster_ip, svc.port())


@scenario
def load_balancer_source_ranges(target: Target) -> None:
    """loadBalancerSourceRanges: a client in the ranges reaches the LB IP; ranges without it drop it,
    its NodePort stays open."""
    n1, n2 = two_nodes(target)
    with Workload(target, "ranges") as w:
        backends = w.deploy(n1, n2)
        outside = target.outside_client()
        svc = w.service(type="LoadBalancer", loadBalancerSourceRanges=[f"{outside.ip}/32"])
        ip = target.load_balancer_ip(svc, via=n1)
        lands_on(target, outside, ip, svc.port(), backends)
        svc = target.patch_service(svc, {"loadBalancerSourceRanges": ["192.0.2.0/24"]})
        fails(target, outside, ip, svc.port(), "timeout")
        lands_on(target, outside, target.node_address(n1), svc.node_port(), backends)


@scenario
def udp_service(target: Target) -> None:
    """UDP: a pod's datagrams to a ClusterIP spread over both nodes' endpoints with its own address;
    the NodePort answers."""
    n1, n2 = two_nodes(target)
    with Workload(target, "udp") as w:
        backends = w.deploy(n1, n2)
        svc = w.service(ports=(DNS,), type="NodePort")
        client = target.pod_client(n1)
        lands_on(target, client, svc.cluster_ip, svc.port("dns"), backends, proto="udp")
        sees_source(target, client, svc.cluster_ip, svc.port("dns"), client.ip, proto="udp")
        lands_on(target, target.outside_client(), target.node_address(n2), svc.node_port("dns"), backends,
                 proto="udp")
