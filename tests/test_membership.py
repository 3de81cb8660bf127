"""Node membership for L2 failover: the pure view with a fake clock, the shell on loopback, one kernel run.

Timing assertions are generous (the machine is shared); the measured figures are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import queue
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import pytest

from e2e.netns.cluster import REPO_ROOT, NamespaceCluster
from e2e.netns.fixtures import namespace_cluster_factory  # noqa: F401 - fixture
from nftproxy.lb.membership import (
    DEFAULT_PORT,
    LocalState,
    Membership,
    MembershipView,
    decode,
    encode,
    parse_address,
)

KEY = b"0123456789abcdef0123456789abcdef"
READY = LocalState(ready=True)
PEERS = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"}

Event = tuple[float, frozenset[str]]  # (monotonic time, eligible set) as on_change reported it


def beat(view: MembershipView, node: str, now: float, seq: int, state: LocalState = READY, incarnation: int = 1,
         source: str | None = None, key: bytes | None = None) -> bool:
    """Feed ``view`` a heartbeat of ``node`` from its own address (or ``source``)."""
    return view.heard(source or PEERS[node], encode(node, incarnation, seq, state, key), now)


def joined(key: bytes | None = None) -> MembershipView:
    """Node a's view at t=100 having heard b and c once (ready)."""
    view = MembershipView("a", key=key)
    view.set_peers(PEERS, 100.0)
    beat(view, "b", 100.0, 1, key=key)
    beat(view, "c", 100.0, 1, key=key)
    return view


# --- wire format ------------------------------------------------------------------------------------
def test_encode_decode_round_trip_carries_every_field() -> None:
    state = LocalState(ready=False, leaving=True, carrier=False)
    payload = encode("node-1", 1_700_000_000_000_000_000, 42, state)
    heartbeat = decode(payload)
    assert heartbeat is not None
    fields = (heartbeat.node, heartbeat.incarnation, heartbeat.seq, heartbeat.state)
    assert fields == ("node-1", 1_700_000_000_000_000_000, 42, state)
    assert not heartbeat.authenticated
    assert len(encode("ip-10-0-12-34.ec2.internal", 2**63, 2**40, READY, KEY)) < 100


@pytest.mark.parametrize(
    "payload",
    [b"", b"garbage", b"nM" + bytes(19), encode("a", 1, 1, READY)[:-1], encode("a", 1, 1, READY) + b"x",
     b"xx" + encode("a", 1, 1, READY)[2:], encode("a", 1, 1, READY)[:2] + b"\x02" + encode("a", 1, 1, READY)[3:],
     encode("a", 1, 1, READY)[:-1] + b"\xff"],
    ids=["empty", "text", "no-name", "truncated", "trailing", "magic", "version-2", "bad-utf8"],
)
def test_decode_refuses_garbage_and_other_versions(payload: bytes) -> None:
    assert decode(payload) is None


def test_encode_refuses_what_the_format_cannot_carry() -> None:
    for node, incarnation, seq in (("", 1, 1), ("x" * 254, 1, 1), ("a", -1, 1), ("a", 1, 2**64)):
        with pytest.raises(ValueError):
            encode(node, incarnation, seq, READY)


def test_hmac_accepts_the_shared_key_only() -> None:
    signed = encode("b", 1, 1, READY, KEY)
    assert decode(signed, KEY) is not None and decode(signed, KEY).authenticated  # type: ignore[union-attr]
    assert decode(signed, b"another key of 32 bytes........") is None
    assert decode(encode("b", 1, 1, READY), KEY) is None  # unsigned, but a key is required
    tampered = bytearray(signed)
    tampered[3] ^= 0x02  # flip 'leaving' in the flags
    assert decode(bytes(tampered), KEY) is None
    assert decode(signed) is not None  # without a key the MAC cannot be checked: the source address is


@pytest.mark.parametrize(
    "text, expected",
    [("10.0.0.1", ("10.0.0.1", DEFAULT_PORT)), ("10.0.0.1:7001", ("10.0.0.1", 7001)),
     ("fd00::1", ("fd00::1", DEFAULT_PORT)), ("[fd00:0::1]:7001", ("fd00::1", 7001)),
     ("[fd00::1]", ("fd00::1", DEFAULT_PORT)), ("::ffff:10.0.0.1", ("10.0.0.1", DEFAULT_PORT)),
     ("[::ffff:10.0.0.1]:7001", ("10.0.0.1", 7001))],
)
def test_parse_address_canonicalises(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["node-1", "10.0.0.1:x", "10.0.0.1:0", "[fd00::1]x", "[fd00::1", "10.0.0.1:70000"])
def test_parse_address_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


