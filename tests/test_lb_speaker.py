"""The speaker's decisions without sockets: a fake responder records what it was told to answer for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nftproxy.lb.announce import choose
from nftproxy.lb.speaker import Speaker
from nftproxy.lb.view import ClusterView
from nftproxy.objects.model import ObjectRef

NODES = ("node-1", "node-2", "node-3")
IP = "198.18.0.200"


class FakeResponder:
    def __init__(self) -> None:
        self.calls: list[dict[str, frozenset[str]]] = []
        self.reannounced: list[str | None] = []

    def reannounce(self, interface: str | None = None) -> None:
        self.reannounced.append(interface)

    def set_addresses(self, wanted: Mapping[str, Any]) -> None:
        self.calls.append({k: frozenset(v) for k, v in wanted.items()})

    @property
    def current(self) -> dict[str, frozenset[str]]:
        return self.calls[-1] if self.calls else {}


class Events:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str]] = []

    def record(self, kind: str, ref: ObjectRef, reason: str, message: str, type_: str = "Warning",
               api_version: str | None = None) -> None:
        self.recorded.append((reason, message))


def view_with_service(ip: str = IP, local: bool = False) -> ClusterView:
    view = ClusterView()
    for name in NODES:
        view.upsert({"kind": "Node", "metadata": {"name": name},
                     "status": {"addresses": [{"type": "InternalIP", "address": f"198.18.0.1{name[-1]}"}]}})
    view.upsert({"kind": "IPAddressPool", "metadata": {"name": "p", "namespace": "metallb-system"},
                 "spec": {"addresses": ["198.18.0.200/29"]}})
    view.upsert({"kind": "L2Advertisement", "metadata": {"name": "l2", "namespace": "metallb-system"}, "spec": {}})
    view.upsert({"kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                 "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local" if local else "Cluster",
                          "ports": [{"port": 80}]},
                 "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
    return view


def speaker_for(me: str, view: ClusterView) -> tuple[Speaker, FakeResponder, Events]:
    responder, events = FakeResponder(), Events()
    speaker = Speaker(me, view, responder, lambda address: "eth0", events, clock=lambda: 100.0)
    return speaker, responder, events


WEB = ObjectRef("default", "web")
WINNER = choose(IP, NODES)
assert WINNER is not None
OTHER = next(n for n in NODES if n != WINNER)


def test_only_the_chosen_node_answers_and_only_once_its_rules_are_committed() -> None:
    view = view_with_service()
    speaker, responder, events = speaker_for(WINNER, view)
    speaker.set_live(frozenset(NODES))
    assert speaker.update() == {}, "not announced before this node's rules hold the address"
    assert speaker.decisions[WEB].node == WINNER
    speaker.set_committed(WEB, [IP])
    assert speaker.update() == {"eth0": frozenset({IP})}
    assert events.recorded == [("nodeAssigned", f'announcing from node "{WINNER}" with protocol "layer2"')]
    other, other_responder, _ = speaker_for(OTHER, view)
    other.set_live(frozenset(NODES))
    other.set_committed(WEB, [IP])
    assert other.update() == {} and other_responder.current == {}


def test_membership_changes_move_the_address_without_repeating_events() -> None:
    view = view_with_service()
    speaker, responder, events = speaker_for(OTHER, view)
    speaker.set_committed(WEB, [IP])
    speaker.set_live(frozenset(NODES))
    speaker.update()
    new_winner = choose(IP, set(NODES) - {WINNER})
    speaker.set_live(frozenset(NODES) - {WINNER})  # the winner died
    got = speaker.update()
    assert (got == {"eth0": frozenset({IP})}) == (new_winner == OTHER)
    recorded = len(events.recorded)
    speaker.set_live(frozenset(NODES) - {WINNER, next(n for n in NODES if n not in (WINNER, OTHER))})
    speaker.update()
    assert len(events.recorded) - recorded == (0 if new_winner == OTHER else 1), "nodeAssigned only on a change"


def test_not_settled_announces_nothing_and_carrier_loss_withdraws() -> None:
    view = view_with_service()
    speaker, responder, _ = speaker_for(WINNER, view)
    speaker.set_committed(WEB, [IP])
    speaker.set_live(frozenset(NODES), settled=False)
    assert speaker.update() == {}
    speaker.set_live(frozenset(NODES), settled=True)
    assert speaker.update() == {"eth0": frozenset({IP})}
    speaker.set_carrier("eth0", False)
    assert speaker.update() == {} and responder.current == {}
    speaker.set_carrier("eth0", True)
    assert speaker.update() == {"eth0": frozenset({IP})}


def test_etp_local_needs_a_ready_endpoint_on_the_node() -> None:
    view = view_with_service(local=True)
    speaker, _, _ = speaker_for(OTHER, view)
    speaker.set_committed(WEB, [IP])
    speaker.set_live(frozenset(NODES))
    speaker.update()
    assert speaker.decisions[WEB].node is None
    view.upsert({"kind": "EndpointSlice", "metadata": {"name": "web-1", "namespace": "default",
                                                        "labels": {"kubernetes.io/service-name": "web"}},
                 "addressType": "IPv4", "ports": [{"port": 8080}],
                 "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": True}, "nodeName": OTHER}]})
    assert speaker.update() == {"eth0": frozenset({IP})}


def test_split_brain_the_loser_stands_back_the_winner_announces_again() -> None:
    view = view_with_service()
    loser, loser_responder, events = speaker_for(OTHER, view)
    loser.set_committed(WEB, [IP])
    loser.set_live(frozenset({OTHER}))  # it believes it is alone
    assert loser.update() == {"eth0": frozenset({IP})}
    loser.conflict("eth0", IP, "02:00:00:00:00:01", WINNER)
    assert loser.update() == {}, "the deterministic winner keeps the address"
    assert events.recorded[-1][0] == "AnnouncementConflict"

    winner, winner_responder, _ = speaker_for(WINNER, view)
    winner.set_committed(WEB, [IP])
    winner.set_live(frozenset({WINNER}))
    winner.update()
    winner.conflict("eth0", IP, "02:00:00:00:00:02", OTHER)
    assert winner_responder.reannounced == ["eth0"], "the winner announces again at once"
    assert winner.update() == {"eth0": frozenset({IP})}
    assert winner.stats.conflicts == 1


def test_a_leaving_node_answering_during_its_hand_over_is_no_split_brain() -> None:
    view = view_with_service()
    successor, responder, events = speaker_for(OTHER, view)
    successor.set_committed(WEB, [IP])
    successor.set_live(frozenset({OTHER}))
    successor.update()
    successor.conflict("eth0", IP, "02:00:00:00:00:01", WINNER, other_leaving=True)
    assert successor.update() == {"eth0": frozenset({IP})} and responder.reannounced == ["eth0"]
    assert successor.stats.conflicts == 0 and not [e for e in events.recorded if e[0] == "AnnouncementConflict"]


def test_a_deleted_slice_takes_its_local_endpoints_with_it() -> None:
    view = view_with_service(local=True)
    speaker, _, _ = speaker_for(OTHER, view)
    speaker.set_committed(WEB, [IP])
    speaker.set_live(frozenset(NODES))
    view.upsert({"kind": "EndpointSlice", "metadata": {"name": "web-1", "namespace": "default",
                                                        "labels": {"kubernetes.io/service-name": "web"}},
                 "endpoints": [{"addresses": ["10.0.0.5"], "nodeName": OTHER}]})  # ready unset: ready
    assert speaker.update() == {"eth0": frozenset({IP})}
    view.delete("EndpointSlice", "default", "web-1")
    assert speaker.update() == {} and speaker.decisions[WEB].node is None


def test_an_interface_that_appears_later_is_found_without_another_change() -> None:
    """The node's address is not on any interface yet (a boot race, DHCP): nothing can be announced. Once
    it appears, the speaker finds it within a second, though nothing else changed."""
    view = view_with_service()
    responder = FakeResponder()
    interfaces: list[str | None] = [None]
    now = [100.0]
    speaker = Speaker(WINNER, view, responder, lambda address: interfaces[0], Events(), clock=lambda: now[0])
    speaker.set_live(frozenset(NODES))
    speaker.set_committed(WEB, [IP])
    assert speaker.update() == {}, "no interface holds the node's address yet"
    view.changes.clear()
    interfaces[0] = "eth0"
    assert speaker.update() == {}, "not looked up again at once: the agent's loop turns every 50 ms"
    now[0] += 1.0
    assert speaker.update() == {"eth0": frozenset({IP})}
    assert speaker.interface == "eth0"


def test_a_failing_interface_lookup_is_retried_at_the_same_pace_not_every_turn() -> None:
    view = view_with_service()
    calls: list[float] = []
    now = [100.0]

    def lookup(address: str | None) -> str | None:
        calls.append(now[0])
        if len(calls) < 3:
            raise OSError(105, "No buffer space available")
        return "eth0"

    speaker = Speaker(WINNER, view, FakeResponder(), lookup, Events(), clock=lambda: now[0])
    speaker.set_live(frozenset(NODES))
    speaker.set_committed(WEB, [IP])
    assert speaker.update() == {}, "the lookup failed: nothing announced, and no exception out of the turn"
    view.changes.clear()
    for _ in range(19):  # the agent's loop turns every 50 ms
        now[0] += 0.05
        speaker.update()
    assert len(calls) == 1, "looked up again only after LOOK_AGAIN_SECONDS"
    now[0] += 0.1
    assert speaker.update() == {} and len(calls) == 2
    now[0] += 1.0
    assert speaker.update() == {"eth0": frozenset({IP})} and len(calls) == 3
