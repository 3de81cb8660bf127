"""Dual-stack: IPv6 ClusterIP, NodePort, externalIP and LB IP next to IPv4, with real IPv6 packets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from e2e.agent import AgentCluster
from e2e.netns import NamespaceCluster, require_root_and_netns
from e2e.netns.cluster import cleanup_stale
from e2e.objects import endpoint_slice, service

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def cluster() -> Iterator[NamespaceCluster]:
    require_root_and_netns()
    cleanup_stale()
    with NamespaceCluster(nodes=2, dual_stack=True) as c:
        yield c


def landed(results: list) -> Counter:
    return Counter(r.pod if r.ok else f"error:{r.error}" for r in results)


def test_dual_stack_service_over_ipv4_and_ipv6(cluster: NamespaceCluster) -> None:
    n1, n2 = cluster.nodes
    web = [cluster.add_pod(n1, "web-1"), cluster.add_pod(n2, "web-2")]
    client = cluster.add_pod(n1, "client", tcp=(), udp=())
    outside = cluster.add_client("outside")
    agents = AgentCluster(cluster).start()
    try:
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
    finally:
        agents.stop()
