"""BGP mode end to end: MetalLB's BGPPeer and BGPAdvertisement through the API stand-in, BIRD on every node
driven by its agent, and a real BGP router (BIRD, AS 64513, ECMP into its kernel) in front of a client
whose only route is the router: every successful connection proves routes the nodes advertised, and the
router's kernel says which nodes they came from (the next hops are the nodes' own addresses).

Times printed here (withdrawal, failover, re-advertisement) are what BENCHMARKS.md reports; the
repeated measurement is `python -m e2e.bgp_failover`.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from e2e.bgp import HOLD, POOL_V4, POOL_V6, BGPWorld, bgp_world
from e2e.lb import Prober, kill

pytestmark = pytest.mark.kernel

ALL = {"node-1", "node-2", "node-3"}


@pytest.fixture(scope="module")
def world() -> Iterator[BGPWorld]:
    with bgp_world() as w:
        yield w


class RouteWatch:
    """Samples the router's next hops for an address every 20 ms on a thread: what it forwarded to, when."""

    def __init__(self, world: BGPWorld, ip: str) -> None:
        self.world, self.ip = world, ip
        self.samples: list[tuple[float, set[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.world.next_hops(self.ip)))
            time.sleep(0.02)

    def stop(self) -> list[tuple[float, set[str]]]:
        self._stop.set()
        self._thread.join(5)
        return self.samples


def test_the_router_learns_each_address_from_every_node_and_the_client_reaches_it(world: BGPWorld) -> None:
    world.lb.service("web", world.lb.pods)
    (ip,) = world.lb.wait_ingress("web")
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(POOL_V4)
    world.wait_next_hops(ip, ALL, timeout=20)
    routes = world.birdc("show", "route", "for", ip, "all")
    assert routes.count("BGP.next_hop: 198.18.0.1") == 3 and "AS64512" in routes, routes
    results = world.probe(ip, count=30, timeout=2)
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    through = {world.entry_node(r.client) for r in results}
    assert len(through) >= 2 and through <= ALL, f"ECMP spreads connections over the nodes: {through}"
    for node in sorted(ALL):
        assert world.lb.metric(node, "nftproxy_lb_bgp_session_up") == 2, node  # IPv4 and IPv6 sessions
        assert world.lb.metric(node, f'nftproxy_lb_bgp_advertised{{ip="{ip}",peer="router"}}') == 1, node
    status = world.cluster.exec(world.node("node-1"), [sys.executable, "-m", "nftproxy", "status"]).stdout
    assert f"BGP         metallb-system/router 198.18.0.254: Established; advertising {ip}/32" in status, status

    # a changed address: the old one leaves, the new one comes
    world.lb.core.patch_namespaced_service("web", "default", {"metadata": {"annotations": {
        "metallb.io/loadBalancerIPs": "198.51.100.77"}}})
    world.wait_next_hops("198.51.100.77", ALL, timeout=15)
    world.wait_next_hops(ip, set(), timeout=2)

    # the pool no longer advertised: withdrawn; advertised again: back
    world.delete_advertisement("public")
    world.wait_next_hops("198.51.100.77", set(), timeout=5)
    world.advertisement("public", ipAddressPools=["public"])
    world.wait_next_hops("198.51.100.77", ALL, timeout=10)

    started = time.monotonic()
    world.lb.delete_service("web")
    gone = world.wait_next_hops("198.51.100.77", set(), timeout=5)
    print(f"deleted Service withdrawn from the router {(time.monotonic() - started) * 1000:.0f} ms after the "
          f"delete ({gone * 1000:.0f} ms of polling)")


def test_ipv6_over_the_same_peering_scheme(world: BGPWorld) -> None:
    world.lb.service("web6", world.lb.pods, families=["IPv6"])
    (ip,) = world.lb.wait_ingress("web6")
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(POOL_V6)
    world.wait_next_hops(ip, ALL, timeout=20)
    assert f"{ip}/128" in world.birdc("show", "route", "protocol", "n2v6")
    results = world.probe(ip, count=10, timeout=2)
    assert all(r.ok for r in results), results
    world.lb.delete_service("web6")
    world.wait_next_hops(ip, set(), timeout=5)


def test_local_policy_is_advertised_by_the_endpoint_node_only_keeps_the_client_address_and_leaves_in_1s(
        world: BGPWorld) -> None:
    world.lb.service("local", [world.lb.pods[1]], externalTrafficPolicy="Local")  # web-2 on node-2
    (ip,) = world.lb.wait_ingress("local")
    world.wait_next_hops(ip, {"node-2"}, timeout=20)
    results = world.probe(ip, count=10, timeout=2)
    assert all(r.ok and r.pod == "web-2" and r.client == world.client.ip for r in results), results
    started = time.monotonic()
    world.set_ready("local", False)
    world.wait_next_hops(ip, set(), timeout=5)
    withdrawn = time.monotonic() - started
    print(f"eTP Local: last local endpoint not ready -> withdrawn from the router in {withdrawn * 1000:.0f} ms")
    assert withdrawn < 1.0
    world.set_ready("local", True)
    world.wait_next_hops(ip, {"node-2"}, timeout=5)
    world.lb.delete_service("local")


def test_a_session_that_does_not_come_up_gets_an_event_naming_peer_and_reason(world: BGPWorld) -> None:
    world.peer("nowhere", myASN=64512, peerASN=64513, peerAddress=world.router.ip, peerPort=1179,
               nodeSelectors=[{"matchLabels": {"kubernetes.io/hostname": "node-1"}}])
    deadline = time.monotonic() + 20
    while not (events := world.peer_events("nowhere")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert events, "a Warning Event on the BGPPeer"
    (type_, reason, message), *_ = events
    assert (type_, reason) == ("Warning", "BGPSessionDown")
    assert message.startswith("node node-1: BGP session to 198.18.0.254:1179 (AS 64513) not established"), message
    assert "Connection refused" in message, message
    assert world.lb.metric("node-1", 'nftproxy_lb_bgp_session_up{address="198.18.0.254",peer="nowhere"}') == 0
    world.delete_peer("nowhere")


def test_a_rollout_and_a_crashed_speaker_never_withdraw_a_route(world: BGPWorld) -> None:
    # endpoints on node-1 and node-3 only: the next test kills node-2
    world.lb.service("steady", [world.lb.pods[0], world.lb.pods[2]])
    (ip,) = world.lb.wait_ingress("steady")
    world.wait_next_hops(ip, ALL, timeout=20)
    watch = RouteWatch(world, ip)
    prober = Prober(SimpleNamespace(outside=world.client), ip, gap=0.05, timeout=1.0)  # type: ignore[arg-type]
    try:
        agent = world.lb.agent("node-1")
        stopped = time.monotonic()
        agent.stop()  # SIGTERM, as a rollout does
        agent.start(wait=False)
        while "Established" not in world.session_state("n1") or \
                time.monotonic() - stopped < 1.0:
            assert time.monotonic() - stopped < 60, world.session_state("n1")
            time.sleep(0.05)
        print(f"rollout of node-1's agent: its session is established again {time.monotonic() - stopped:.1f} s "
              "after SIGTERM")
        agent.wait_synced(0, timeout=30)

        pid = subprocess.run(["ip", "netns", "pids", world.node("node-2").netns], capture_output=True, text=True,
                             check=True).stdout.split()
        (bird,) = [p for p in pid if open(f"/proc/{p}/comm").read().strip() == "bird"]
        killed = time.monotonic()
        subprocess.run(["kill", "-9", bird], check=True)
        while "Established" not in world.session_state("n2") or time.monotonic() - killed < 0.5:
            assert time.monotonic() - killed < 30
            time.sleep(0.05)
        print(f"BIRD killed on node-2: restarted, session established again in {time.monotonic() - killed:.1f} s")
        time.sleep(1.0)
    finally:
        samples = watch.stop()
        results = prober.stop()
    missing = [(round(t - stopped, 2), hops) for t, hops in samples if hops != ALL]
    assert not missing, f"the router always forwarded to every node (graceful restart): {missing[:5]}"
    failed = [t for t, ok in results if not ok]
    print(f"{len(results)} connections during the rollout and the restart: {len(failed)} failed")
    assert results and not failed
    assert world.lb.metric("node-2", "nftproxy_lb_bgp_speaker_restarts_total") == 1


def test_a_dead_node_leaves_the_router_within_the_hold_time_and_comes_back(world: BGPWorld) -> None:
    (ip,) = world.lb.wait_ingress("steady")
    world.wait_next_hops(ip, ALL, timeout=10)
    node = world.node("node-2")
    prober = Prober(SimpleNamespace(outside=world.client), ip, gap=0.02, timeout=0.3)  # type: ignore[arg-type]
    try:
        time.sleep(0.5)
        died = time.monotonic()
        world.cut(node)
        kill(world.lb.agent("node-2"))
        left = world.wait_next_hops(ip, {"node-1", "node-3"}, timeout=HOLD + 5)
        print(f"node-2 died: gone from the router {left:.2f} s after its link went down (hold time {HOLD} s)")
        assert left <= HOLD + 0.5
        time.sleep(1.0)
    finally:
        results = prober.stop()
        world.cut(node, False)
    after = [ok for t, ok in results if t > died + left + 0.3]  # the kernel route has changed by then
    assert after and all(after), f"{after.count(False)} of {len(after)} connections failed after the withdrawal"
    outage = [t for t, ok in results if not ok and t >= died]
    print(f"{len(outage)} of {len([t for t, _ in results if t >= died])} connections failed while the router still "
          "sent some to the dead node")

    agent = world.lb.agent("node-2")
    started = time.monotonic()
    agent.start(wait=False)
    back = world.wait_next_hops(ip, ALL, timeout=60)
    print(f"node-2 back: advertised again {back:.2f} s after its agent started")
    results = world.probe(ip, count=20, timeout=2)
    assert all(r.ok for r in results), results
    assert time.monotonic() - started < 60
    world.lb.delete_service("steady")


def test_with_a_bfd_profile_a_dead_link_leaves_the_router_in_under_a_second(world: BGPWorld) -> None:
    world.bfd_profile("fast", receiveInterval=100, transmitInterval=100, detectMultiplier=3)
    world.patch_peer("router", bfdProfile="fast")
    world.lb.service("bfd", [world.lb.pods[0], world.lb.pods[2]])
    (ip,) = world.lb.wait_ingress("bfd")
    time.sleep(1.0)  # the sessions restart with BFD
    world.wait_established()
    world.wait_next_hops(ip, ALL, timeout=20)
    deadline = time.monotonic() + 10
    while (sessions := world.birdc("show", "bfd", "sessions")).count(" Up ") < 3:
        assert time.monotonic() < deadline, sessions
        time.sleep(0.1)
    node = world.node("node-2")
    cut = time.monotonic()
    world.cut(node)
    try:
        left = world.wait_next_hops(ip, {"node-1", "node-3"}, timeout=HOLD + 2)
        print(f"with BFD (100 ms x 3): node-2's cable pulled, gone from the router in {left * 1000:.0f} ms")
        assert time.monotonic() - cut < 1.0
    finally:
        world.cut(node, False)
    back = world.wait_next_hops(ip, ALL, timeout=30)  # its agent never stopped: the session comes back
    print(f"cable back: node-2 advertised again {back:.2f} s later")
    world.patch_peer("router", bfdProfile=None)
    world.lb.delete_service("bfd")