# --- the pure view ----------------------------------------------------------------------------------
def test_join_makes_peers_alive_and_eligible() -> None:
    view = MembershipView("a")
    view.set_peers(PEERS, 100.0)
    assert view.eligible(READY, 100.0) == frozenset()  # not settled, nobody heard
    assert beat(view, "b", 100.05, 1) is True
    assert view.eligible(READY, 100.05) == {"b"}
    assert beat(view, "c", 100.06, 1) is True
    assert view.eligible(READY, 100.06) == {"a", "b", "c"}  # every peer heard: settled before dead_after
    status = view.peers()["b"]
    assert (status.alive, status.ready, status.last_heard, status.incarnation, status.seq) == (True, True, 100.05, 1, 1)
    assert status.address == f"10.0.0.2:{DEFAULT_PORT}"


def test_not_ready_peer_is_alive_but_not_eligible() -> None:
    view = joined()
    assert beat(view, "b", 100.1, 2, LocalState(ready=False)) is True
    assert view.eligible(READY, 100.1) == {"a", "c"}
    assert view.peers()["b"].alive
    assert beat(view, "b", 100.2, 3) is True
    assert view.eligible(READY, 100.2) == {"a", "b", "c"}


def test_leaving_or_no_carrier_removes_a_peer_at_once() -> None:
    view = joined()
    assert beat(view, "b", 100.01, 2, LocalState(ready=True, leaving=True)) is True
    assert beat(view, "c", 100.01, 2, LocalState(ready=True, carrier=False)) is True
    assert view.eligible(READY, 100.01) == {"a"}
    assert view.peers()["b"].leaving and view.peers()["b"].alive


def test_silent_peer_dies_after_dead_after_and_revives_when_heard() -> None:
    view = joined()
    beat(view, "c", 100.4, 2)
    assert view.next_deadline(100.4) == pytest.approx(100.5)
    assert view.expire(100.49) is False
    assert view.eligible(READY, 100.49) == {"a", "b", "c"}
    assert view.expire(100.5) is True
    assert view.eligible(READY, 100.5) == {"a", "c"}
    assert not view.peers()["b"].alive
    assert view.next_deadline(100.5) == pytest.approx(100.9)
    assert view.expire(100.6) is False  # already dead: no second change
    assert beat(view, "b", 100.7, 2) is True  # the link came back: same incarnation, newer seq
    assert view.eligible(READY, 100.7) == {"a", "b", "c"}


def test_restarted_peer_is_recognised_by_its_new_incarnation() -> None:
    view = joined()
    for seq in range(2, 50):
        beat(view, "b", 100 + seq * 0.1, seq)
    view.expire(106.0)
    assert "b" not in view.eligible(READY, 106.0)
    assert beat(view, "b", 106.1, 1, incarnation=2) is True  # seq restarts at 1
    assert view.peers()["b"].incarnation == 2 and "b" in view.eligible(READY, 106.1)
    assert beat(view, "b", 106.2, 99, LocalState(ready=False), incarnation=1) is False  # the old process: ignored
    assert view.peers()["b"].ready


def test_dead_peer_restarting_with_a_lower_incarnation_is_taken() -> None:
    view = joined()  # b's incarnation 1
    beat(view, "b", 100.1, 5, incarnation=1000)
    assert beat(view, "b", 100.2, 1, LocalState(ready=False), incarnation=900) is False  # alive: a stray, ignored
    view.expire(100.6)
    assert beat(view, "b", 100.7, 5, incarnation=1000) is False  # dead: its last packet replayed, still ignored
    assert beat(view, "b", 100.8, 1, incarnation=900) is True  # restarted after the clock went back
    assert view.peers()["b"].incarnation == 900 and "b" in view.eligible(READY, 100.8)


def test_duplicates_and_reordered_heartbeats_are_ignored() -> None:
    view = joined()
    assert beat(view, "b", 100.1, 3, LocalState(ready=True, leaving=True)) is True
    assert beat(view, "b", 100.11, 2) is False  # sent before the leaving one, arrived after
    assert beat(view, "b", 100.12, 3) is False  # duplicate seq
    assert view.eligible(READY, 100.12) == {"a", "c"}
    assert view.peers()["b"].last_heard == 100.1  # a stale packet does not keep a peer alive


