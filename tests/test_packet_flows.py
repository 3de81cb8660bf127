"""Packet paths in milliseconds: Proxier + FakeKernel, traced by tests/nft_tracer.py (no root).

(a) A table of upstream-style flows (kube-proxy's runPacketFlowTests) over one node holding many
    kinds of Service, with upstream's addresses.
(b) A twin of each root-only kernel test whose outcome the rules alone decide (test_policies.py,
    test_dataplane.py, test_dualstack.py), named test_twin_<original>, on the same two-node world
    with the same addresses. The expected results are what the kernel tests assert. The kernel tests
    stay the truth; these give the same answer at once, and say which rule took the packet there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import pytest

from nftproxy.agent.proxier import Proxier
from nftproxy.config import ProxyConfig
from nftproxy.kernel.fake import FakeKernel
from tests.nft_tracer import Packet, Trace, Tracer

from e2e.objects import endpoint_slice, service


# --- a world of nodes, each with its own Proxier, FakeKernel and tracer --------------------------------------

class World:
    """Nodes that see the same objects, as the kernel tests' agents do (one Proxier per node)."""

    def __init__(self, nodes: Mapping[str, Iterable[str]], config: Mapping[str, Any]) -> None:
        self.local = {name: list(addresses) for name, addresses in nodes.items()}
        self.kernels = {name: FakeKernel() for name in nodes}
        self.proxiers = {name: Proxier(ProxyConfig(name, **config), self.kernels[name]) for name in nodes}
        self.tracers: dict[str, Tracer] = {}
        self.groups: dict[str, list[tuple[str, str, str]]] = {}

    def apply(self, group: str, objects: list[dict[str, Any]]) -> None:
        """Like AgentCluster.apply: the group's manifest is replaced, what left it is deleted."""
        refs = [(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objects]
        for proxier in self.proxiers.values():
            for ref in self.groups.get(group, []):
                if ref not in refs:
                    proxier.delete(*ref)
            for obj in objects:
                proxier.upsert(obj)
        self.groups[group] = refs
        self._sync()

    def delete(self, group: str) -> None:
        for proxier in self.proxiers.values():
            for ref in self.groups.pop(group, []):
                proxier.delete(*ref)
        self._sync()

    def _sync(self) -> None:
        for name, proxier in self.proxiers.items():
            proxier.sync()
            tracer = Tracer(self.kernels[name], self.local[name])
            old = self.tracers.get(name)
            if old is not None:  # entries the packet path made survive a sync, as in the kernel
                tracer.dynamic, tracer.now = old.dynamic, old.now
            self.tracers[name] = tracer

    def add_address(self, node: str, address: str) -> None:
        self.local[node].append(address)
        self._sync()

    def advance(self, seconds: float) -> None:
        for tracer in self.tracers.values():
            tracer.advance(seconds)

    def trace(self, node: str, source: str, destination: str, port: int, proto: str = "tcp",
              hook: str = "prerouting") -> Trace:
        return self.tracers[node].trace(Packet(source, destination, proto, port), hook)


def landed(trace: Trace, pods: Mapping[str, str]) -> set[str]:
    """Pod names the trace's endpoints belong to; DROP and REJECT as the kernel tests' errors
    (a drop is a timeout, a reject is refused)."""
    by_address = {address: name for name, address in pods.items()}
    names = {by_address.get(address, address) for address in trace.addresses}
    if trace.verdict == "drop":
        names.add("error:timeout")
    elif trace.verdict == "reject":
        names.add("error:refused")
    elif trace.verdict == "mixed":
        names.add("mixed")
    return names


# --- (a) upstream-style flows ------------------------------------------------------------------------------

NODE_IP, NODE_IP6 = "192.168.0.2", "2001:db8::2"
FLOW_CONFIG = {"cluster_cidrs": ("10.0.0.0/8", "fd00:10::/32"), "service_cidrs": ("172.30.0.0/16", "fd00:172:30::/112")}


def _ports(*ports: tuple[str, int, str, int | None]) -> list[dict[str, Any]]:
    return [{"name": n, "port": p, "protocol": proto, **({"nodePort": np} if np else {})} for n, p, proto, np in ports]


def _slice(name: str, endpoints: dict[str, str | None], port: int = 80, protocol: str = "TCP",
           family: str = "IPv4", suffix: str = "a", port_name: str = "p") -> dict[str, Any]:
    """endpoint address -> its node (None: unknown)."""
    body = endpoint_slice(name, list(endpoints), [{"name": port_name, "port": port, "protocol": protocol}],
                          name=f"{name}-{suffix}", namespace="ns", address_type=family)
    for ep in body["endpoints"]:
        node = endpoints[ep["addresses"][0]]
        if node:
            ep["nodeName"] = node
    return body


def flow_world() -> World:
    """Services in the spirit of upstream's TestOverallNFTablesRules, seen from node-1."""
    world = World({"node-1": [NODE_IP, NODE_IP6]}, FLOW_CONFIG)
    tcp80 = _ports(("p", 80, "TCP", None))
    world.apply("flows", [
        service("svc1", "172.30.0.41", tcp80, namespace="ns"),
        _slice("svc1", {"10.180.0.1": "node-1"}),
        # externalTrafficPolicy Local: one local endpoint, one remote
        service("svc2", "172.30.0.42", _ports(("p", 80, "TCP", 3001)), namespace="ns", type="LoadBalancer",
                externalIPs=["192.168.99.22"], externalTrafficPolicy="Local", healthCheckNodePort=30000,
                status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}),
        _slice("svc2", {"10.180.0.2": "node-1", "10.180.1.2": "node-2"}),
        service("svc3", "172.30.0.43", _ports(("p", 80, "TCP", 3003)), namespace="ns", type="NodePort"),
        _slice("svc3", {"10.180.0.3": "node-1"}),
        service("svc4", "172.30.0.44", tcp80, namespace="ns", externalIPs=["192.168.99.33"]),
        _slice("svc4", {"10.180.0.4": "node-1", "10.180.0.5": "node-2"}),
        service("svc5", "172.30.0.45", _ports(("p", 80, "TCP", 3002)), namespace="ns", type="LoadBalancer",
                loadBalancerSourceRanges=["203.0.113.0/25"], status={"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}}),
        _slice("svc5", {"10.180.0.3": "node-1"}),
        # no endpoints: every frontend rejects
        service("svc6", "172.30.0.46", _ports(("p", 80, "TCP", 3006)), namespace="ns", type="LoadBalancer",
                externalIPs=["192.168.99.66"], status={"loadBalancer": {"ingress": [{"ip": "9.10.11.12"}]}}),
        # internalTrafficPolicy Local
        service("svc7", "172.30.0.47", tcp80, namespace="ns", internalTrafficPolicy="Local"),
        _slice("svc7", {"10.180.0.6": "node-1", "10.180.1.6": "node-2"}),
        # dual-stack
        service("svc8", ["172.30.0.48", "fd00:172:30::48"], _ports(("p", 80, "TCP", 3008)), namespace="ns",
                type="NodePort", ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack"),
        _slice("svc8", {"10.180.0.8": "node-1"}),
        _slice("svc8", {"fd00:10:180::8": "node-1", "fd00:10:181::8": "node-2"}, family="IPv6", suffix="b"),
        # TCP and UDP on one port, SCTP
        service("svc9", "172.30.0.49", _ports(("dns-tcp", 53, "TCP", None), ("dns-udp", 53, "UDP", None),
                                              ("s", 99, "SCTP", None)), namespace="ns"),
        _slice("svc9", {"10.180.0.9": "node-1"}, 5353, "TCP", port_name="dns-tcp"),
        _slice("svc9", {"10.180.1.9": "node-2"}, 5353, "UDP", suffix="b", port_name="dns-udp"),
        _slice("svc9", {"10.180.2.9": None}, 9999, "SCTP", suffix="c", port_name="s"),
    ])
    return world


@dataclass(frozen=True)
class Flow:
    """As upstream's packetFlowTest: the output lists endpoints, or DROP / REJECT / ACCEPT (no DNAT)."""

    name: str
    source: str
    destination: str
    port: int
    output: str
    masq: bool = False
    proto: str = "tcp"
    hook: str = "prerouting"  # output: the node itself sends it


FLOWS = [
    Flow("pod to ClusterIP", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
    Flow("external to ClusterIP", "192.168.0.5", "172.30.0.41", 80, "10.180.0.1:80", masq=True),
    Flow("node to ClusterIP", NODE_IP, "172.30.0.41", 80, "10.180.0.1:80", masq=True, hook="output"),
    Flow("pod to its own ClusterIP (hairpin)", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", masq=True),
    Flow("pod to unknown port of a ClusterIP", "10.0.0.2", "172.30.0.41", 81, "REJECT"),
    Flow("pod to unallocated address in the service CIDR", "10.0.0.2", "172.30.0.99", 80, "DROP"),
    Flow("pod to a pod, outside the service CIDR", "10.0.0.2", "10.180.0.1", 80, "ACCEPT"),
    # externalTrafficPolicy Local
    Flow("pod to eTP Local ClusterIP", "10.0.0.2", "172.30.0.42", 80, "10.180.0.2:80, 10.180.1.2:80"),
    Flow("external to eTP Local LB IP", "203.0.113.9", "1.2.3.4", 80, "10.180.0.2:80"),
    Flow("external to eTP Local externalIP", "203.0.113.9", "192.168.99.22", 80, "10.180.0.2:80"),
    Flow("external to eTP Local NodePort", "203.0.113.9", NODE_IP, 3001, "10.180.0.2:80"),
    Flow("pod to eTP Local LB IP is short-circuited", "10.0.0.2", "1.2.3.4", 80, "10.180.0.2:80, 10.180.1.2:80"),
    Flow("pod to eTP Local NodePort is short-circuited", "10.0.0.2", NODE_IP, 3001, "10.180.0.2:80, 10.180.1.2:80"),
    Flow("node to eTP Local LB IP", NODE_IP, "1.2.3.4", 80, "10.180.0.2:80, 10.180.1.2:80", masq=True, hook="output"),
    Flow("node to eTP Local NodePort", NODE_IP, NODE_IP, 3001, "10.180.0.2:80, 10.180.1.2:80", masq=True,
         hook="output"),
    # NodePorts, externalIPs
    Flow("external to NodePort", "203.0.113.9", NODE_IP, 3003, "10.180.0.3:80", masq=True),
    Flow("node to NodePort", NODE_IP, NODE_IP, 3003, "10.180.0.3:80", masq=True, hook="output"),
    Flow("node to NodePort on localhost is not served", "127.0.0.1", "127.0.0.1", 3003, "ACCEPT", masq=False,
         hook="output"),
    Flow("NodePort on another host's address", "203.0.113.9", "192.168.0.3", 3003, "ACCEPT"),
    Flow("external to externalIP", "203.0.113.9", "192.168.99.33", 80, "10.180.0.4:80, 10.180.0.5:80", masq=True),
    Flow("pod to externalIP", "10.0.0.2", "192.168.99.33", 80, "10.180.0.4:80, 10.180.0.5:80", masq=True),
    # loadBalancerSourceRanges
    Flow("allowed source to firewalled LB IP", "203.0.113.7", "5.6.7.8", 80, "10.180.0.3:80", masq=True),
    Flow("blocked source to firewalled LB IP", "203.0.113.200", "5.6.7.8", 80, "DROP"),
    Flow("blocked source to the firewalled Service's NodePort", "203.0.113.200", NODE_IP, 3002, "10.180.0.3:80",
         masq=True),
    Flow("blocked source to the firewalled Service's ClusterIP", "203.0.113.200", "172.30.0.45", 80, "10.180.0.3:80",
         masq=True),
    # no endpoints
    Flow("pod to ClusterIP without endpoints", "10.0.0.2", "172.30.0.46", 80, "REJECT"),
    Flow("external to externalIP without endpoints", "203.0.113.9", "192.168.99.66", 80, "REJECT"),
    Flow("external to LB IP without endpoints", "203.0.113.9", "9.10.11.12", 80, "REJECT"),
    Flow("external to NodePort without endpoints", "203.0.113.9", NODE_IP, 3006, "REJECT"),
    Flow("node to ClusterIP without endpoints", NODE_IP, "172.30.0.46", 80, "REJECT", hook="output"),
    # internalTrafficPolicy Local
    Flow("pod to iTP Local ClusterIP", "10.0.0.2", "172.30.0.47", 80, "10.180.0.6:80"),
    # dual-stack
    Flow("pod to IPv4 ClusterIP of a dual-stack Service", "10.0.0.2", "172.30.0.48", 80, "10.180.0.8:80"),
    Flow("pod to IPv6 ClusterIP", "fd00:10:1::2", "fd00:172:30::48", 80, "[fd00:10:180::8]:80, [fd00:10:181::8]:80"),
    Flow("external to IPv6 ClusterIP", "2001:db8::99", "fd00:172:30::48", 80,
         "[fd00:10:180::8]:80, [fd00:10:181::8]:80", masq=True),
    Flow("external to IPv6 NodePort", "2001:db8::99", NODE_IP6, 3008, "[fd00:10:180::8]:80, [fd00:10:181::8]:80",
         masq=True),
    Flow("external to IPv4 NodePort of a dual-stack Service", "203.0.113.9", NODE_IP, 3008, "10.180.0.8:80",
         masq=True),
    Flow("pod to IPv6 unknown port of a ClusterIP", "fd00:10:1::2", "fd00:172:30::48", 81, "REJECT"),
    Flow("pod to unallocated IPv6 service address", "fd00:10:1::2", "fd00:172:30::99", 80, "DROP"),
    Flow("node to IPv6 NodePort on localhost is not served", "::1", "::1", 3008, "ACCEPT", hook="output"),
    # protocols
    Flow("TCP to a port served on TCP and UDP", "10.0.0.2", "172.30.0.49", 53, "10.180.0.9:5353"),
    Flow("UDP to a port served on TCP and UDP", "10.0.0.2", "172.30.0.49", 53, "10.180.1.9:5353", proto="udp"),
    Flow("SCTP ClusterIP", "10.0.0.2", "172.30.0.49", 99, "10.180.2.9:9999", proto="sctp"),
    Flow("UDP to a TCP-only port is rejected", "10.0.0.2", "172.30.0.41", 80, "REJECT", proto="udp"),
]


@pytest.fixture(scope="module")
def flows() -> World:
    return flow_world()


@pytest.mark.parametrize("flow", FLOWS, ids=[f.name for f in FLOWS])
def test_packet_flow(flows: World, flow: Flow) -> None:
    trace = flows.trace("node-1", flow.source, flow.destination, flow.port, flow.proto, flow.hook)
    assert trace.output == flow.output, trace
    if trace.verdict == "accept" and trace.endpoints:
        assert trace.masquerade == flow.masq, trace


def test_packet_flows_replay_as_one_table(flows: World) -> None:
    """The whole table at once, every mismatch listed (as upstream's runPacketFlowTests reports)."""
    wrong = []
    for flow in FLOWS:
        trace = flows.trace("node-1", flow.source, flow.destination, flow.port, flow.proto, flow.hook)
        masq = trace.masquerade if trace.verdict == "accept" and trace.endpoints else flow.masq
        if (trace.output, masq) != (flow.output, flow.masq):
            wrong.append(f"{flow.name}: got {trace.output} masq={masq}, want {flow.output} masq={flow.masq}")
    assert not wrong, "\n".join(wrong)


# --- (b) twins of the kernel tests --------------------------------------------------------------------------
# The namespace cluster of e2e/netns (node-1 198.18.0.11, node-2 198.18.0.12, pods numbered from .2 in each
# node's pod CIDR, outside clients from .101 on the LAN), with the same objects as the kernel tests.

@dataclass(frozen=True)
class NodeStub:
    name: str
    ip: str
    ip6: str
    pod_gateway: str


@dataclass(frozen=True)
class PodStub:
    """What tests.test_policies.slice_of reads of a Pod."""

    name: str
    node: NodeStub
    ip: str
    ip6: str


N1 = NodeStub("node-1", "198.18.0.11", "2001:db8::b", "198.18.129.1")
N2 = NodeStub("node-2", "198.18.0.12", "2001:db8::c", "198.18.130.1")
WEB = [PodStub("web-1", N1, "198.18.129.2", "2001:db8:1:1::2"), PodStub("web-2", N2, "198.18.130.2", "2001:db8:1:2::2"),
       PodStub("web-3", N1, "198.18.129.3", "2001:db8:1:1::3")]
CLIENT = PodStub("client-pod", N1, "198.18.129.4", "2001:db8:1:1::4")
OUTSIDE, STRANGER = "198.18.0.101", "198.18.0.102"
OUTSIDE6 = "2001:db8::65"
PODS = {p.name: p.ip for p in WEB} | {"sctp-1": "198.18.130.3"}
PODS6 = {p.name: p.ip6 for p in WEB}
TWIN_CONFIG = {"cluster_cidrs": ("198.18.128.0/17", "2001:db8:1::/56"),
               "service_cidrs": ("198.19.0.0/16", "2001:db8:2::/112")}


def cluster() -> World:
    """Both nodes; their local addresses as in the namespace cluster (LAN, pod-side gateway)."""
    return World({n.name: [n.ip, n.ip6, n.pod_gateway, "fe80::1"] for n in (N1, N2)}, TWIN_CONFIG)


def _policies() -> Any:
    """tests.test_policies' object builders (svc, slice_of, affinity), shared so the twins use the
    kernel tests' very objects."""
    import tests.test_policies as policies
    return policies


def _dataplane_web_service() -> Any:
    import tests.test_dataplane as dataplane
    return dataplane.web_service


# tests/test_policies.py

def test_twin_external_traffic_policy_local() -> None:
    """Mirrors test_policies.py::test_external_traffic_policy_local."""
    p, world = _policies(), cluster()
    etp = p.svc("etp", "198.19.1.1", type="LoadBalancer", node_port=30100, externalTrafficPolicy="Local",
                healthCheckNodePort=32100, status={"loadBalancer": {"ingress": [{"ip": "198.18.0.210"}]}})
    world.apply("etp", [etp, p.slice_of("etp", [WEB[0], WEB[1]])])
    # outside -> NodePort: only that node's endpoint, the client's source kept
    for node, pod in (("node-1", "web-1"), ("node-2", "web-2")):
        t = world.trace(node, OUTSIDE, (N1 if node == "node-1" else N2).ip, 30100)
        assert landed(t, PODS) == {pod} and not t.masquerade, t
    # the LB IP routed to node-2
    t = world.trace("node-2", OUTSIDE, "198.18.0.210", 80)
    assert landed(t, PODS) == {"web-2"} and not t.masquerade, t
    # pods are short-circuited to every endpoint, keeping their source
    t = world.trace("node-1", CLIENT.ip, "198.18.0.210", 80)
    assert landed(t, PODS) == {"web-1", "web-2"} and not t.masquerade, t
    # the node itself too (masqueraded, as upstream does)
    t = world.trace("node-1", N1.ip, N1.ip, 30100, hook="output")
    assert landed(t, PODS) == {"web-1", "web-2"} and t.masquerade, t
    # a node without local endpoints drops external traffic
    world.apply("etp", [etp, p.slice_of("etp", [WEB[0]])])
    assert landed(world.trace("node-2", OUTSIDE, N2.ip, 30100), PODS) == {"error:timeout"}
    assert landed(world.trace("node-1", OUTSIDE, N1.ip, 30100), PODS) == {"web-1"}


# test_policies.py::test_health_check_node_port has no twin: it is an HTTP server, not a packet path.


def test_twin_internal_traffic_policy_local() -> None:
    """Mirrors test_policies.py::test_internal_traffic_policy_local."""
    p, world = _policies(), cluster()
    world.apply("itp", [p.svc("itp", "198.19.1.3", internalTrafficPolicy="Local"), p.slice_of("itp", WEB)])
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.1.3", 80), PODS) == {"web-1", "web-3"}
    world.apply("itp", [p.svc("itp", "198.19.1.3", internalTrafficPolicy="Local"), p.slice_of("itp", [WEB[1]])])
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.1.3", 80), PODS) == {"error:timeout"}, \
        "no local endpoint: dropped, not sent across"


def stick(world: World, node: str, sources: list[str], targets: list[tuple[str, int]],
          pods: Mapping[str, str] = PODS) -> dict[str, str]:
    """Each source's first connection goes wherever the balance sends it (the i-th source to the i-th
    possible endpoint, so that sources spread), then every later one through every target lands there.
    Returns source -> pod."""
    chosen: dict[str, str] = {}
    for i, source in enumerate(sources):
        address, port = targets[0]
        first = world.trace(node, source, address, port)
        options = sorted(first.endpoints)
        assert len(options) >= 2, f"a new client is balanced: {first}"
        endpoint = options[i % len(options)]
        world.tracers[node].connect(Packet(source, address, "tcp", port), endpoint=endpoint)
        for address, port in targets:
            again = world.trace(node, source, address, port)
            assert again.endpoints == {endpoint}, f"{source} sticks to {endpoint} through {address}:{port}:\n{again}"
        chosen[source] = next(name for name, ip in pods.items() if ip == endpoint[0])
    assert len(set(chosen.values())) >= 2, f"different clients still spread: {chosen}"
    return chosen


def test_twin_session_affinity() -> None:
    """Mirrors test_policies.py::test_session_affinity (the steering, the release when the endpoint
    goes, affinity turned off, the timeout)."""
    p, world = _policies(), cluster()
    spec = {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 3}}}
    world.apply("aff", [p.svc("aff", "198.19.1.4", **spec), p.slice_of("aff", WEB)])
    sources = [f"198.18.0.{180 + i}" for i in range(12)]
    first = stick(world, "node-1", sources, [("198.19.1.4", 80)])
    # the endpoint a client sticks to goes away: its entry steers there once more, the record chain
    # expires it and drops the packet; the retry is balanced afresh over live endpoints, and sticks
    client_ip = sources[0]
    gone = first[client_ip]
    world.apply("aff", [p.svc("aff", "198.19.1.4", **spec), p.slice_of("aff", [w for w in WEB if w.name != gone])])
    retry = world.trace("node-1", client_ip, "198.19.1.4", 80)
    assert landed(retry, PODS) == {"error:timeout"}, retry
    world.tracers["node-1"].connect(Packet(client_ip, "198.19.1.4", "tcp", 80))
    world.advance(1.1)
    after = world.trace("node-1", client_ip, "198.19.1.4", 80)
    assert gone not in landed(after, PODS) and len(after.endpoints) == 2, after
    world.tracers["node-1"].connect(Packet(client_ip, "198.19.1.4", "tcp", 80), endpoint=min(after.endpoints))
    assert world.trace("node-1", client_ip, "198.19.1.4", 80).endpoints == {min(after.endpoints)}
    # affinity turned off: the same client spreads again at once (its entry no longer steers)
    other = sources[1]
    world.apply("aff", [p.svc("aff", "198.19.1.4"), p.slice_of("aff", WEB)])
    assert len(landed(world.trace("node-1", other, "198.19.1.4", 80), PODS)) >= 2
    world.apply("aff", [p.svc("aff", "198.19.1.4", **spec), p.slice_of("aff", WEB)])
    world.advance(10)  # what came before has expired
    world.tracers["node-1"].connect(Packet(client_ip, "198.19.1.4", "tcp", 80), endpoint=(WEB[1].ip, 8080))
    # the timeout passes: the entry expires
    entries = world.tracers["node-1"].dynamic["affinity-v4"]
    assert entries[f"{client_ip} . 198.19.1.4 . tcp . 80"][1] == world.tracers["node-1"].now + 3
    assert world.trace("node-1", client_ip, "198.19.1.4", 80).endpoints == {(WEB[1].ip, 8080)}
    world.advance(3.5)
    assert len(world.trace("node-1", client_ip, "198.19.1.4", 80).endpoints) == 3


def test_twin_session_affinity_on_every_frontend() -> None:
    """Mirrors test_policies.py::test_session_affinity_on_every_frontend."""
    p, world = _policies(), cluster()
    world.apply("sticky", [
        p.svc("sticky", "198.19.1.11", type="LoadBalancer", node_port=30080, externalIPs=["198.18.0.151"],
              status={"loadBalancer": {"ingress": [{"ip": "198.18.0.214"}]}}, **p.affinity(60)),
        p.slice_of("sticky", WEB),
    ])
    alt = "198.18.0.31"  # another address of node-1: NodePorts answer on every local address
    world.add_address("node-1", alt)
    sources = [f"198.18.0.{60 + i}" for i in range(12)]
    for address in ("198.19.1.11", "198.18.0.151", "198.18.0.214"):
        stick(world, "node-1", sources, [(address, 80)])
    # the same client on the same NodePort sticks, whichever local address it reached
    chosen = stick(world, "node-1", sources, [(N1.ip, 30080), (alt, 30080)])
    world.advance(2.5)
    kept = {s: landed(world.trace("node-1", s, alt, 30080), PODS).pop() for s in sources}
    assert kept == chosen


def test_twin_session_affinity_timeout_releases_clients() -> None:
    """Mirrors test_policies.py::test_session_affinity_timeout_releases_clients."""
    p, world = _policies(), cluster()
    world.apply("short", [p.svc("short", "198.19.1.12", type="NodePort", node_port=30081, **p.affinity(2)),
                          p.slice_of("short", WEB)])
    sources = [f"198.18.0.{60 + i}" for i in range(12)]
    for target in ((N1.ip, 30081), ("198.19.1.12", 80)):
        stick(world, "node-1", sources, [target])
        world.advance(2 + 1.5)
        for source in sources:
            assert len(world.trace("node-1", source, *target).endpoints) == 3, "balanced afresh"


def test_twin_load_balancer_source_ranges() -> None:
    """Mirrors test_policies.py::test_load_balancer_source_ranges."""
    p, world = _policies(), cluster()
    world.apply("fw", [
        p.svc("fw", "198.19.1.5", type="LoadBalancer", node_port=30105,
              status={"loadBalancer": {"ingress": [{"ip": "198.18.0.212"}]}},
              loadBalancerSourceRanges=[f" {OUTSIDE}/32 "]),
        p.slice_of("fw", [WEB[0]]),
    ])
    assert landed(world.trace("node-1", OUTSIDE, "198.18.0.212", 80), PODS) == {"web-1"}
    assert landed(world.trace("node-1", STRANGER, "198.18.0.212", 80), PODS) == {"error:timeout"}
    # as upstream: source ranges guard the LoadBalancer IP, not the NodePort
    assert landed(world.trace("node-1", STRANGER, N1.ip, 30105), PODS) == {"web-1"}


def test_twin_load_balancer_source_ranges_allow_the_services_own_lb_addresses() -> None:
    """Mirrors test_policies.py::test_load_balancer_source_ranges_allow_the_services_own_lb_addresses."""
    p, world = _policies(), cluster()
    lb1, lb2 = "198.18.0.215", "198.18.0.216"

    def fw_self(ranges: list[str]) -> list[dict[str, Any]]:
        return [p.svc("fw-self", "198.19.1.13", type="LoadBalancer", node_port=30106, loadBalancerSourceRanges=ranges,
                      status={"loadBalancer": {"ingress": [{"ip": lb1}, {"ip": lb2}]}}),
                p.slice_of("fw-self", [WEB[0]])]
    world.apply("fw-self", fw_self([f"{OUTSIDE}/32"]))
    assert landed(world.trace("node-1", STRANGER, lb1, 80), PODS) == {"error:timeout"}, "ranges still apply"
    # node-1 holds lb1 (a VIP bound on the node) and connects from it to it
    world.add_address("node-1", lb1)
    assert landed(world.trace("node-1", lb1, lb1, 80, hook="output"), PODS) == {"web-1"}
    # a LAN host sending from the Service's other LB address (as after SNAT to it)
    assert landed(world.trace("node-1", lb2, lb1, 80), PODS) == {"web-1"}
    # ranges that hold the LB addresses already: merged, not refused as overlapping
    world.apply("fw-self", fw_self([f"{OUTSIDE}/32", "198.18.0.208/29", "198.18.0.212/30"]))
    assert landed(world.trace("node-1", lb2, lb1, 80), PODS) == {"web-1"}
    assert landed(world.trace("node-1", STRANGER, lb1, 80), PODS) == {"error:timeout"}
    assert landed(world.trace("node-1", OUTSIDE, lb1, 80), PODS) == {"web-1"}


def test_twin_terminating_endpoints_and_publish_not_ready() -> None:
    """Mirrors test_policies.py::test_terminating_endpoints_and_publish_not_ready."""
    p, world = _policies(), cluster()
    terminating = {"ready": False, "serving": True, "terminating": True}
    world.apply("term", [p.svc("term", "198.19.1.6"), p.slice_of("term", [WEB[1]], conditions=terminating)])
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.1.6", 80), PODS) == {"web-2"}, \
        "no ready endpoint: serving terminating ones keep the Service up"
    world.apply("term", [p.svc("term", "198.19.1.6"),
                         p.slice_of("term", [WEB[1]], name="term-old", conditions=terminating),
                         p.slice_of("term", [WEB[0]], name="term-new")])
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.1.6", 80), PODS) == {"web-1"}
    not_ready = {"ready": False, "serving": False, "terminating": False}
    world.apply("term", [p.svc("term", "198.19.1.6"), p.slice_of("term", [WEB[2]], conditions=not_ready)])
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.1.6", 80), PODS) == {"error:refused"}
    world.apply("term", [p.svc("term", "198.19.1.6", publishNotReadyAddresses=True),
                         p.slice_of("term", [WEB[2]], conditions=not_ready)])
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.1.6", 80), PODS) == {"web-3"}


def test_twin_topology_hints_prefer_close() -> None:
    """Mirrors test_policies.py::test_topology_hints_prefer_close."""
    p, world = _policies(), cluster()
    nodes = [{"apiVersion": "v1", "kind": "Node",
              "metadata": {"name": n.name, "labels": {"topology.kubernetes.io/zone": z}}}
             for n, z in ((N1, "zone-a"), (N2, "zone-b"))]
    hints = {"web-1": {"zone": "zone-a", "hints": {"forZones": [{"name": "zone-a"}]}},
             "web-3": {"zone": "zone-a", "hints": {"forZones": [{"name": "zone-a"}]}},
             "web-2": {"zone": "zone-b", "hints": {"forZones": [{"name": "zone-b"}]}}}
    world.apply("topo", [*nodes, p.svc("topo", "198.19.1.7", trafficDistribution="PreferClose"),
                         p.slice_of("topo", WEB, per_endpoint=hints)])
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.1.7", 80), PODS) == {"web-1", "web-3"}
    partial = dict(hints)
    partial["web-2"] = {"zone": "zone-b"}  # one endpoint without hints: hints are ignored, as upstream
    world.apply("topo", [*nodes, p.svc("topo", "198.19.1.7", trafficDistribution="PreferClose"),
                         p.slice_of("topo", WEB, per_endpoint=partial)])
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.1.7", 80), PODS) == {"web-1", "web-2", "web-3"}


def test_twin_stale_udp_flows_move_to_a_live_endpoint() -> None:
    """Mirrors the rule part of test_policies.py::test_stale_udp_flows_move_to_a_live_endpoint: a new
    flow goes to the new endpoint. That the old flow moves is conntrack's (deleting its entry): not here."""
    p, world = _policies(), cluster()
    world.apply("dns", [p.svc("dns", "198.19.1.8", protocol="UDP", port=53),
                        p.slice_of("dns", [WEB[0]], protocol="UDP")])
    t = world.trace("node-1", CLIENT.ip, "198.19.1.8", 53, "udp")
    assert landed(t, PODS) == {"web-1"} and t.endpoints == {(WEB[0].ip, 5353)}
    world.apply("dns", [p.svc("dns", "198.19.1.8", protocol="UDP", port=53),
                        p.slice_of("dns", [WEB[1]], protocol="UDP")])
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.1.8", 53, "udp"), PODS) == {"web-2"}


def test_twin_weighted_endpoints() -> None:
    """Mirrors test_policies.py::test_weighted_endpoints: the kernel test measures 75/25 within 4
    points over 4000 connections; the rules give exactly 3/4 and 1/4 of the numgen slots."""
    p, world = _policies(), cluster()
    weights = json.dumps({WEB[0].ip: 3, "web-2": 1})
    world.apply("weighted", [p.svc("weighted", "198.19.1.9", annotations={"nftproxy.io/endpoint-weights": weights}),
                             p.slice_of("weighted", [WEB[0], WEB[1]])])
    t = world.trace("node-1", CLIENT.ip, "198.19.1.9", 80)
    assert t.shares == {(WEB[0].ip, 8080): Fraction(3, 4), (WEB[1].ip, 8080): Fraction(1, 4)}, t


def test_twin_sctp_service() -> None:
    """Mirrors test_policies.py::test_sctp_service (which this kernel may skip: no SCTP sockets)."""
    p, world = _policies(), cluster()
    sctp_pod = PodStub("sctp-1", N2, "198.18.130.3", "2001:db8:1:2::3")
    world.apply("sctp", [service("sctp", "198.19.1.10", [{"name": "s", "port": 99, "protocol": "SCTP"}]),
                         {**p.slice_of("sctp", [sctp_pod]),
                          "ports": [{"name": "s", "port": 9999, "protocol": "SCTP"}]}])
    t = world.trace("node-1", CLIENT.ip, "198.19.1.10", 99, "sctp")
    assert landed(t, PODS) == {"sctp-1"} and t.endpoints == {("198.18.130.3", 9999)}


# tests/test_dataplane.py

def test_twin_cluster_ip_from_a_pod_keeps_the_pod_source() -> None:
    """Mirrors test_dataplane.py::test_cluster_ip_from_a_pod_keeps_the_pod_source."""
    world = cluster()
    world.apply("cip", _dataplane_web_service()("cip", "198.19.0.10", [WEB[1]]))
    t = world.trace("node-1", CLIENT.ip, "198.19.0.10", 80)
    assert landed(t, PODS) == {"web-2"} and not t.masquerade, t


def test_twin_cluster_ip_from_outside_the_cluster_cidr_is_masqueraded() -> None:
    """Mirrors test_dataplane.py::test_cluster_ip_from_outside_the_cluster_cidr_is_masqueraded."""
    world = cluster()
    world.apply("cip-out", _dataplane_web_service()("cip-out", "198.19.0.11", [WEB[0], WEB[1]]))
    t = world.trace("node-1", OUTSIDE, "198.19.0.11", 80)
    assert landed(t, PODS) == {"web-1", "web-2"} and t.masquerade, t


def test_twin_node_port_on_node_1_reaches_a_pod_on_node_2() -> None:
    """Mirrors test_dataplane.py::test_node_port_on_node_1_reaches_a_pod_on_node_2."""
    world = cluster()
    world.apply("np", _dataplane_web_service()("np", "198.19.0.12", [WEB[1]], type="NodePort",
                                                ports=[{"name": "http", "port": 80, "nodePort": 30080}]))
    t = world.trace("node-1", OUTSIDE, N1.ip, 30080)
    assert landed(t, PODS) == {"web-2"} and t.masquerade, "external traffic is masqueraded (eTP Cluster)"
    t = world.trace("node-2", N2.ip, N2.ip, 30080, hook="output")
    assert landed(t, PODS) == {"web-2"}, "a node reaches its own NodePort"


def test_twin_external_ip_and_load_balancer_ip() -> None:
    """Mirrors test_dataplane.py::test_external_ip_and_load_balancer_ip (routed to node-2)."""
    world = cluster()
    world.apply("ext", _dataplane_web_service()(
        "ext", "198.19.0.13", [WEB[0], WEB[1]], type="LoadBalancer", externalIPs=["198.18.0.150"],
        ports=[{"name": "http", "port": 80, "nodePort": 30081}],
        status={"loadBalancer": {"ingress": [{"ip": "198.18.0.200"}]}}))
    for address in ("198.18.0.150", "198.18.0.200"):
        t = world.trace("node-2", OUTSIDE, address, 80)
        assert landed(t, PODS) == {"web-1", "web-2"} and t.masquerade, t


def test_twin_no_endpoints_rejects_at_once_and_unknown_addresses() -> None:
    """Mirrors test_dataplane.py::test_no_endpoints_rejects_at_once_and_unknown_addresses."""
    world, web_service = cluster(), _dataplane_web_service()
    world.apply("none", web_service("none", "198.19.0.14", [], ports=[
        {"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]))
    world.apply("served", web_service("served", "198.19.0.15", [WEB[0]]))
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.0.14", 80), PODS) == {"error:refused"}
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.0.14", 53, "udp"), PODS) == {"error:refused"}
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.0.15", 81), PODS) == {"error:refused"}, \
        "an unserved port of a ClusterIP is rejected"
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.0.99", 80), PODS) == {"error:timeout"}, \
        "an unallocated service-CIDR address is dropped"
    world.apply("none", web_service("none", "198.19.0.14", [WEB[2]], ports=[{"name": "http", "port": 80}]))
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.0.14", 80), PODS) == {"web-3"}


def test_twin_connections_are_balanced_evenly() -> None:
    """Mirrors test_dataplane.py::test_connections_are_balanced_evenly: a third of the slots each."""
    world = cluster()
    world.apply("lb3", _dataplane_web_service()("lb3", "198.19.0.16", WEB))
    t = world.trace("node-1", CLIENT.ip, "198.19.0.16", 80)
    assert t.shares == {(w.ip, 8080): Fraction(1, 3) for w in WEB}, t


def test_twin_hairpin_a_pod_reaches_itself_through_its_service() -> None:
    """Mirrors test_dataplane.py::test_hairpin_a_pod_reaches_itself_through_its_service."""
    world = cluster()
    world.apply("hair", _dataplane_web_service()("hair", "198.19.0.17", [WEB[0]]))
    t = world.trace("node-1", WEB[0].ip, "198.19.0.17", 80)
    assert landed(t, PODS) == {"web-1"} and t.masquerade, "hairpin traffic is masqueraded"


def test_twin_tcp_and_udp_on_the_same_port_go_to_their_own_endpoints() -> None:
    """Mirrors test_dataplane.py::test_tcp_and_udp_on_the_same_port_go_to_their_own_endpoints."""
    world = cluster()
    world.apply("dns", [
        service("dns", "198.19.0.18", [{"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                                       {"name": "dns-udp", "port": 53, "protocol": "UDP"}]),
        endpoint_slice("dns", [WEB[0].ip], name="dns-tcp",
                       ports=[{"name": "dns-tcp", "port": 8080, "protocol": "TCP"}]),
        endpoint_slice("dns", [WEB[1].ip], name="dns-udp",
                       ports=[{"name": "dns-udp", "port": 5353, "protocol": "UDP"}]),
    ])
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.0.18", 53), PODS) == {"web-1"}
    udp = world.trace("node-1", CLIENT.ip, "198.19.0.18", 53, "udp")
    assert landed(udp, PODS) == {"web-2"} and not udp.masquerade


def test_twin_endpoint_changes_move_traffic_incrementally() -> None:
    """Mirrors the packet part of test_dataplane.py::test_endpoint_changes_move_traffic_incrementally
    (that later syncs are diffs is the agent's log, not a rule)."""
    world, web_service = cluster(), _dataplane_web_service()
    world.apply("move", web_service("move", "198.19.0.19", [WEB[0]]))
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.0.19", 80), PODS) == {"web-1"}
    world.apply("move", web_service("move", "198.19.0.19", [WEB[1], WEB[2]]))
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.0.19", 80), PODS) == {"web-2", "web-3"}
    world.delete("move")
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.0.19", 80), PODS) == {"error:timeout"}


# test_dataplane.py::test_established_connection_survives_a_full_rebuild has no twin: conntrack and
# the agent's restart, not a rule, keep that connection.


def test_twin_nodeport_addresses_restrict_where_node_ports_answer() -> None:
    """Mirrors test_dataplane.py::test_nodeport_addresses_restrict_where_node_ports_answer (one node,
    --nodeport-addresses the LAN)."""
    world = World({"node-1": [N1.ip, N1.pod_gateway]}, {**TWIN_CONFIG, "nodeport_cidrs": ("198.18.0.0/24",)})
    world.apply("np", _dataplane_web_service()("np", "198.19.0.30", [WEB[0]], type="NodePort",
                                                ports=[{"name": "http", "port": 80, "nodePort": 30111}]))
    assert landed(world.trace("node-1", CLIENT.ip, N1.ip, 30111), PODS) == {"web-1"}, "LAN address: accepted"
    refused = world.trace("node-1", CLIENT.ip, N1.pod_gateway, 30111)
    assert "web-1" not in landed(refused, PODS), f"the pod-side address is outside --nodeport-addresses: {refused}"


# tests/test_dualstack.py

def test_twin_dual_stack_service_over_ipv4_and_ipv6() -> None:
    """Mirrors test_dualstack.py::test_dual_stack_service_over_ipv4_and_ipv6."""
    world = cluster()
    ds = service("ds", ["198.19.0.10", "2001:db8:2::10"], [{"name": "http", "port": 80, "nodePort": 30090}],
                 type="LoadBalancer", ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack",
                 externalIPs=["2001:db8::96"], status={"loadBalancer": {"ingress": [{"ip": "2001:db8::c8"}]}})
    v4_slice = endpoint_slice("ds", [w.ip for w in WEB[:2]], name="ds-v4")
    world.apply("ds", [ds, v4_slice, endpoint_slice("ds", [w.ip6 for w in WEB[:2]], name="ds-v6", address_type="IPv6")])
    v6 = world.trace("node-1", CLIENT.ip6, "2001:db8:2::10", 80)
    assert landed(v6, PODS6) == {"web-1", "web-2"} and not v6.masquerade, "pod-to-ClusterIP over IPv6 keeps the source"
    v4 = world.trace("node-1", CLIENT.ip, "198.19.0.10", 80)
    assert landed(v4, PODS) <= {"web-1", "web-2"} and not v4.masquerade
    nodeport = world.trace("node-1", OUTSIDE6, N1.ip6, 30090)
    assert landed(nodeport, PODS6) == {"web-1", "web-2"} and nodeport.masquerade
    for address in ("2001:db8::96", "2001:db8::c8"):
        t = world.trace("node-2", OUTSIDE6, address, 80)
        assert landed(t, PODS6) == {"web-1", "web-2"} and t.masquerade, address
    # no endpoints over IPv6: rejected at once
    world.apply("ds", [service("ds", ["198.19.0.10", "2001:db8:2::10"],
                               [{"name": "http", "port": 80, "nodePort": 30090}],
                               type="NodePort", ipFamilies=["IPv4", "IPv6"]), v4_slice])
    assert landed(world.trace("node-1", CLIENT.ip6, "2001:db8:2::10", 80), PODS6) == {"error:refused"}
    assert landed(world.trace("node-1", CLIENT.ip, "198.19.0.10", 80), PODS) <= {"web-1", "web-2"}


def test_twin_session_affinity_over_ipv6_on_every_frontend() -> None:
    """Mirrors test_dualstack.py::test_session_affinity_over_ipv6_on_every_frontend (IPv6 keys are
    jhash values: the tracer treats them as opaque, equal for equal inputs)."""
    p, world = _policies(), cluster()
    world.apply("sticky6", [
        service("sticky6", ["2001:db8:2::20"], [{"name": "http", "port": 80, "nodePort": 30091}], type="LoadBalancer",
                ipFamilies=["IPv6"], externalIPs=["2001:db8::97"],
                status={"loadBalancer": {"ingress": [{"ip": "2001:db8::c9"}]}}, **p.affinity(60)),
        endpoint_slice("sticky6", [w.ip6 for w in WEB], address_type="IPv6"),
        service("short6", ["2001:db8:2::21"], [{"name": "http", "port": 80, "nodePort": 30092}], type="NodePort",
                ipFamilies=["IPv6"], **p.affinity(2)),
        endpoint_slice("short6", [w.ip6 for w in WEB], address_type="IPv6"),
    ])
    alt = "2001:db8::31"
    world.add_address("node-1", alt)
    sources = [f"2001:db8::{0x60 + i:x}" for i in range(12)]
    for address in ("2001:db8:2::20", "2001:db8::97", "2001:db8::c9"):
        stick(world, "node-1", sources, [(address, 80)], PODS6)
    chosen = stick(world, "node-1", sources, [(N1.ip6, 30091), (alt, 30091)], PODS6)
    world.advance(2.5)
    assert {s: landed(world.trace("node-1", s, alt, 30091), PODS6).pop() for s in sources} == chosen
    stick(world, "node-1", sources, [(N1.ip6, 30092)], PODS6)
    world.advance(2 + 1.5)
    assert all(len(world.trace("node-1", s, N1.ip6, 30092).endpoints) == 3 for s in sources), "released"
