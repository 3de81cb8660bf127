"""`nftproxy explain` against where real packets go.

Two nodes (dual-stack): web-1 and web-3 on node-1, web-2 on node-2, a client pod on node-1, outside
clients on the LAN. For each Service kind and policy, explain is asked on the node the traffic enters,
then connections are made: they must land only on the endpoints explain names (all of them, given
enough tries), be refused or time out when it says reject or drop, and keep or lose their source
address as it says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from e2e.agent import AgentCluster
from e2e.netns import NamespaceCluster, Pod, require_root_and_netns
from e2e.netns.cluster import REPO_ROOT, Client, Node, _python_env, cleanup_stale
from e2e.objects import service

pytestmark = pytest.mark.kernel


@dataclass
class World:
    cluster: NamespaceCluster
    agents: AgentCluster
    web: list[Pod]
    pod_client: Pod
    outside: Client
    stranger: Client

    @property
    def n1(self) -> Node:
        return self.cluster.nodes[0]

    @property
    def n2(self) -> Node:
        return self.cluster.nodes[1]

    def pod_of(self, address: str) -> str:
        return next(p.name for p in self.web if address in (p.ip, p.ip6))


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_root_and_netns()
    cleanup_stale()
    cluster = NamespaceCluster(nodes=2, dual_stack=True)
    agents: AgentCluster | None = None
    try:
        n1, n2 = cluster.nodes
        web = [cluster.add_pod(n1, "web-1"), cluster.add_pod(n2, "web-2"), cluster.add_pod(n1, "web-3")]
        pod_client = cluster.add_pod(n1, "client-pod", tcp=(), udp=())
        outside, stranger = cluster.add_client("outside"), cluster.add_client("stranger")
        agents = AgentCluster(cluster).start()
        yield World(cluster, agents, web, pod_client, outside, stranger)
    finally:
        if agents is not None:
            agents.stop()
        cluster.close()


def endpoints_slice(name: str, pods: list[Pod], family: int = 4, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-v{family}", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": f"IPv{family}", "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [p.ip if family == 4 else p.ip6], "nodeName": p.node.name,
                           "targetRef": {"kind": "Pod", "name": p.name, "namespace": "default"},
                           "conditions": {"ready": True, "serving": True, "terminating": False}} for p in pods],
            **extra}


def svc(name: str, ip: str | list[str], node_port: int | None = None, **spec: Any) -> dict[str, Any]:
    port: dict[str, Any] = {"name": "p", "port": 80, "protocol": "TCP"}
    if node_port:
        port["nodePort"] = node_port
    return service(name, ip, [port], **spec)


def explain(node: Node, dest: str, source: str | None = None, proto: str = "tcp") -> dict[str, Any]:
    argv = ["ip", "netns", "exec", node.netns, sys.executable, "-m", "nftproxy", "explain", dest, "--json",
            "--proto", proto]
    if source:
        argv += ["--from", source]
    proc = subprocess.run(argv, capture_output=True, text=True, env=_python_env(), cwd=REPO_ROOT, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def agrees(world: World, answer: dict[str, Any], client: Any, ip: str, port: int, source: str,
           count: int = 30, bind: str | None = None, proto: str = "tcp") -> Counter[str]:
    """Send `count` connections and check them against explain's (single) outcome; returns where they went."""
    [outcome] = answer["outcomes"]
    timeout = 1.0 if outcome["verdict"] == "drop" else 3.0
    results = world.cluster.probe(client, ip, port, proto, count=count if outcome["verdict"] == "dnat" else 1,
                                  timeout=timeout, bind=bind)
    got = Counter(str(r.pod) if r.ok else f"error:{r.error}" for r in results)
    if outcome["verdict"] == "dnat":
        named = {world.pod_of(c["address"]) for c in outcome["endpoints"] if c["probability"] > 0}
        assert set(got) == named, f"explain said {named}, packets went to {dict(got)}"
        kept = {r.client for r in results} == {source}
        assert kept != outcome["masquerade"], f"explain: masquerade={outcome['masquerade']}, endpoints saw " \
                                              f"{ {r.client for r in results} } for source {source}"
    elif outcome["verdict"] == "reject":
        assert got == {"error:refused": 1}, got
    elif outcome["verdict"] == "drop":
        assert got == {"error:timeout": 1}, got
    else:
        pytest.fail(f"unexpected verdict {outcome}")
    return got