def test_unknown_senders_are_ignored() -> None:
    view = joined()
    assert beat(view, "d", 100.1, 1, source="10.0.0.4") is False  # not a Node we know
    assert beat(view, "a", 100.1, 1, source="10.0.0.1") is False  # our own name
    beat(view, "b", 100.1, 2, LocalState(ready=False), source="10.0.0.9")  # b's name, another address
    beat(view, "b", 100.1, 3, LocalState(ready=False), source="10.0.0.2:7001")  # b's address, another port
    assert "d" not in view.peers() and view.peers()["b"].seq == 1
    assert view.eligible(READY, 100.1) == {"a", "b", "c"}


def test_hmac_view_needs_the_key_and_accepts_any_source() -> None:
    view = joined(KEY)
    assert set(view.peers()) == {"b", "c"} and view.peers()["b"].seq == 1
    assert beat(view, "b", 100.1, 2, LocalState(ready=False)) is False  # unsigned: refused
    assert beat(view, "b", 100.1, 3, LocalState(ready=False), key=b"a wrong key of 32 bytes........") is False
    assert view.peers()["b"].ready
    # signed: accepted from another address (a multi-homed node), replays refused
    assert beat(view, "b", 100.2, 4, LocalState(ready=False), source="192.0.2.7", key=KEY) is True
    assert beat(view, "b", 100.3, 1, source="192.0.2.7", key=KEY) is False
    assert view.eligible(READY, 100.3) == {"a", "c"}


def test_settled_only_after_dead_after_or_every_peer_heard() -> None:
    view = MembershipView("a")
    assert not view.settled(100.0)  # no time observed yet
    view.set_peers(PEERS, 100.0)
    assert not view.settled(100.49)
    assert view.advertised(READY, 100.49) == LocalState(ready=False)  # peers must not choose a node that does not
    assert view.next_deadline(100.1) == pytest.approx(100.5)
    assert view.settled(100.5) and view.eligible(READY, 100.5) == {"a"}
    assert view.advertised(READY, 100.5) == READY and view.next_deadline(100.5) is None
    lonely = MembershipView("a")
    lonely.set_peers({}, 100.0)
    assert not lonely.settled(100.1)  # no peers known yet is not "every peer heard"
    assert joined().settled(100.0)


def test_own_eligibility_follows_the_local_state() -> None:
    view = joined()
    assert view.eligible(LocalState(ready=False), 100.0) == {"b", "c"}
    assert view.eligible(LocalState(ready=True, leaving=True), 100.0) == {"b", "c"}
    assert view.eligible(LocalState(ready=True, carrier=False), 100.0) == {"b", "c"}


def test_set_peers_forgets_deleted_nodes_and_resets_moved_ones() -> None:
    view = joined()
    generation = view.generation
    view.set_peers({"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.33", "bad": "not-an-ip"}, 100.1)
    assert set(view.peers()) == {"b", "c"}  # me and the malformed one skipped
    assert view.eligible(READY, 100.1) == {"a", "b"}  # c moved: not alive until heard at its new address
    assert not view.peers()["c"].alive and view.generation > generation
    assert view.targets() == [("10.0.0.2", DEFAULT_PORT), ("10.0.0.33", DEFAULT_PORT)]
    view.set_peers({"c": "10.0.0.33"}, 100.2)
    assert set(view.peers()) == {"c"} and view.eligible(READY, 100.2) == {"a"}
    assert beat(view, "b", 100.3, 2) is False


def test_view_refuses_timings_that_cannot_work() -> None:
    for interval, dead_after in ((0.0, 0.5), (0.5, 0.5), (0.2, 0.1)):
        with pytest.raises(ValueError):
            MembershipView("a", interval, dead_after)


