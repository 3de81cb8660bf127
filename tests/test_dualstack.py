"""Dual-stack: IPv6 ClusterIP, NodePort, externalIP and LB IP next to IPv4, with real IPv6 packets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from e2e.agent import AgentCluster
from e2e.netns import NamespaceCluster, require_root_and_netns
from e2e.netns.cluster import cleanup_stale
from e2e.objects import endpoint_slice, service
from tests.test_dataplane import World  # web-1 (node-1), web-2 (node-2), web-3 (node-1)
from tests.test_policies import add_addresses, affinity, assert_kept, assert_released, sticky_endpoints

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_root_and_netns()
    cleanup_stale()
    with NamespaceCluster(nodes=2, dual_stack=True) as cluster:
        n1, n2 = cluster.nodes
        web = [cluster.add_pod(n1, "web-1"), cluster.add_pod(n2, "web-2"), cluster.add_pod(n1, "web-3")]
        client = cluster.add_pod(n1, "client", tcp=(), udp=())
        outside = cluster.add_client("outside")
        agents = AgentCluster(cluster).start()
        try:
            yield World(cluster, agents, web, client, outside)
        finally:
            agents.stop()


def landed(results: list) -> Counter:
    return Counter(r.pod if r.ok else f"error:{r.error}" for r in results)


def test_dual_stack_service_over_ipv4_and_ipv6(world: World) -> None:
    cluster, agents, client, outside = world.cluster, world.agents, world.pod_client, world.outside
    n1, n2 = cluster.nodes
    web = world.web[:2]
    agents.apply("ds", [
        service("ds", ["198.19.0.10", "2001:db8:2::10"], [{"name": "http", "port": 80, "nodePort": 30090}],
                type="LoadBalancer", ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack",
                externalIPs=["2001:db8::96"], status={"loadBalancer": {"ingress": [{"ip": "2001:db8::c8"}]}}),
        endpoint_slice("ds", [p.ip for p in web], name="ds-v4"),
        endpoint_slice("ds", [p.ip6 for p in web], name="ds-v6", address_type="IPv6"),
    ])
    v6 = cluster.probe(client, "2001:db8:2::10", 80, count=30)
    assert set(landed(v6)) == {"web-1", "web-2"}
    assert {r.client for r in v6} == {client.ip6}, "pod-to-ClusterIP over IPv6 keeps the pod's source"
    v4 = cluster.probe(client, "198.19.0.10", 80, count=10)
    assert set(landed(v4)) <= {"web-1", "web-2"} and {r.client for r in v4} == {client.ip}

    nodeport = cluster.probe(outside, n1.ip6, 30090, count=30)
    assert set(landed(nodeport)) == {"web-1", "web-2"}
    seen = {r.client for r in nodeport}
    assert outside.ip6 not in seen and seen <= {n1.ip6, n1.pod_gateway6, "fe80::1"} | {n1.ip6}, seen

    for address in ("2001:db8::96", "2001:db8::c8"):
        cluster.add_route(outside, f"{address}/128", n2.ip6)
        results = cluster.probe(outside, address, 80, count=20)
        assert set(landed(results)) == {"web-1", "web-2"}, address
        assert outside.ip6 not in {r.client for r in results}

    # no endpoints over IPv6: rejected at once
    agents.apply("ds", [
        service("ds", ["198.19.0.10", "2001:db8:2::10"], [{"name": "http", "port": 80, "nodePort": 30090}],
                type="NodePort", ipFamilies=["IPv4", "IPv6"]),
        endpoint_slice("ds", [p.ip for p in web], name="ds-v4"),
    ])
    assert landed(cluster.probe(client, "2001:db8:2::10", 80, count=2, timeout=3.0)) == {"error:refused": 2}
    assert set(landed(cluster.probe(client, "198.19.0.10", 80, count=10))) <= {"web-1", "web-2"}
    agents.delete("ds")


def test_session_affinity_over_ipv6_on_every_frontend(world: World) -> None:
    """IPv6 ClusterIP, externalIP, LB IP and NodePort (two addresses of the node) are sticky; the
    timeout releases clients."""
    cluster, outside = world.cluster, world.outside
    n1 = cluster.nodes[0]
    world.agents.apply("sticky6", [
        service("sticky6", ["2001:db8:2::20"], [{"name": "http", "port": 80, "nodePort": 30091}], type="LoadBalancer",
                ipFamilies=["IPv6"], externalIPs=["2001:db8::97"],
                status={"loadBalancer": {"ingress": [{"ip": "2001:db8::c9"}]}}, **affinity(60)),
        endpoint_slice("sticky6", [p.ip6 for p in world.web], address_type="IPv6"),
        service("short6", ["2001:db8:2::21"], [{"name": "http", "port": 80, "nodePort": 30092}], type="NodePort",
                ipFamilies=["IPv6"], **affinity(2)),
        endpoint_slice("short6", [p.ip6 for p in world.web], address_type="IPv6"),
    ])
    frontends = ("2001:db8:2::20", "2001:db8::97", "2001:db8::c9")
    for address in frontends:
        cluster.add_route(outside, f"{address}/128", n1.ip6)
    alt = "2001:db8::31"  # another address of node-1: NodePorts answer on every local address
    add_addresses(cluster, n1, n1.lan_ifname, [alt])
    sources = [f"2001:db8::{0x60 + i:x}" for i in range(12)]
    add_addresses(cluster, outside, outside.lan_ifname, sources)
    for address in frontends:
        sticky_endpoints(cluster, outside, sources, [(address, 80)])
    chosen = sticky_endpoints(cluster, outside, sources, [(n1.ip6, 30091), (alt, 30091)])
    assert_kept(cluster, outside, chosen, alt, 30091)
    assert_released(cluster, outside, sources, [(n1.ip6, 30092)], 2)
    world.agents.delete("sticky6")
