"""BGP mode without a network: MetalLB's BGP objects parsed, which prefixes this node advertises to which
peer with which attributes (`lb.bgp.plan`), BIRD's configuration for it (checked by `bird -p`), the
control socket's replies, and the speaker's Events and metrics against a fake supervisor."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from nftproxy.agent.metrics import Metrics
from nftproxy.lb.announce import AnnouncedService, NodeInfo
from nftproxy.lb.bgp import Plan, Route, aggregation_fits, plan, router_id, session_name
from nftproxy.lb.bgp_objects import (
    Community,
    parse_bfd_profile,
    parse_bgp_advertisement,
    parse_bgp_peer,
    parse_community,
)
from nftproxy.lb.bgp_speaker import BGPSpeaker, BGPStatus, PasswordRead
from nftproxy.lb.bird import ProtocolStatus, parse_protocols, render
from nftproxy.lb.parse import parse_pool, unsupported_fields
from nftproxy.lb.view import ClusterView
from nftproxy.objects.model import ObjectRef
from nftproxy.objects.parse import InvalidObject

NS = "metallb-system"
ME = "node-1"
V4, V6 = "198.51.100.10", "2001:db8:5::10"


def peer(name: str = "tor", **spec: Any) -> dict[str, Any]:
    return {"kind": "BGPPeer", "metadata": {"name": name, "namespace": NS},
            "spec": {"myASN": 64512, "peerASN": 64513, "peerAddress": "198.18.0.254", **spec}}


def advert(name: str = "all", **spec: Any) -> dict[str, Any]:
    return {"kind": "BGPAdvertisement", "metadata": {"name": name, "namespace": NS}, "spec": spec}


def pool(name: str = "pub", *addresses: str) -> dict[str, Any]:
    return {"kind": "IPAddressPool", "metadata": {"name": name, "namespace": NS},
            "spec": {"addresses": list(addresses or ("198.51.100.0/24", "2001:db8:5::/120"))}}


def svc(*addresses: str, local: bool = False, nodes: tuple[str, ...] = (), name: str = "web") -> AnnouncedService:
    return AnnouncedService(ObjectRef("default", name), addresses, local, frozenset(nodes))


NODE = NodeInfo(ME, (("rack", "a"),), "198.18.0.11")


def run_plan(services: list[AnnouncedService], peers: list[dict[str, Any]], adverts: list[dict[str, Any]],
             committed: tuple[str, ...] = (V4, V6), node: NodeInfo = NODE, **kw: Any) -> Plan:
    return plan(ME, node, services, set(committed), [parse_pool(pool())],
                [parse_bgp_advertisement(a) for a in adverts], [parse_bgp_peer(p) for p in peers], **kw)


def routes(result: Plan) -> dict[str, list[Route]]:
    return {s.peer.name: list(s.routes) for s in result.sessions}


# --- objects ------------------------------------------------------------------------------------------
def test_bgppeer_fields_are_metallbs() -> None:
    p = parse_bgp_peer(peer(peerPort=1179, sourceAddress="198.18.0.11", holdTime="1m30s", keepaliveTime="30s",
                            connectTime="5s", routerID="10.0.0.1", ebgpMultiHop=True, bfdProfile="fast",
                            password="s3cret", enableGracefulRestart=False,
                            nodeSelectors=[{"matchLabels": {"rack": "a"}}]))
    assert (p.my_asn, p.peer_asn, p.address, p.port, p.source_address) == (64512, 64513, "198.18.0.254", 1179,
                                                                           "198.18.0.11")
    assert (p.hold_time, p.keepalive_time, p.connect_time, p.router_id) == (90, 30, 5, "10.0.0.1")
    assert p.ebgp_multihop and p.bfd_profile == "fast" and p.password == "s3cret" and not p.graceful_restart
    assert p.allows_node({"rack": "a"}) and not p.allows_node({"rack": "b"})
    assert not p.internal and p.family == 4
    defaults = parse_bgp_peer(peer())
    assert (defaults.hold_time, defaults.keepalive_time, defaults.port, defaults.graceful_restart) == (90, None, 179,
                                                                                                       True)
    dynamic = parse_bgp_peer(peer(peerASN=None, dynamicASN="internal"))
    assert dynamic.internal and dynamic.peer_asn is None
    secret = parse_bgp_peer(peer(passwordSecret={"name": "bgp-auth"}))
    assert secret.password_secret == ObjectRef(NS, "bgp-auth")


@pytest.mark.parametrize("spec, field, words", [
    ({"peerASN": None}, "spec.peerASN", "exactly one of peerASN and dynamicASN"),
    ({"dynamicASN": "internal"}, "spec.peerASN", "exactly one"),
    ({"holdTime": "2s"}, "spec.holdTime", "at least 3s"),
    ({"holdTime": "9s", "keepaliveTime": "10s"}, "spec.keepaliveTime", "longer than holdTime"),
    ({"holdTime": "soon"}, "spec.holdTime", "duration"),
    ({"peerAddress": "router"}, "spec.peerAddress", "router"),
    ({"peerAddress": None}, "spec.peerAddress", "unnumbered"),
    ({"sourceAddress": "2001:db8::11"}, "spec.sourceAddress", "family"),
    ({"password": 'a"b'}, "spec.password", "quotes"),
    ({"password": "x", "passwordSecret": {"name": "s"}}, "spec.passwordSecret", "not both"),
    ({"myASN": 0}, "spec.myASN", "from 1"),
    ({"routerID": "fd00::1"}, "spec.routerID", "IPv4"),
])
def test_bad_bgppeers_name_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidObject) as err:
        parse_bgp_peer(peer(**spec))
    assert err.value.field == field and words in err.value.message, err.value


def test_bgpadvertisement_and_bfdprofile_fields() -> None:
    a = parse_bgp_advertisement(advert(aggregationLength=24, aggregationLengthV6=120, localPref=200,
                                       communities=["65000:100", "large:64512:1:2", "65000:100"],
                                       ipAddressPools=["pub"], peers=["tor"],
                                       nodeSelectors=[{"matchLabels": {"x": "y"}}]))
    assert (a.aggregation_length, a.aggregation_length_v6, a.local_pref) == (24, 120, 200)
    assert [str(c) for c in a.communities] == ["65000:100", "large:64512:1:2"]
    assert a.pools == ("pub",) and a.allows_peer("tor") and not a.allows_peer("other")
    assert not a.allows_node({}) and a.allows_node({"x": "y"})
    assert parse_community("large:1:2:3") == Community((1, 2, 3))
    for bad in ("65536:1", "1:2:3", "no-export", "large:1:2"):
        with pytest.raises(ValueError):
            parse_community(bad)
    with pytest.raises(InvalidObject, match=r"spec.communities\[0\].*aliases are not supported"):
        parse_bgp_advertisement(advert(communities=["my-alias"]))
    b = parse_bfd_profile({"kind": "BFDProfile", "metadata": {"name": "fast", "namespace": NS},
                           "spec": {"receiveInterval": 100, "transmitInterval": 150, "detectMultiplier": 4,
                                    "passiveMode": True}})
    assert (b.receive_interval, b.transmit_interval, b.detect_multiplier, b.passive) == (100, 150, 4, True)
    with pytest.raises(InvalidObject, match="detectMultiplier"):
        parse_bfd_profile({"kind": "BFDProfile", "metadata": {"name": "x"}, "spec": {"detectMultiplier": 1}})


def test_fields_nftproxy_cannot_honour_are_reported() -> None:
    assert unsupported_fields("BGPPeer", peer(vrf="red", interface="eth1", disableMP=True,
                                              dualStackAddressFamily=False)) == ["spec.interface", "spec.vrf"]
    assert unsupported_fields("BGPPeer", peer(dualStackAddressFamily=True)) == ["spec.dualStackAddressFamily"]
    assert unsupported_fields("BGPAdvertisement", advert(localPref=5, communities=[])) == []
    assert unsupported_fields("BFDProfile", {"spec": {"echoMode": True, "echoInterval": 50, "minimumTtl": 2,
                                                      "passiveMode": True}}) == ["spec.echoMode", "spec.minimumTtl"]
    assert unsupported_fields("Community", {"spec": {}})[0].startswith("Community")


# --- which prefixes to which peer -------------------------------------------------------------------------
def test_every_eligible_node_advertises_a_host_route_per_address_to_peers_of_its_family() -> None:
    result = run_plan([svc(V4, V6)], [peer("tor"), peer("tor6", peerAddress="2001:db8::fe")], [advert()])
    assert routes(result) == {"tor": [Route(f"{V4}/32")], "tor6": [Route(f"{V6}/128")]}
    assert result.advertised == {V4: frozenset({"tor"}), V6: frozenset({"tor6"})}
    assert result.problems == ()


def test_etp_local_is_advertised_only_by_nodes_with_a_ready_endpoint() -> None:
    assert routes(run_plan([svc(V4, local=True, nodes=("node-2",))], [peer()], [advert()])) == {"tor": []}
    assert routes(run_plan([svc(V4, local=True, nodes=(ME,))], [peer()], [advert()])) == {"tor": [Route(f"{V4}/32")]}


def test_nothing_is_advertised_before_the_rules_are_committed_or_without_an_advertisement() -> None:
    assert routes(run_plan([svc(V4)], [peer()], [advert()], committed=())) == {"tor": []}
    assert routes(run_plan([svc(V4)], [peer()], [])) == {"tor": []}
    assert routes(run_plan([svc(V4)], [peer()], [advert(ipAddressPools=["other"])])) == {"tor": []}
    assert routes(run_plan([svc("203.0.113.9")], [peer()], [advert()], committed=("203.0.113.9",))) == {"tor": []}


def test_selectors_pick_nodes_and_peers() -> None:
    peers = [peer("a"), peer("b", peerAddress="198.18.0.253"), peer("c", peerAddress="198.18.0.252",
                                                                   nodeSelectors=[{"matchLabels": {"rack": "b"}}])]
    result = run_plan([svc(V4)], peers, [advert(peers=["b"])])
    assert routes(result) == {"a": [], "b": [Route(f"{V4}/32")]}, "peer c selects other nodes: no session"
    elsewhere = run_plan([svc(V4)], peers, [advert(nodeSelectors=[{"matchLabels": {"rack": "z"}}])])
    assert routes(elsewhere) == {"a": [], "b": []}


def test_aggregation_local_pref_for_ibgp_only_and_merged_attributes() -> None:
    peers = [peer("ebgp"), peer("ibgp", peerAddress="198.18.0.253", peerASN=64512)]
    adverts = [advert("agg", aggregationLength=24, localPref=100, communities=["65000:1"]),
               advert("more", aggregationLength=24, localPref=300, communities=["65000:2", "large:1:2:3"])]
    result = run_plan([svc(V4), svc("198.51.100.20", name="other")], peers, adverts,
                      committed=(V4, "198.51.100.20"))
    c = (Community((65000, 1)), Community((65000, 2)), Community((1, 2, 3)))
    assert routes(result) == {"ebgp": [Route("198.51.100.0/24", None, c)],
                              "ibgp": [Route("198.51.100.0/24", 300, c)]}
    assert result.advertised[V4] == frozenset({"ebgp", "ibgp"})


def test_an_aggregate_wider_than_the_pool_is_refused() -> None:
    small = parse_pool(pool("small", "198.51.100.8/29"))
    assert aggregation_fits(small, 29, 4) and aggregation_fits(small, 32, 4) and not aggregation_fits(small, 24, 4)
    ranged = parse_pool(pool("ranged", "198.51.100.10-198.51.100.13"))  # .10/31 and .12/31
    assert aggregation_fits(ranged, 31, 4) and not aggregation_fits(ranged, 30, 4)
    result = plan(ME, NODE, [svc(V4)], {V4}, [small], [parse_bgp_advertisement(advert(aggregationLength=24))],
                  [parse_bgp_peer(peer())])
    assert routes(result) == {"tor": []}
    (problem,) = result.problems
    assert problem.kind == "BGPAdvertisement"
    assert "spec.aggregationLength" in problem.message and "small" in problem.message


def test_sessions_carry_bfd_and_passwords_or_wait_for_them() -> None:
    fast = parse_bfd_profile({"kind": "BFDProfile", "metadata": {"name": "fast", "namespace": NS}, "spec": {}})
    result = run_plan([svc(V4)], [peer(bfdProfile="fast"), peer("x", peerAddress="198.18.0.9", bfdProfile="nope")],
                      [advert()], bfd_profiles={"fast": fast})
    assert [s.bfd for s in result.sessions] == [fast, None]
    assert "no BFDProfile named 'nope'" in result.problems[0].message
    secret = peer("s", passwordSecret={"name": "auth"})
    assert run_plan([svc(V4)], [secret], [advert()]).sessions == ()
    read = run_plan([svc(V4)], [secret], [advert()], passwords={ObjectRef(NS, "s"): "k3y"})
    assert read.sessions[0].password == "k3y"


def test_names_and_router_id() -> None:
    assert session_name(ObjectRef(NS, "tor-1.rack")) == session_name(ObjectRef(NS, "tor-1.rack"))
    assert session_name(ObjectRef(NS, "tor-1.rack")).startswith("peer_tor_1_rack_")
    assert session_name(ObjectRef(NS, "a-b")) != session_name(ObjectRef(NS, "a.b"))
    assert router_id(NODE, ME) == "198.18.0.11"
    v6only = router_id(NodeInfo(ME, (), "2001:db8::11"), ME)
    assert v6only == router_id(None, ME) and v6only != router_id(None, "node-2")


# --- BIRD's configuration -----------------------------------------------------------------------------
def bird_parses(text: str, tmp_path: Path) -> None:
    bird = shutil.which("bird") or "/usr/sbin/bird"
    assert Path(bird).exists(), "BIRD 2 is needed (Debian: bird2; bash e2e/bootstrap.sh installs it)"
    conf = tmp_path / "bird.conf"
    conf.write_text(text)
    proc = subprocess.run([bird, "-p", "-c", str(conf)], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, f"{proc.stderr}\n{text}"


def test_rendered_configuration_is_what_bird_accepts(tmp_path: Path) -> None:
    fast = parse_bfd_profile({"kind": "BFDProfile", "metadata": {"name": "fast", "namespace": NS},
                              "spec": {"receiveInterval": 100, "transmitInterval": 100, "passiveMode": True}})
    peers = [peer("tor", holdTime="3s", keepaliveTime="1s", password="k3y", bfdProfile="fast"),
             peer("ibgp", peerAddress="198.18.0.253", peerASN=64512, sourceAddress="198.18.0.11", routerID="10.1.1.1"),
             peer("tor6", peerAddress="2001:db8::fe", ebgpMultiHop=True, enableGracefulRestart=False, peerPort=1179),
             peer("dyn", peerAddress="198.18.0.252", peerASN=None, dynamicASN="external", holdTime="0s")]
    adverts = [advert(localPref=200, communities=["65000:100", "large:64512:1:2"])]
    result = run_plan([svc(V4, V6)], peers, adverts, bfd_profiles={"fast": fast})
    text = render(result, router_id(NODE, ME), ME)
    bird_parses(text, tmp_path)
    tor = next(s.name for s in result.sessions if s.peer.name == "tor")
    assert f"protocol bgp {tor} {{" in text
    assert f"\troute {V4}/32 blackhole {{ bgp_community.add((65000,100)); bgp_large_community.add((64512,1,2)); }};" \
        in text, "LOCAL_PREF is not for eBGP"
    assert "bgp_local_pref = 200;" in text and "graceful restart time 120;" in text
    assert "bfd { min rx interval 100 ms;" in text and "graceful restart off;" in text
    assert "neighbor 198.18.0.252 port 179 external;" in text
    assert "protocol bfd nftproxy_bfd { }" in text and 'password "k3y";' in text and "kernel" not in text
    assert render(result, "198.18.0.11", ME) == text, "deterministic"
    assert "graceful restart time 30;" in render(result, "198.18.0.11", ME, restart_time=30)


def test_a_node_without_routes_still_renders_a_valid_configuration(tmp_path: Path) -> None:
    bird_parses(render(run_plan([], [peer()], []), "198.18.0.11", ME), tmp_path)


SHOW_PROTOCOLS = [
    (2002, "Name       Proto      Table      State  Since         Info"),
    (1002, "device1    Device     ---        up     1764878907    "),
    (1002, "peer_tor_1 BGP        ---        up     1764878908    Established   "),
    (1006, "  BGP state:          Established"), (1006, "    Neighbor address: 198.18.0.254"),
    (1006, "  Channel ipv4"), (1006, "    Routes:         0 imported, 2 exported, 0 preferred"),
    (1002, "peer_bad_2 BGP        ---        start  1764878908    Active        Socket: Connection refused"),
    (1006, "  BGP state:          Active"), (1006, "    Last error:       Socket: Connection refused"),
    (0, ""),
]


def test_show_protocols_is_read_per_session() -> None:
    got = parse_protocols(SHOW_PROTOCOLS)
    assert got["peer_tor_1"] == ProtocolStatus("peer_tor_1", "BGP", "up", "Established", 1764878908.0,
                                               "Established", "", 2)
    assert got["peer_tor_1"].established and not got["peer_bad_2"].established
    assert got["peer_bad_2"].last_error == "Socket: Connection refused" and got["peer_bad_2"].bgp_state == "Active"


# --- the speaker on the loop ------------------------------------------------------------------------------
class FakeSupervisor:
    def __init__(self) -> None:
        self.applied: list[str | None] = []
        self.stopped: list[bool] = []

    def apply(self, config: str | None) -> None:
        self.applied.append(config)

    def stop(self, graceful_restart: bool = True) -> None:
        self.stopped.append(graceful_restart)


class Events:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, str, str, str]] = []

    def record(self, kind: str, ref: ObjectRef, reason: str, message: str, type_: str = "Warning",
               api_version: str | None = None) -> None:
        self.recorded.append((kind, str(ref), reason, message, type_))


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def world(*objects: Mapping[str, Any]) -> tuple[ClusterView, BGPSpeaker, FakeSupervisor, Events, Metrics, Clock]:
    view = ClusterView()
    view.upsert({"kind": "Node", "metadata": {"name": ME, "labels": {"rack": "a"}},
                 "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.11"}]}})
    view.upsert(pool())
    for obj in objects:
        view.upsert(obj)
    sup, events, metrics, clock = FakeSupervisor(), Events(), Metrics(CollectorRegistry()), Clock()
    speaker = BGPSpeaker(ME, view, sup, events, metrics, clock=clock)
    return view, speaker, sup, events, metrics, clock


def lb_service(name: str, ip: str, local: bool = False) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local" if local else "Cluster",
                     "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_speaker_starts_after_the_first_commit_and_withdraws_what_goes() -> None:
    view, speaker, sup, events, metrics, clock = world(peer(), advert(), lb_service("web", V4))
    speaker.update()
    assert sup.applied == [], "nothing before this node's first sync is committed"
    speaker.set_committed(ObjectRef("default", "web"), [V4])
    speaker.ready = True
    speaker.update()
    assert sup.applied and f"route {V4}/32 blackhole;" in (sup.applied[-1] or "")
    assert sample(metrics, "nftproxy_lb_bgp_advertised", ip=V4, peer="tor") == 1
    speaker.update()
    assert len(sup.applied) == 1, "no change, no new configuration"
    view.delete("Service", "default", "web")
    speaker.update()
    assert f"route {V4}/32" not in (sup.applied[-1] or "") and sup.applied[-1] is not None
    assert sample(metrics, "nftproxy_lb_bgp_advertised", ip=V4, peer="tor") is None
    view.delete("BGPPeer", NS, "tor")
    view.changes.clear()
    view.changes.bgp = True
    speaker.update()
    assert sup.applied[-1] is None, "no peer left: BIRD stops"
    speaker.stop()
    assert sup.stopped == [True]


def test_sessions_that_do_not_come_up_get_one_event_naming_peer_and_reason() -> None:
    view, speaker, sup, events, metrics, clock = world(peer(peerPort=1179), advert())
    speaker.ready = True
    speaker.update()
    (session,) = speaker.plan.sessions
    down = ProtocolStatus(session.name, "BGP", "start", "Active", None, "Active", "Socket: Connection refused")
    speaker.status(BGPStatus({session.name: down}))
    assert events.recorded == [], "a grace period first"
    assert sample(metrics, "nftproxy_lb_bgp_session_up", peer="tor", address="198.18.0.254") == 0
    assert sample(metrics, "nftproxy_lb_bgp_session_state", peer="tor", address="198.18.0.254", state="Active") == 1
    clock.now += 6
    speaker.status(BGPStatus({session.name: down}))
    speaker.status(BGPStatus({session.name: down}))
    (event,) = events.recorded
    assert event[:3] == ("BGPPeer", f"{NS}/tor", "BGPSessionDown")
    assert "198.18.0.254:1179 (AS 64513)" in event[3] and "Active: Socket: Connection refused" in event[3]
    up = ProtocolStatus(session.name, "BGP", "up", "Established", None, "Established", "", 3)
    speaker.status(BGPStatus({session.name: up}))
    assert events.recorded[-1][2:] == ("BGPSessionEstablished", events.recorded[-1][3], "Normal")
    assert sample(metrics, "nftproxy_lb_bgp_session_up", peer="tor", address="198.18.0.254") == 1
    assert sample(metrics, "nftproxy_lb_bgp_prefixes_advertised", peer="tor", address="198.18.0.254") == 3
    assert sample(metrics, "nftproxy_lb_bgp_session_state", peer="tor", address="198.18.0.254", state="Active") is None
    assert speaker.summary() == [{"peer": f"{NS}/tor", "address": "198.18.0.254", "state": "Established",
                                  "established": True, "last_error": "", "prefixes": []}]


def test_a_password_from_a_secret_opens_the_session_and_an_unreadable_one_is_reported() -> None:
    view, speaker, sup, events, metrics, clock = world(peer(passwordSecret={"name": "auth"}), advert())
    speaker.ready = True
    speaker.update()
    assert sup.applied == [], "no session without its key"
    speaker.password_read(PasswordRead(ObjectRef(NS, "tor"), "k3y"))
    speaker.update()
    assert 'password "k3y";' in (sup.applied[-1] or "")
    speaker.password_read(PasswordRead(ObjectRef(NS, "tor"), None, "Secret metallb-system/auth: Forbidden"))
    speaker.update()
    assert sup.applied[-1] is None
    assert events.recorded[-1][2] == "InvalidBGPPeer" and "Forbidden" in events.recorded[-1][3]


def test_graceful_restart_off_withdraws_on_exit() -> None:
    view, speaker, sup, events, metrics, clock = world(peer(enableGracefulRestart=False), advert())
    speaker.ready = True
    speaker.update()
    speaker.stop()
    assert sup.stopped == [False]