# --- the shell on loopback --------------------------------------------------------------------------
def wait_for(events: queue.Queue[Event], predicate: Callable[[frozenset[str]], bool], timeout: float = 3.0) -> float:
    """The time of the first reported eligible set satisfying ``predicate``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            at, eligible = events.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            raise AssertionError(f"no eligible set satisfying the condition within {timeout} s") from None
        if predicate(eligible):
            return at


def drain(events: queue.Queue[Event]) -> None:
    while not events.empty():
        events.get_nowait()


class Cluster:
    """Members on loopback, each on its own ephemeral port, with a queue of their on_change reports."""

    def __init__(self, names: list[str], host: str = "127.0.0.1", **kwargs: object) -> None:
        self.events: dict[str, queue.Queue[Event]] = {name: queue.Queue() for name in names}
        self.threads: set[str] = set()
        self.members = {
            name: Membership(name, host, port=0, on_change=self._recorder(name), **kwargs)  # type: ignore[arg-type]
            for name in names
        }

    def _recorder(self, name: str) -> Callable[[frozenset[str]], None]:
        def record(eligible: frozenset[str]) -> None:
            self.threads.add(threading.current_thread().name)
            self.events[name].put((time.monotonic(), eligible))
        return record

    def start(self, peers: Mapping[str, str] | None = None) -> float:
        """Start everyone, tell them about each other, mark them ready; returns when that happened."""
        for member in self.members.values():
            member.start()
        addresses = dict(peers or {name: member.address for name, member in self.members.items()})
        started = time.monotonic()
        for member in self.members.values():
            member.set_peers(addresses)
            member.set_local(READY)
        return started

    def stop(self) -> None:
        for member in self.members.values():
            member.stop(farewell=False)


@pytest.fixture
def cluster_of() -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(names: list[str], **kwargs: object) -> Cluster:
        made.append(Cluster(names, **kwargs))
        return made[-1]

    yield make
    for cluster in made:
        cluster.stop()


def joined_cluster(make: Callable[..., Cluster], **kwargs: object) -> Cluster:
    """Three started members that all see all three eligible."""
    cluster = make(["n1", "n2", "n3"], **kwargs)
    started = cluster.start()
    took = max(wait_for(cluster.events[name], lambda e: e == {"n1", "n2", "n3"}) for name in cluster.members) - started
    print(f"three members saw each other after {took * 1000:.1f} ms")
    assert took < 1.5
    return cluster


def test_three_members_see_each_other_and_report_from_their_thread(cluster_of: Callable[..., Cluster]) -> None:
    cluster = joined_cluster(cluster_of)
    assert all(member.eligible() == {"n1", "n2", "n3"} for member in cluster.members.values())
    assert cluster.members["n1"].settled()
    assert {s.alive for s in cluster.members["n1"].peers().values()} == {True}
    assert cluster.threads == {"membership-n1", "membership-n2", "membership-n3"}


def test_farewell_removes_a_member_at_once(cluster_of: Callable[..., Cluster]) -> None:
    # dead_after 2 s: only the farewell can explain a removal well before it
    cluster = joined_cluster(cluster_of, dead_after=2.0)
    drain(cluster.events["n1"])
    stopped = time.monotonic()
    cluster.members["n3"].stop(farewell=True)
    took = wait_for(cluster.events["n1"], lambda e: "n3" not in e) - stopped
    print(f"farewell seen after {took * 1000:.1f} ms")
    assert took < 1.0
    assert cluster.members["n2"].eligible() == {"n1", "n2"}


def test_local_changes_are_sent_at_once(cluster_of: Callable[..., Cluster]) -> None:
    cluster = joined_cluster(cluster_of, interval=2.0, dead_after=5.0)  # a change must not wait for the interval
    drain(cluster.events["n1"])
    changed = time.monotonic()
    cluster.members["n2"].set_local(LocalState(ready=True, leaving=True))
    took = wait_for(cluster.events["n1"], lambda e: e == {"n1", "n3"}) - changed
    print(f"leaving seen after {took * 1000:.1f} ms (interval 2 s)")
    assert took < 1.0
    assert cluster.members["n2"].eligible() == {"n1", "n3"}  # it no longer chooses itself either


def test_silent_death_is_detected_after_dead_after(cluster_of: Callable[..., Cluster]) -> None:
    cluster = joined_cluster(cluster_of)
    time.sleep(random.uniform(0.0, 0.1))  # die anywhere between two heartbeats
    drain(cluster.events["n1"])
    killed = time.monotonic()
    cluster.members["n3"].stop(farewell=False)
    took = wait_for(cluster.events["n1"], lambda e: "n3" not in e) - killed
    print(f"silent death detected after {took * 1000:.1f} ms (dead_after 500 ms, interval 100 ms)")
    assert 0.3 <= took < 1.5  # not before dead_after - interval, not much after dead_after + interval
    assert not cluster.members["n1"].peers()["n3"].alive


def test_a_failing_callback_does_not_stop_the_heartbeats() -> None:
    calls: list[frozenset[str]] = []

    def broken(eligible: frozenset[str]) -> None:
        calls.append(eligible)
        raise RuntimeError("a controller bug")

    healthy, faulty = Membership("n1", "127.0.0.1", port=0), Membership("n2", "127.0.0.1", port=0, on_change=broken)
    try:
        for member in (healthy, faulty):
            member.start()
        peers = {member.me: member.address for member in (healthy, faulty)}
        for member in (healthy, faulty):
            member.set_peers(peers)
            member.set_local(READY)
        time.sleep(1.0)  # twice dead_after: n2 must have gone on sending after its callback raised
        assert calls[-1] == {"n1", "n2"} and healthy.eligible() == {"n1", "n2"}
        healthy.set_local(LocalState(ready=False))
        deadline = time.monotonic() + 1.0
        while calls[-1] != {"n2"} and time.monotonic() < deadline:  # and on receiving and reporting
            time.sleep(0.01)
        assert calls[-1] == {"n2"}
    finally:
        healthy.stop()
        faulty.stop()


def test_ipv6_socket_talks_to_ipv4_peers_through_mapped_addresses(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(["n1", "n2"], host="::ffff:127.0.0.1")
    cluster.start()
    assert cluster.members["n1"].address.startswith("127.0.0.1:")  # peers know it by its IPv4 address
    wait_for(cluster.events["n1"], lambda e: e == {"n1", "n2"})
    wait_for(cluster.events["n2"], lambda e: e == {"n1", "n2"})


def test_ipv6_members_with_a_key_ignore_a_member_without_it(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(["n1", "n2"], host="::1", key=KEY)
    stranger = Membership("n3", "::1", port=0, key=b"a different key of enough bytes")
    stranger.start()
    try:
        for member in cluster.members.values():
            member.start()
        peers = {name: member.address for name, member in cluster.members.items()} | {"n3": stranger.address}
        assert peers["n1"].startswith("[::1]:")
        stranger.set_peers(peers)
        stranger.set_local(READY)
        for member in cluster.members.values():
            member.set_peers(peers)
            member.set_local(READY)
        wait_for(cluster.events["n1"], lambda e: e == {"n1", "n2"})
        time.sleep(0.3)
        assert cluster.members["n1"].eligible() == {"n1", "n2"} and stranger.eligible() == {"n3"}
    finally:
        stranger.stop()


# --- the kernel: members in network namespaces ------------------------------------------------------
ROUNDS = 5  # link-down measurements in the kernel test
MEMBER = """
import json, sys, time
from nftproxy.lb.membership import LocalState, Membership

