"""Bare-metal LoadBalancer end to end: MetalLB's objects through the API stand-in, addresses written to
Service status by the elected allocator, and exactly one node answering ARP/NDP for each address.

The client sits on the LAN with no route but the LAN prefix: it reaches a LoadBalancer address only
because a node answers ARP (or NDP) for it, so every successful connection below proves an
announcement, and the MAC the client learned names the node that made it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from e2e.lb import LBWorld, lb_world

pytestmark = pytest.mark.kernel

SEED = "198.18.0.200"


@pytest.fixture(scope="module")
def world() -> Iterator[LBWorld]:
    with lb_world() as w:
        w.pool("seed", f"{SEED}/32")
        w.l2("l2")
        yield w


def test_seed_pool_first_served_second_pending_then_handed_over(world: LBWorld) -> None:
    world.service("first", world.pods)
    assert world.wait_ingress("first") == [SEED]
    result = world.eventually_served(SEED)
    assert result.ok, f"the client reaches {SEED} through ARP: {result}"
    assert result.pod in {p.name for p in world.pods}
    answering = world.who_answers(SEED)
    assert len(answering) == 1, f"exactly one node answers ARP for {SEED}: {answering}"
    assert answering[0] in {n.name for n in world.cluster.nodes}
    assert world.learned(SEED) == answering[0]
    assert ("Normal", "nodeAssigned", f'announcing from node "{answering[0]}" with protocol "layer2"') in \
        world.wait_event("first", "nodeAssigned")

    world.service("second", world.pods[:1])
    refused = world.wait_event("second", "AllocationFailed")
    assert refused and "no free IPv4 address in pool 'seed'" in refused[0][2], refused
    assert world.ingress("second") == []

    world.delete_service("first")
    assert world.wait_ingress("second") == [SEED], "the freed address goes to the pending Service"
    deadline = time.monotonic() + 10
    while (result := world.probe(SEED, timeout=0.5)[0]).pod != "web-1" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert result.ok and result.pod == "web-1", result
    world.delete_service("second")


def test_requested_address_outside_every_pool_is_refused(world: LBWorld) -> None:
    world.service("outsider", world.pods, annotations={"metallb.io/loadBalancerIPs": "198.18.0.250"})
    refused = world.wait_event("outsider", "AllocationFailed")
    assert refused and "outside every IPAddressPool" in refused[0][2], refused
    assert world.ingress("outsider") == []
    world.delete_service("outsider")


def test_tcp_and_udp_services_share_one_address(world: LBWorld) -> None:
    world.pool("lan", "198.18.0.210-198.18.0.219", "2001:db8::210-2001:db8::21f", autoAssign=False)
    shared = {"metallb.io/address-pool": "lan", "metallb.io/allow-shared-ip": "dns"}
    world.service("dns-tcp", world.pods, ports=[("TCP", 53)], annotations=shared)
    world.service("dns-udp", world.pods, ports=[("UDP", 53)], annotations=shared)
    tcp, udp = world.wait_ingress("dns-tcp"), world.wait_ingress("dns-udp")
    assert tcp == udp and len(tcp) == 1 and tcp[0].startswith("198.18.0.21"), (tcp, udp)
    assert world.eventually_served(tcp[0], 53, "tcp").ok
    assert world.eventually_served(tcp[0], 53, "udp").ok
    assert len(world.who_answers(tcp[0])) == 1
    world.delete_service("dns-tcp")
    world.delete_service("dns-udp")


def test_ipv6_address_announced_through_ndp(world: LBWorld) -> None:
    world.service("six", world.pods, families=["IPv6"], annotations={"metallb.io/address-pool": "lan"})
    ips = world.wait_ingress("six")
    assert len(ips) == 1 and ips[0].startswith("2001:db8::21"), ips
    result = world.eventually_served(ips[0])
    assert result.ok, f"the client reaches {ips[0]} through NDP: {result}"
    assert world.learned(ips[0]) in {n.name for n in world.cluster.nodes}
    world.delete_service("six")


def test_etp_local_is_announced_by_the_node_with_the_endpoint_and_keeps_the_client_address(
        world: LBWorld) -> None:
    pod = world.pods[1]  # on node-2
    world.service("local", [pod], annotations={"metallb.io/address-pool": "lan"}, externalTrafficPolicy="Local")
    ip = world.wait_ingress("local")[0]
    result = world.eventually_served(ip)
    assert result.ok and result.pod == pod.name, result
    assert result.client == world.outside.ip, "eTP Local keeps the client's address"
    assert world.who_answers(ip) == [pod.node.name]
    world.delete_service("local")