def test_cluster_ip_from_a_pod_and_from_outside(world: World) -> None:
    world.agents.apply("cip", [svc("cip", "198.19.2.1"), endpoints_slice("cip", world.web)])
    pod = world.pod_client
    answer = explain(world.n1, "198.19.2.1:80", pod.ip)
    assert answer["service"] == "default/cip:p" and answer["path"] == "ClusterIP"
    assert [c["probability"] for c in answer["outcomes"][0]["endpoints"]] == pytest.approx([1 / 3] * 3, abs=1e-3)
    assert not answer["outcomes"][0]["masquerade"]
    agrees(world, answer, pod, "198.19.2.1", 80, pod.ip)
    world.cluster.add_route(world.outside, "198.19.2.1/32", world.n1.ip)
    answer = explain(world.n1, "198.19.2.1:80", world.outside.ip)
    assert answer["outcomes"][0]["masquerade"], "from outside the cluster CIDR"
    agrees(world, answer, world.outside, "198.19.2.1", 80, world.outside.ip)
    # without --from: each kind of source that is treated differently
    sources = [o["source"] for o in explain(world.n1, "198.19.2.1:80")["outcomes"]]
    assert sources == [f"pods ({world.cluster.cluster_cidr})", "this node, other hosts"]


def test_node_port_and_external_traffic_policy_local(world: World) -> None:
    status = {"loadBalancer": {"ingress": [{"ip": "198.18.0.220"}]}}
    world.agents.apply("etp", [
        svc("etp", "198.19.2.2", node_port=30200, type="LoadBalancer", externalTrafficPolicy="Local",
            healthCheckNodePort=32200, status=status),
        svc("npc", "198.19.2.3", node_port=30201, type="NodePort"),
        endpoints_slice("etp", world.web[:2]), endpoints_slice("npc", world.web[:2]),
    ])
    out = world.outside
    answer = explain(world.n1, f"{world.n1.ip}:30200", out.ip)
    assert answer["path"] == "NodePort" and answer["service"] == "default/etp:p"
    assert agrees(world, answer, out, world.n1.ip, 30200, out.ip) == {"web-1": 30}, "node-1's endpoint only"
    answer = explain(world.n2, f"{world.n2.ip}:30200", out.ip)
    assert agrees(world, answer, out, world.n2.ip, 30200, out.ip) == {"web-2": 30}
    # a pod reaching the LB address is short-circuited to every endpoint
    answer = explain(world.n1, "198.18.0.220:80", world.pod_client.ip)
    assert answer["path"] in ("LoadBalancer", "externalIP or LoadBalancer")
    agrees(world, answer, world.pod_client, "198.18.0.220", 80, world.pod_client.ip)
    # eTP Cluster NodePort: every endpoint, masqueraded
    answer = explain(world.n1, f"{world.n1.ip}:30201", out.ip)
    assert answer["outcomes"][0]["masquerade"]
    agrees(world, answer, out, world.n1.ip, 30201, out.ip)
    # no endpoint on node-1 any more: outside traffic to node-1 is dropped
    world.agents.apply("etp", [
        svc("etp", "198.19.2.2", node_port=30200, type="LoadBalancer", externalTrafficPolicy="Local",
            healthCheckNodePort=32200, status=status),
        endpoints_slice("etp", [world.web[1]]),
    ])
    answer = explain(world.n1, f"{world.n1.ip}:30200", out.ip)
    assert answer["outcomes"][0]["verdict"] == "drop"
    agrees(world, answer, out, world.n1.ip, 30200, out.ip)