def report(eligible):
    print(json.dumps([time.monotonic(), sorted(eligible)]), flush=True)

member = Membership(sys.argv[1], sys.argv[2], on_change=report)
member.start()
member.set_peers(json.loads(sys.argv[3]))
member.set_local(LocalState(ready=True))
sys.stdin.read()  # until the test closes stdin
member.stop()
"""


def follow(process: subprocess.Popen[str], events: queue.Queue[Event]) -> None:
    """Parse a member's reports into ``events`` (a thread per process)."""
    assert process.stdout is not None
    for line in process.stdout:
        at, eligible = json.loads(line)
        events.put((at, frozenset(eligible)))


@pytest.mark.kernel
def test_link_down_node_is_declared_dead_by_the_others(
    namespace_cluster_factory: Callable[..., NamespaceCluster],  # noqa: F811 - the imported fixture
) -> None:
    cluster = namespace_cluster_factory(nodes=3)
    peers = {node.name: node.ip for node in cluster.nodes}
    processes: dict[str, subprocess.Popen[str]] = {}
    events: dict[str, queue.Queue[Event]] = {node.name: queue.Queue() for node in cluster.nodes}
    try:
        for node in cluster.nodes:
            processes[node.name] = process = subprocess.Popen(
                ["ip", "netns", "exec", node.netns, sys.executable, "-c", MEMBER, node.name, node.ip,
                 json.dumps(peers)],
                cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            threading.Thread(target=follow, args=(process, events[node.name]), daemon=True).start()
        for name in peers:
            wait_for(events[name], lambda e: e == set(peers), timeout=10.0)
        victim, survivors = cluster.nodes[2], {node.name for node in cluster.nodes[:2]}
        took: list[float] = []
        for _ in range(ROUNDS):
            time.sleep(random.uniform(0.0, 0.1))  # fall anywhere between two heartbeats
            for name in peers:
                drain(events[name])
            down = time.monotonic()
            cluster.exec(victim, ["ip", "link", "set", victim.lan_ifname, "down"])
            for name in survivors:  # the first change they report: the victim gone, each other kept
                took.append(wait_for(events[name], lambda e: e == survivors) - down)
            cluster.exec(victim, ["ip", "link", "set", victim.lan_ifname, "up"])
            for name in survivors:  # heard again: alive again (same incarnation, newer seq)
                wait_for(events[name], lambda e: e == set(peers), timeout=5.0)
        took.sort()
        low, median, high = (1000 * t for t in (took[0], statistics.median(took), took[-1]))
        print(f"link down -> declared dead by both others, {len(took)} samples: "
              f"min {low:.0f} ms, median {median:.0f} ms, max {high:.0f} ms")
        assert took[-1] < 1.5
    finally:
        for process in processes.values():
            if process.stdin:
                process.stdin.close()
        for process in processes.values():
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
