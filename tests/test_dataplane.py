"""Real packets through nftproxy's rules in a two-node namespace cluster.

Every test states where a connection must land and which source address the endpoint must see.
One cluster and one agent per node are shared by the module; each test uses its own Services.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from e2e.agent import AgentCluster
from e2e.netns import NamespaceCluster, Pod, require_root_and_netns
from e2e.netns.cluster import Client, cleanup_stale
from e2e.objects import endpoint_slice, service

pytestmark = pytest.mark.kernel


@dataclass
class World:
    cluster: NamespaceCluster
    agents: AgentCluster
    web: list[Pod]  # web-1 (node-1), web-2 (node-2), web-3 (node-1)
    pod_client: Pod  # a pod on node-1 that only acts as a client
    outside: Client

    def node_ips(self, index: int) -> set[str]:
        node = self.cluster.nodes[index]
        return {node.ip, node.pod_gateway}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_root_and_netns()
    cleanup_stale()
    cluster = NamespaceCluster(nodes=2)
    agents: AgentCluster | None = None
    try:
        n1, n2 = cluster.nodes
        web = [cluster.add_pod(n1, "web-1"), cluster.add_pod(n2, "web-2"), cluster.add_pod(n1, "web-3")]
        pod_client = cluster.add_pod(n1, "client-pod", tcp=(), udp=())
        outside = cluster.add_client("outside")
        agents = AgentCluster(cluster).start()
        yield World(cluster, agents, web, pod_client, outside)
    finally:
        if agents is not None:
            agents.stop()
        cluster.close()


def web_service(name: str, ip: str, pods: list[Pod], **spec: Any) -> list[dict[str, Any]]:
    ports = spec.pop("ports", [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}])
    objs = [service(name, ip, ports, **spec)]
    if pods:
        objs.append(endpoint_slice(name, [p.ip for p in pods],
                                   ports=[{"name": p["name"],
                                           "port": 8080 if p.get("protocol", "TCP") == "TCP" else 5353,
                                           "protocol": p.get("protocol", "TCP")} for p in ports]))
    return objs


def landed(results: list) -> Counter:
    return Counter(r.pod if r.ok else f"error:{r.error}" for r in results)


def test_cluster_ip_from_a_pod_keeps_the_pod_source(world: World) -> None:
    world.agents.apply("cip", web_service("cip", "198.19.0.10", [world.web[1]]))
    results = world.cluster.probe(world.pod_client, "198.19.0.10", 80, count=5)
    assert landed(results) == {"web-2": 5}, "crosses to the endpoint on node-2"
    assert {r.client for r in results} == {world.pod_client.ip}, "pod-to-Service traffic is not masqueraded"
    world.agents.delete("cip")


def test_cluster_ip_from_outside_the_cluster_cidr_is_masqueraded(world: World) -> None:
    world.agents.apply("cip-out", web_service("cip-out", "198.19.0.11", [world.web[0], world.web[1]]))
    world.cluster.add_route(world.outside, "198.19.0.11/32", world.cluster.nodes[0].ip)
    results = world.cluster.probe(world.outside, "198.19.0.11", 80, count=40)
    assert set(landed(results)) == {"web-1", "web-2"}
    seen = {r.client for r in results}
    assert world.outside.ip not in seen and seen <= world.node_ips(0), f"masqueraded to node-1, saw {seen}"
    world.agents.delete("cip-out")


def test_node_port_on_node_1_reaches_a_pod_on_node_2(world: World) -> None:
    world.agents.apply("np", web_service("np", "198.19.0.12", [world.web[1]], type="NodePort",
                                         ports=[{"name": "http", "port": 80, "nodePort": 30080}]))
    results = world.cluster.probe(world.outside, world.cluster.nodes[0].ip, 30080, count=5)
    assert landed(results) == {"web-2": 5}
    assert {r.client for r in results} == {world.cluster.nodes[0].ip}, "external traffic is masqueraded (eTP Cluster)"
    from_node = world.cluster.probe(world.cluster.nodes[1], world.cluster.nodes[1].ip, 30080, count=3)
    assert landed(from_node) == {"web-2": 3}, "a node reaches its own NodePort"
    world.agents.delete("np")


def test_external_ip_and_load_balancer_ip(world: World) -> None:
    world.agents.apply("ext", web_service(
        "ext", "198.19.0.13", [world.web[0], world.web[1]], type="LoadBalancer",
        externalIPs=["198.18.0.150"], ports=[{"name": "http", "port": 80, "nodePort": 30081}],
        status={"loadBalancer": {"ingress": [{"ip": "198.18.0.200"}]}},
    ))
    for address in ("198.18.0.150", "198.18.0.200"):
        world.cluster.add_route(world.outside, f"{address}/32", world.cluster.nodes[1].ip)
        results = world.cluster.probe(world.outside, address, 80, count=30)
        assert set(landed(results)) == {"web-1", "web-2"}, address
        seen = {r.client for r in results}
        assert world.outside.ip not in seen and seen <= world.node_ips(1), f"{address}: saw {seen}"
    world.agents.delete("ext")


def test_no_endpoints_rejects_at_once_and_unknown_addresses(world: World) -> None:
    world.agents.apply("none", web_service("none", "198.19.0.14", [], ports=[
        {"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]))
    world.agents.apply("served", web_service("served", "198.19.0.15", [world.web[0]]))
    tcp = world.cluster.probe(world.pod_client, "198.19.0.14", 80, count=3, timeout=3.0)
    udp = world.cluster.probe(world.pod_client, "198.19.0.14", 53, proto="udp", count=3, timeout=3.0)
    assert landed(tcp) == {"error:refused": 3} and landed(udp) == {"error:refused": 3}
    wrong_port = world.cluster.probe(world.pod_client, "198.19.0.15", 81, count=2, timeout=3.0)
    assert landed(wrong_port) == {"error:refused": 2}, "an unserved port of a ClusterIP is rejected"
    unallocated = world.cluster.probe(world.pod_client, "198.19.0.99", 80, count=1, timeout=1.0)
    assert landed(unallocated) == {"error:timeout": 1}, "an unallocated service-CIDR address is dropped"
    world.agents.apply("none", web_service("none", "198.19.0.14", [world.web[2]], ports=[{"name": "http", "port": 80}]))
    assert landed(world.cluster.probe(world.pod_client, "198.19.0.14", 80, count=2)) == {"web-3": 2}
    world.agents.delete("none")
    world.agents.delete("served")


def test_connections_are_balanced_evenly(world: World) -> None:
    world.agents.apply("lb3", web_service("lb3", "198.19.0.16", world.web))
    results = world.cluster.probe(world.pod_client, "198.19.0.16", 80, count=3000, timeout=2.0)
    counts = landed(results)
    assert sum(counts.values()) == 3000 and set(counts) == {"web-1", "web-2", "web-3"}, counts
    for pod, n in counts.items():
        assert abs(n / 3000 - 1 / 3) <= 0.04, f"{pod} got {n / 30:.1f}% of 3000 connections: {counts}"
    world.agents.delete("lb3")


def test_hairpin_a_pod_reaches_itself_through_its_service(world: World) -> None:
    world.agents.apply("hair", web_service("hair", "198.19.0.17", [world.web[0]]))
    results = world.cluster.probe(world.web[0], "198.19.0.17", 80, count=3)
    assert landed(results) == {"web-1": 3}
    assert {r.client for r in results} == {world.cluster.nodes[0].pod_gateway}, "hairpin traffic is masqueraded"
    world.agents.delete("hair")


def test_tcp_and_udp_on_the_same_port_go_to_their_own_endpoints(world: World) -> None:
    objs = [
        service("dns", "198.19.0.18", [{"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                                       {"name": "dns-udp", "port": 53, "protocol": "UDP"}]),
        endpoint_slice("dns", [world.web[0].ip], name="dns-tcp",
                       ports=[{"name": "dns-tcp", "port": 8080, "protocol": "TCP"}]),
        endpoint_slice("dns", [world.web[1].ip], name="dns-udp",
                       ports=[{"name": "dns-udp", "port": 5353, "protocol": "UDP"}]),
    ]
    world.agents.apply("dns", objs)
    assert landed(world.cluster.probe(world.pod_client, "198.19.0.18", 53, proto="tcp", count=3)) == {"web-1": 3}
    udp = world.cluster.probe(world.pod_client, "198.19.0.18", 53, proto="udp", count=3)
    assert landed(udp) == {"web-2": 3} and {r.client for r in udp} == {world.pod_client.ip}
    world.agents.delete("dns")


def test_endpoint_changes_move_traffic_incrementally(world: World) -> None:
    world.agents.apply("move", web_service("move", "198.19.0.19", [world.web[0]]))
    assert landed(world.cluster.probe(world.pod_client, "198.19.0.19", 80, count=3)) == {"web-1": 3}
    world.agents.apply("move", web_service("move", "198.19.0.19", [world.web[1], world.web[2]]))
    assert set(landed(world.cluster.probe(world.pod_client, "198.19.0.19", 80, count=30))) == {"web-2", "web-3"}
    assert "diff" in world.agents.agents[0].log_text(), "later syncs are diffs, not rebuilds"
    world.agents.delete("move")
    assert landed(world.cluster.probe(world.pod_client, "198.19.0.19", 80, count=1)) == {"error:timeout": 1}


def test_established_connection_survives_a_full_rebuild(world: World) -> None:
    world.agents.apply("keep", web_service("keep", "198.19.0.20", [world.web[1]]))
    conn = world.cluster.open_connection(world.pod_client, "198.19.0.20", 80)
    try:
        assert conn.exchange().pod == "web-2"
        agent = world.agents.agents[0]  # node-1 carries the client's traffic
        agent.stop()  # SIGTERM: the agent exits and leaves its rules in place
        assert agent.process is not None and agent.process.returncode == 0
        assert landed(world.cluster.probe(world.pod_client, "198.19.0.20", 80, count=3)) == {"web-2": 3}, \
            "traffic keeps flowing while no agent runs (an upgrade)"
        agent.start()  # a new process: its first sync deletes and recreates the table
        assert "full rebuild" in agent.log_text().splitlines()[-1] or "full rebuild" in agent.log_text()
        after = conn.exchange()
        assert after.ok and after.pod == "web-2" and after.client == world.pod_client.ip
    finally:
        conn.close()
    world.agents.delete("keep")


def test_nodeport_addresses_restrict_where_node_ports_answer() -> None:
    """--nodeport-addresses: only local addresses inside the CIDRs accept NodePorts (here the LAN, not
    the node's pod-side gateway address)."""
    require_root_and_netns()
    with NamespaceCluster(nodes=1) as cluster:
        node = cluster.nodes[0]
        web = cluster.add_pod(node, "web-1")
        client = cluster.add_pod(node, "client", tcp=(), udp=())
        agents = AgentCluster(cluster, "--nodeport-addresses", cluster.lan_cidr).start()
        try:
            agents.apply("np", web_service("np", "198.19.0.30", [web], type="NodePort",
                                           ports=[{"name": "http", "port": 80, "nodePort": 30111}]))
            assert landed(cluster.probe(client, node.ip, 30111, count=3)) == {"web-1": 3}, "LAN address: accepted"
            refused = landed(cluster.probe(client, node.pod_gateway, 30111, count=2, timeout=2.0))
            assert "web-1" not in refused, f"the pod-side address is outside --nodeport-addresses: {refused}"
        finally:
            agents.stop()