def test_internal_traffic_policy_local(world: World) -> None:
    world.agents.apply("itp", [svc("itp", "198.19.2.4", internalTrafficPolicy="Local"),
                               endpoints_slice("itp", world.web)])
    answer = explain(world.n1, "198.19.2.4:80", world.pod_client.ip)
    assert agrees(world, answer, world.pod_client, "198.19.2.4", 80, world.pod_client.ip).keys() == {"web-1", "web-3"}


def test_load_balancer_source_ranges(world: World) -> None:
    world.agents.apply("fw", [
        svc("fw", "198.19.2.5", type="LoadBalancer", loadBalancerSourceRanges=[f"{world.outside.ip}/32"],
            status={"loadBalancer": {"ingress": [{"ip": "198.18.0.221"}]}}),
        endpoints_slice("fw", [world.web[0]]),
    ])
    for client in (world.outside, world.stranger):
        world.cluster.add_route(client, "198.18.0.221/32", world.n1.ip)
    answer = explain(world.n1, "198.18.0.221:80", world.outside.ip)
    assert answer["path"] == "LoadBalancer" and answer["outcomes"][0]["verdict"] == "dnat"
    agrees(world, answer, world.outside, "198.18.0.221", 80, world.outside.ip, count=3)
    answer = explain(world.n1, "198.18.0.221:80", world.stranger.ip)
    assert answer["outcomes"][0]["verdict"] == "drop"
    assert "loadBalancerSourceRanges" in answer["outcomes"][0]["notes"][0]
    agrees(world, answer, world.stranger, "198.18.0.221", 80, world.stranger.ip)


def test_nothing_to_send_to(world: World) -> None:
    """No endpoints: reject; an unserved port of a ClusterIP: reject; an unallocated Service address:
    drop; anything else: not ours."""
    world.agents.apply("none", [svc("none", "198.19.2.6"), svc("cip2", "198.19.2.7"),
                                endpoints_slice("cip2", [world.web[1]])])
    pod = world.pod_client
    answer = explain(world.n1, "198.19.2.6:80", pod.ip)
    assert answer["service"] == "default/none:p" and answer["outcomes"][0]["verdict"] == "reject"
    agrees(world, answer, pod, "198.19.2.6", 80, pod.ip)
    answer = explain(world.n1, "198.19.2.7:81", pod.ip)
    assert answer["service"] == "default/cip2" and answer["outcomes"][0]["verdict"] == "reject"
    agrees(world, answer, pod, "198.19.2.7", 81, pod.ip)
    answer = explain(world.n1, "198.19.250.250:80", pod.ip)
    assert answer["service"] is None and answer["outcomes"][0]["verdict"] == "drop"
    agrees(world, answer, pod, "198.19.250.250", 80, pod.ip)
    answer = explain(world.n1, f"{world.web[1].ip}:8080", pod.ip)
    assert answer["outcomes"][0]["verdict"] == "accept" and answer["service"] is None
    assert "not ours" in answer["outcomes"][0]["notes"][0]


def test_session_affinity_pins_the_source(world: World) -> None:
    spec: dict[str, Any] = {"sessionAffinity": "ClientIP",
                            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}
    world.agents.apply("aff", [svc("aff", "198.19.2.8", **spec), endpoints_slice("aff", world.web)])
    world.cluster.add_route(world.outside, "198.19.2.8/32", world.n1.ip)
    before = explain(world.n1, "198.19.2.8:80", world.outside.ip)
    assert len(before["outcomes"][0]["endpoints"]) == 3
    assert any("sessionAffinity ClientIP" in n and "60 s" in n for n in before["outcomes"][0]["notes"])
    first = world.cluster.probe(world.outside, "198.19.2.8", 80, count=1)[0]
    assert first.ok
    after = explain(world.n1, "198.19.2.8:80", world.outside.ip)
    [pinned] = after["outcomes"][0]["endpoints"]
    assert world.pod_of(pinned["address"]) == first.pod and pinned["probability"] == 1.0
    assert agrees(world, after, world.outside, "198.19.2.8", 80, world.outside.ip, count=10) == {first.pod: 10}


