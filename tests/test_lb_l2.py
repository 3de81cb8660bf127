"""Bare-metal LoadBalancer end to end: MetalLB's objects through the API stand-in, addresses written to
Service status by the elected allocator, and exactly one node answering ARP/NDP for each address.

The client sits on the LAN with no route but the LAN prefix: it reaches a LoadBalancer address only
because a node answers ARP (or NDP) for it, so every successful connection below proves an
announcement, and the MAC the client learned names the node that made it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from e2e.lb import LBWorld, Prober, lb_world
from e2e.lb_failover import one_failover, report, revive, run
from nftproxy.lb.announce import order_key

pytestmark = pytest.mark.kernel

SEED = "198.18.0.200"


@pytest.fixture(scope="module")
def world() -> Iterator[LBWorld]:
    with lb_world() as w:
        w.pool("seed", f"{SEED}/32")
        w.pool("lan", "198.18.0.210-198.18.0.219", "2001:db8::210-2001:db8::21f", autoAssign=False)
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


def test_failover_when_the_announcer_dies(world: LBWorld) -> None:
    """A few trials of what `python -m e2e.lb_failover` measures (BENCHMARKS.md has 20)."""
    results = run(world, trials=3)
    print(report(results))
    for victim, successor, seconds, _share in results:
        assert successor != victim
        assert seconds < 5.0, f"{victim} died and traffic took {seconds:.2f} s to flow again"


def test_sigterm_hand_over_loses_no_connection(world: LBWorld) -> None:
    world.service("planned", world.pods, annotations={"metallb.io/address-pool": "lan"})
    ip = world.wait_ingress("planned")[0]
    assert world.eventually_served(ip).ok
    leaving = world.who_answers(ip)[0]
    prober = Prober(world, ip, gap=0.02, timeout=1.0, duration=6.0)
    time.sleep(1.0)
    world.agent(leaving).stop()  # SIGTERM, as a rollout does
    prober.process.wait(15)
    results = prober.stop()
    failed = [round(t, 3) for t, ok in results if not ok]
    assert len(results) > 200 and not failed, f"{len(failed)} of {len(results)} connections failed: {failed[:10]}"
    successor = world.who_answers(ip)
    assert successor and successor[0] != leaving
    world.agent(leaving).start(wait=True, timeout=30)
    world.delete_service("planned")


def test_every_agent_restarted_moves_no_address(world: LBWorld) -> None:
    for name in ("keep-1", "keep-2", "keep-3"):
        world.service(name, world.pods, annotations={"metallb.io/address-pool": "lan"})
    before = {name: world.wait_ingress(name) for name in ("keep-1", "keep-2", "keep-3")}
    assert all(len(ips) == 1 for ips in before.values()), before
    for agent in world.agents:
        agent.stop()
    # while no allocator runs, a new Service arrives: it must not take an address in use on restart
    world.service("late", world.pods, annotations={"metallb.io/address-pool": "lan"})
    for agent in world.agents:
        agent.start(wait=False)
    for agent in world.agents:
        agent.wait_synced(0, timeout=30)
    late = world.wait_ingress("late", timeout=20)
    after = {name: world.ingress(name) for name in before}
    assert after == before, "a restart never moves an address in use"
    assert len(late) == 1 and late[0] not in {ips[0] for ips in before.values()}
    for name in ("keep-1", "late"):
        assert world.eventually_served(world.ingress(name)[0]).ok
    for name in ("keep-1", "keep-2", "keep-3", "late"):
        world.delete_service(name)


def test_split_brain_settles_on_the_deterministic_winner(world: LBWorld) -> None:
    world.service("split", world.pods, annotations={"metallb.io/address-pool": "lan"})
    ip = world.wait_ingress("split")[0]
    assert world.eventually_served(ip).ok
    order = sorted(world.cluster.nodes, key=lambda n: order_key(n.name, ip))
    winner, runner_up = order[0], order[1]
    assert world.who_answers(ip) == [winner.name]
    before = world.metric(winner.name, "nftproxy_lb_announcement_conflicts") + \
        world.metric(runner_up.name, "nftproxy_lb_announcement_conflicts")
    try:
        world.block_heartbeats(winner, runner_up)  # each now counts the other dead: both announce
        deadline = time.monotonic() + 5
        while world.metric(runner_up.name, "nftproxy_lb_announced") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        split_at = time.monotonic()
        # the runner-up announced (gratuitous ARP): the winner sees it and both settle within 1 s
        while world.who_answers(ip, wait=0.2) != [winner.name] and time.monotonic() < split_at + 5:
            pass
        settled = time.monotonic() - split_at
        print(f"split brain settled in {settled * 1000:.0f} ms")
        assert world.who_answers(ip) == [winner.name], world.diagnose(ip)
        assert settled < 2.0, world.diagnose(ip)
        after = world.metric(winner.name, "nftproxy_lb_announcement_conflicts") + \
            world.metric(runner_up.name, "nftproxy_lb_announcement_conflicts")
        assert after > before, "the conflict is counted"
        assert world.wait_event("split", "AnnouncementConflict"), "and reported as an Event"
        assert world.eventually_served(ip).ok
    finally:
        world.block_heartbeats(winner, runner_up, blocked=False)
    world.delete_service("split")


def test_type_change_frees_the_address_for_a_pending_service(world: LBWorld) -> None:
    world.service("holder", world.pods)
    assert world.wait_ingress("holder") == [SEED]
    world.service("waiter", world.pods)
    assert world.wait_event("waiter", "AllocationFailed")
    world.core.patch_namespaced_service("holder", "default", {"spec": {"type": "ClusterIP"}})
    assert world.wait_ingress("waiter") == [SEED]
    deadline = time.monotonic() + 10
    while world.ingress("holder") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert world.ingress("holder") == [], "the status of a Service that is no longer a LoadBalancer is cleared"
    world.delete_service("holder")
    world.delete_service("waiter")


def test_dual_stack_service_gets_one_address_per_family(world: LBWorld) -> None:
    world.service("dual", world.pods, families=["IPv4", "IPv6"], annotations={"metallb.io/address-pool": "lan"})
    ips = world.wait_ingress("dual", count=2)
    assert [":" in ip for ip in ips] == [False, True], ips
    for ip in ips:
        assert world.eventually_served(ip).ok, world.diagnose(ip)
    svc = world.core.read_namespaced_service("dual", "default")
    assert svc.metadata.annotations.get("metallb.io/ip-allocated-from-pool") == "lan"
    assert {i.ip_mode for i in svc.status.load_balancer.ingress} == {"VIP"}
    world.delete_service("dual")


def test_lost_carrier_withdraws_within_a_second_and_another_node_takes_over(world: LBWorld) -> None:
    world.service("carrier", world.pods, annotations={"metallb.io/address-pool": "lan"})
    ip = world.wait_ingress("carrier")[0]
    assert world.eventually_served(ip).ok
    node = world.cluster.node(world.who_answers(ip)[0])
    lan_port = f"n{node.index}"  # the bridge's end of the node's LAN veth
    try:
        subprocess.run(["ip", "-n", world.cluster.lan_netns, "link", "set", lan_port, "down"], check=True)
        cut = time.monotonic()
        while world.metric(node.name, "nftproxy_lb_announced") and time.monotonic() < cut + 5:
            time.sleep(0.05)
        withdrawn = time.monotonic() - cut
        print(f"withdrawn {withdrawn * 1000:.0f} ms after the carrier went")
        assert withdrawn < 1.5  # < 1 s plus one metrics scrape through `ip netns exec`
        result = world.eventually_served(ip)
        assert result.ok and world.learned(ip) != node.name
    finally:
        subprocess.run(["ip", "-n", world.cluster.lan_netns, "link", "set", lan_port, "up"], check=True)
    world.delete_service("carrier")


def test_a_broken_pool_is_reported_and_costs_the_others_nothing(world: LBWorld) -> None:
    world.pool("broken", "198.18.0.240-198.18.0.230")  # ends before it starts
    world.custom.create_namespaced_custom_object("metallb.io", "v1beta2", "metallb-system", "bgppeers", {
        "apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer", "metadata": {"name": "router"},
        "spec": {"myASN": 64512, "peerASN": 64513, "peerAddress": "198.18.0.1", "vrf": "red",  # not supported
                 "nodeSelectors": [{"matchLabels": {"bgp": "none-here"}}]}})  # no node opens it
    deadline = time.monotonic() + 10
    reasons: dict[str, str] = {}
    while len(reasons) < 2 and time.monotonic() < deadline:
        for e in world.core.list_namespaced_event("metallb-system").items:
            reasons[e.involved_object.name] = f"{e.reason}: {e.message}"
        time.sleep(0.2)
    assert "ends before it starts" in reasons.get("broken", ""), reasons
    assert reasons.get("router", "").startswith("Unsupported"), reasons
    world.service("still-fine", world.pods, annotations={"metallb.io/address-pool": "lan"})
    assert world.eventually_served(world.wait_ingress("still-fine")[0]).ok
    world.delete_pool("broken")
    world.delete_service("still-fine")


def test_failover_does_not_need_the_api_server(world: LBWorld) -> None:
    world.service("no-api", world.pods, annotations={"metallb.io/address-pool": "lan"})
    ip = world.wait_ingress("no-api")[0]
    assert world.eventually_served(ip).ok
    world.api.down()  # the agents' API connections are cut and refused from here on
    try:
        victim, successor, seconds, _share = one_failover(world, ip)
        print(f"without the API server: {victim} died, {successor} took over in {seconds * 1000:.0f} ms")
        assert successor != victim and seconds < 5.0
    finally:
        world.api.up()
    revive(world, victim)
    world.delete_service("no-api")