def test_weights_are_probabilities(world: World) -> None:
    weights = json.dumps({world.web[0].ip: 3, "web-2": 1})
    world.agents.apply("weighted", [
        svc("weighted", "198.19.2.9", annotations={"nftproxy.io/endpoint-weights": weights}),
        endpoints_slice("weighted", world.web[:2]),
    ])
    answer = explain(world.n1, "198.19.2.9:80", world.pod_client.ip)
    shares = {world.pod_of(c["address"]): (c["probability"], c["slots"]) for c in answer["outcomes"][0]["endpoints"]}
    assert shares == {"web-1": (0.75, 3), "web-2": (0.25, 1)}
    got = agrees(world, answer, world.pod_client, "198.19.2.9", 80, world.pod_client.ip, count=400)
    assert abs(got["web-1"] / 400 - 0.75) < 0.1, got


def test_ipv6_cluster_ip(world: World) -> None:
    ip6 = "2001:db8:2::2:10"
    world.agents.apply("v6", [svc("v6", [ip6], ipFamilies=["IPv6"]), endpoints_slice("v6", world.web, family=6)])
    pod = world.pod_client
    assert pod.ip6 is not None
    answer = explain(world.n1, f"[{ip6}]:80", pod.ip6)
    assert answer["destination"] == f"[{ip6}]:80" and answer["path"] == "ClusterIP"
    assert {c["address"] for c in answer["outcomes"][0]["endpoints"]} == {p.ip6 for p in world.web}
    agrees(world, answer, pod, ip6, 80, pod.ip6)


def test_external_ip_and_udp(world: World) -> None:
    world.agents.apply("ext", [
        svc("ext", "198.19.2.11", externalIPs=["198.18.0.230"]), endpoints_slice("ext", world.web[:2]),
        service("dns", "198.19.2.12", [{"name": "p", "port": 53, "protocol": "UDP"}]),
        {**endpoints_slice("dns", [world.web[1]]), "ports": [{"name": "p", "port": 5353, "protocol": "UDP"}]},
    ])
    world.cluster.add_route(world.outside, "198.18.0.230/32", world.n1.ip)
    answer = explain(world.n1, "198.18.0.230:80", world.outside.ip)
    assert answer["path"] == "externalIP or LoadBalancer" and answer["service"] == "default/ext:p"
    assert answer["outcomes"][0]["masquerade"], "externalTrafficPolicy Cluster: masqueraded"
    agrees(world, answer, world.outside, "198.18.0.230", 80, world.outside.ip)
    answer = explain(world.n1, "198.19.2.12:53", world.pod_client.ip, proto="udp")
    assert answer["protocol"] == "udp" and answer["service"] == "default/dns:p"
    assert agrees(world, answer, world.pod_client, "198.19.2.12", 53, world.pod_client.ip, count=5,
                  proto="udp") == {"web-2": 5}
    assert explain(world.n1, "198.19.2.12:53", world.pod_client.ip)["outcomes"][0]["verdict"] == "reject", \
        "TCP is not a port of this Service"


def test_ipv6_session_affinity_entry_is_found_by_its_hash(world: World) -> None:
    ip6 = "2001:db8:2::2:11"
    spec: dict[str, Any] = {"sessionAffinity": "ClientIP", "ipFamilies": ["IPv6"],
                            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}
    world.agents.apply("aff6", [svc("aff6", [ip6], **spec), endpoints_slice("aff6", world.web, family=6)])
    pod = world.pod_client
    assert pod.ip6 is not None
    first = world.cluster.probe(pod, ip6, 80, count=1)[0]
    assert first.ok
    answer = explain(world.n1, f"[{ip6}]:80", pod.ip6)
    [pinned] = answer["outcomes"][0]["endpoints"]
    assert world.pod_of(pinned["address"]) == first.pod and pinned["port"] == 8080, answer
    assert agrees(world, answer, pod, ip6, 80, pod.ip6, count=10) == {first.pod: 10}
