"""The packet tracer itself (tests/nft_tracer.py), on small hand-made kernels.

The kernels here are plain `sets`/`chains` views with a skeleton of their own: the tracer reads only
those two views of a FakeKernel, so its own tests do not lean on the fake's internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import pytest

from nftproxy.desired.skeleton import skeleton_text
from tests.nft_tracer import ClassId, Packet, Tracer, TracerError, parse_rule, parse_skeleton

SKELETON = """
table inet t {
	chain services {
		ip daddr . meta l4proto . th dport vmap @svc
	}
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump services
	}
	chain nat-output {
		type nat hook output priority -100; policy accept;
		jump services
	}
	chain nat-postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x00004000 == 0x00000000 return
		masquerade fully-random
	}
	chain filter-forward {
		type filter hook forward priority filter; policy accept;
		ct state new ip daddr @blocked reject
	}
	chain filter-input {
		type filter hook input priority filter; policy accept;
		ct state new ip daddr @blocked drop
	}
}
"""

NODE = ["192.0.2.1", "2001:db8::1"]


@dataclass
class Kernel:
    """What the tracer reads of a FakeKernel: sets (element text -> (data, comment)) and chains."""

    sets: dict[str, dict[str, tuple[str | None, str | None]]] = field(default_factory=dict)
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)


def kernel(chains: Mapping[str, tuple[str, ...]], **sets: Mapping[str, str | None]) -> Kernel:
    """Chains plus sets given as key -> data; set names use _ for - (Python keywords)."""
    k = Kernel(chains={name: () for name, _ in _skeleton_chains()} | dict(chains))
    k.sets = {"svc": {}, "blocked": {}}
    for name, elements in sets.items():
        k.sets[name.replace("_", "-")] = {key: (data, None) for key, data in elements.items()}
    return k


def _skeleton_chains() -> list[tuple[str, tuple[str, ...]]]:
    return list(parse_skeleton(SKELETON)[0].items())


def tracer(k: Kernel) -> Tracer:
    return Tracer(k, NODE, skeleton=SKELETON)


def lb(name: str, rules: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {name: rules}


WEB = lb("web", ("meta l4proto { tcp, udp } dnat ip to ip daddr . th dport . numgen random mod 3 map @backends",))


def test_numgen_reports_every_endpoint_with_its_share() -> None:
    k = kernel(WEB, svc={"10.96.0.1 . tcp . 80": "goto web"},
               backends={"10.96.0.1 . 80 . 0": "10.0.1.1 . 8080", "10.96.0.1 . 80 . 1": "10.0.1.2 . 8080",
                         "10.96.0.1 . 80 . 2": "10.0.1.1 . 8080"})
    t = tracer(k).trace(Packet("10.0.0.5", "10.96.0.1", "tcp", 80))
    assert t.verdict == "accept"
    assert t.output == "10.0.1.1:8080, 10.0.1.2:8080"
    assert t.endpoints == {("10.0.1.1", 8080), ("10.0.1.2", 8080)}
    assert t.shares == {("10.0.1.1", 8080): Fraction(2, 3), ("10.0.1.2", 8080): Fraction(1, 3)}
    assert len(t.paths) == 3 and not t.masquerade
    # udp matches the anonymous set; sctp does not: accepted, not DNATed
    assert tracer(k).trace(Packet("10.0.0.5", "10.96.0.1", "udp", 80)).output == "ACCEPT"
    assert tracer(k).trace(Packet("10.0.0.5", "10.96.0.1", "sctp", 80)).paths[0].endpoint is None


def test_skeleton_chains_come_from_the_skeleton_text_whether_the_kernel_lists_them_or_not() -> None:
    sets = kernel({}, svc={"10.96.0.1 . tcp . 80": "goto web"}, backends={"10.96.0.1 . 80 . 0": "10.0.1.1 . 8080"}).sets
    only_dynamic = Kernel(sets=sets,
                          chains={"web": ("dnat ip to ip daddr . th dport . numgen random mod 1 map @backends",)})
    assert Tracer(only_dynamic, NODE, skeleton=SKELETON).trace(Packet("10.0.0.5", "10.96.0.1", "tcp", 80)).output \
        == "10.0.1.1:8080"


def test_every_combination_of_several_numgens_is_a_path() -> None:
    chains = lb("web", ("meta mark set numgen random mod 2", "meta mark 1 drop",
                        "dnat ip to ip daddr . th dport . numgen random mod 3 map @backends"))
    backends = {f"10.96.0.1 . 80 . {i}": f"10.0.1.{i + 1} . 8080" for i in range(3)}
    t = tracer(kernel(chains, svc={"10.96.0.1 . tcp . 80": "goto web"}, backends=backends)).trace(
        Packet("10.0.0.5", "10.96.0.1", "tcp", 80))
    assert sorted(p.choices for p in t.paths) == [(0, 0), (0, 1), (0, 2), (1,)]
    assert t.verdict == "mixed" and t.output == "10.0.1.1:8080, 10.0.1.2:8080, 10.0.1.3:8080, DROP"
    assert sum(p.probability for p in t.paths) == 1
    assert t.shares == {(f"10.0.1.{i}", 8080): Fraction(1, 6) for i in (1, 2, 3)}


def test_a_map_miss_ends_the_rule_and_the_packet_goes_on() -> None:
    k = kernel(WEB, svc={"10.96.0.1 . tcp . 80": "goto web"}, backends={"10.96.0.1 . 80 . 0": "10.0.1.1 . 8080"})
    t = tracer(k).trace(Packet("10.0.0.5", "10.96.0.1", "tcp", 80))
    assert t.output == "10.0.1.1:8080, ACCEPT", "slots 1 and 2 miss the map: no DNAT, accepted"


def test_masquerade_follows_the_mark_and_only_forwarded_packets_reach_postrouting() -> None:
    marked = lb("web", ("meta mark set meta mark | 0x00004000", "dnat ip to ip daddr . th dport map @backends"))
    k = kernel(marked, svc={"10.96.0.1 . tcp . 80": "jump web", "192.0.2.1 . tcp . 80": "jump web"},
               backends={"10.96.0.1 . 80": "10.0.1.1 . 8080", "192.0.2.1 . 80": "192.0.2.1 . 8080"})
    forwarded = tracer(k).trace(Packet("10.0.0.5", "10.96.0.1", "tcp", 80))
    assert forwarded.output == "10.0.1.1:8080" and forwarded.masquerade
    local = tracer(k).trace(Packet("10.0.0.5", "192.0.2.1", "tcp", 80))
    assert local.output == "192.0.2.1:8080" and not local.masquerade, "input: no postrouting"
    unmarked = kernel(lb("web", ("dnat ip to ip daddr . th dport map @backends",)),
                      svc={"10.96.0.1 . tcp . 80": "goto web"}, backends={"10.96.0.1 . 80": "10.0.1.1 . 8080"})
    assert not tracer(unmarked).trace(Packet("10.0.0.5", "10.96.0.1", "tcp", 80)).masquerade


def test_filter_verdicts_after_routing() -> None:
    k = kernel({}, blocked={"10.96.0.0/16": None, "192.0.2.1": None})
    assert tracer(k).trace(Packet("10.0.0.5", "10.96.3.4", "udp", 53)).output == "REJECT"  # forward
    assert tracer(k).trace(Packet("10.0.0.5", "192.0.2.1", "udp", 53)).output == "DROP"  # input
    assert tracer(k).trace(Packet("10.0.0.5", "10.97.0.1", "udp", 53)).output == "ACCEPT"


def test_interval_concatenations_and_negated_lookups() -> None:
    chains = lb("fw", ("ip daddr . th dport . ip saddr != @allow drop", "ip daddr . th dport . ip saddr @allow accept",
                       "drop"))
    chains["services"] = ("ip daddr 203.0.113.7 jump fw",)
    k = kernel(chains, allow={"203.0.113.7 . 80 . 198.51.100.0/24": None, "203.0.113.7 . 80 . 10.1.0.1-10.1.0.9": None})
    t = tracer(k)
    assert t.trace(Packet("198.51.100.77", "203.0.113.7", "tcp", 80)).output == "ACCEPT"
    assert t.trace(Packet("10.1.0.5", "203.0.113.7", "tcp", 80)).output == "ACCEPT"
    assert t.trace(Packet("198.51.101.1", "203.0.113.7", "tcp", 80)).output == "DROP"
    assert t.trace(Packet("198.51.100.77", "203.0.113.7", "tcp", 81)).output == "DROP"


def test_jump_returns_goto_does_not() -> None:
    chains = {"services": ("jump a", "goto b", "drop"), "a": ("return", "drop"), "b": ("meta l4proto udp drop",)}
    t = tracer(kernel(chains))
    assert t.trace(Packet("10.0.0.5", "10.0.0.9", "tcp", 1)).output == "ACCEPT", \
        "b ends: back to the base chain's caller"
    assert t.trace(Packet("10.0.0.5", "10.0.0.9", "udp", 1)).output == "DROP"


def test_priority_classes_and_ct_status_dnat() -> None:
    chains = {
        "services": ("meta priority set ip daddr . meta l4proto . th dport map @svc-class "
                     "meta priority vmap @classes",),
        "web": ("meta priority set none", "ct status dnat drop", "dnat ip to ip daddr . th dport map @backends",
                "drop"),
    }
    k = kernel(chains, svc_class={"10.96.0.1 . tcp . 80": "4100:1"}, classes={"4100:1": "goto web"},
               backends={"10.96.0.1 . 80": "10.0.1.1 . 8080"})
    t = tracer(k).trace(Packet("10.0.0.5", "10.96.0.1", "tcp", 80))
    assert t.output == "10.0.1.1:8080", t
    assert any("goto web" in step for step in t.paths[0].trail)
    assert ClassId.parse("4100:1") == ClassId(0x4100, 1) and ClassId.parse("none") == ClassId(0, 0)


def test_ipv4_selectors_never_match_ipv6_packets() -> None:
    chains = {"services": ("ip saddr 0.0.0.0/0 drop", "ip6 saddr 2001:db8::/32 reject")}
    t = tracer(kernel(chains))
    assert t.trace(Packet("10.0.0.5", "10.0.0.9", "tcp", 1)).output == "DROP"
    assert t.trace(Packet("2001:db8::5", "2001:db8::9", "tcp", 1)).output == "REJECT"
    assert t.trace(Packet("2001:db9::5", "2001:db8::9", "tcp", 1)).output == "ACCEPT"
    with pytest.raises(ValueError):
        Packet("10.0.0.5", "2001:db8::9", "tcp", 1)


def test_fib_local_and_the_output_hook() -> None:
    chains = {"services": ("fib saddr type local meta mark set meta mark | 0x00004000",
                           "fib daddr type local ip daddr != 127.0.0.0/8 th dport 30080 goto np"),
              "np": ("dnat ip to meta l4proto . th dport map @nodeports",)}
    k = kernel(chains, nodeports={"tcp . 30080": "10.0.1.1 . 8080"})
    t = tracer(k)
    from_node = t.trace(Packet("192.0.2.1", "192.0.2.1", "tcp", 30080), hook="output")
    assert from_node.output == "10.0.1.1:8080" and from_node.masquerade
    from_outside = t.trace(Packet("198.51.100.1", "192.0.2.1", "tcp", 30080))
    assert from_outside.output == "10.0.1.1:8080" and not from_outside.masquerade
    assert t.trace(Packet("127.0.0.1", "127.0.0.1", "tcp", 30080), hook="output").output == "ACCEPT"
    assert t.trace(Packet("198.51.100.1", "192.0.2.9", "tcp", 30080)).output == "ACCEPT", "not a local address"


def test_affinity_updates_steer_later_connections_until_they_time_out() -> None:
    chains = {
        "services": ("ip daddr 10.96.0.1 goto web",),
        "web": ("ip saddr . ip daddr . th dport @sticky meta l4proto tcp "
                "dnat ip to ip saddr . ip daddr . th dport map @sticky",
                "dnat ip to ip daddr . th dport . numgen random mod 2 map @backends"),
        "nat-postrouting": ("ct status dnat ct original ip daddr 10.96.0.1 update @sticky { ct original ip saddr . "
                            "ct original ip daddr . ct original proto-dst timeout 10s : ip daddr . th dport }",),
    }
    k = kernel(chains, sticky={},
               backends={"10.96.0.1 . 80 . 0": "10.0.1.1 . 8080", "10.96.0.1 . 80 . 1": "10.0.1.2 . 8080"})
    t = tracer(k)
    packet = Packet("10.0.0.5", "10.96.0.1", "tcp", 80)
    first = t.trace(packet)
    assert first.addresses == {"10.0.1.1", "10.0.1.2"}
    assert first.path_to(("10.0.1.2", 8080)).updates[0].key == "10.0.0.5 . 10.96.0.1 . 80"
    t.connect(packet, endpoint=("10.0.1.2", 8080))
    assert t.trace(packet).output == "10.0.1.2:8080", "the entry steers"
    assert k.sets["sticky"] == {}, "the fake is never written"
    assert t.trace(Packet("10.0.0.6", "10.96.0.1", "tcp", 80)).addresses == {"10.0.1.1", "10.0.1.2"}
    t.advance(9)
    assert t.trace(packet).output == "10.0.1.2:8080"
    t.connect(packet)  # a new connection refreshes the timeout
    t.advance(9)
    assert t.trace(packet).output == "10.0.1.2:8080"
    t.advance(1.5)
    assert t.trace(packet).addresses == {"10.0.1.1", "10.0.1.2"}, "timed out: balanced afresh"


def test_jhash_is_opaque_but_equal_for_equal_inputs() -> None:
    chains = {
        "services": ("ip6 daddr 2001:db8:2::1 goto web",),
        "web": ("jhash ip6 saddr mod 4294967295 seed 0x1 . th dport @sticky meta l4proto tcp "
                "dnat ip6 to jhash ip6 saddr mod 4294967295 seed 0x1 . th dport map @sticky : th dport map @ports",
                "dnat ip6 to ip6 daddr . th dport . numgen random mod 2 map @backends"),
        "nat-postrouting": ("ct status dnat update @sticky { jhash ct original ip6 saddr mod 4294967295 seed 0x1 . "
                            "ct original proto-dst timeout 5s : ip6 daddr }",),
    }
    k = kernel(chains, sticky={}, ports={"80": "8080"},
               backends={"2001:db8:2::1 . 80 . 0": "2001:db8:1::a . 8080",
                         "2001:db8:2::1 . 80 . 1": "2001:db8:1::b . 8080"})
    t = tracer(k)
    packet = Packet("2001:db8::5", "2001:db8:2::1", "tcp", 80)
    assert t.trace(packet).output == "[2001:db8:1::a]:8080, [2001:db8:1::b]:8080"
    t.connect(packet, endpoint=("2001:db8:1::b", 8080))
    assert t.trace(packet).output == "[2001:db8:1::b]:8080"
    assert len(t.trace(Packet("2001:db8::6", "2001:db8:2::1", "tcp", 80)).endpoints) == 2


@pytest.mark.parametrize("rule", [
    "tcp dport 80 accept",  # upstream's form, not nftproxy's: unknown selector
    "counter",
    "ip daddr 10.0.0.1 log prefix \"x\"",
    "ip daddr 10.0.0.1 notrack",
    "meta l4proto gre accept",
    "ip daddr not-an-address drop",
    "ct state established accept",
    "dnat ip to 10.0.1.1 . 8080",  # a literal target: nftproxy always DNATs through a map
    "ct original ip dport 80",
    "meta skuid 0 accept",
    "meta mark set 0x1 accept trailing",
    "ip daddr . th dport 10.0.0.1 drop",
    "numgen inc mod 2 map @m",
    "dnat ip from x",
    "ip daddr 10.0.0.1 drop comment \"x\" accept",
    "ip daddr",
    "th dport set 1",
    "drop ip daddr 10.0.0.1",  # a verdict ends the rule
    "dnat ip to ip daddr . th dport map @m accept",
])
def test_unknown_rule_text_raises(rule: str) -> None:
    with pytest.raises(TracerError):
        parse_rule(rule)
    # in a chain the tracer will never reach, too: rules are parsed when the tracer is built
    with pytest.raises(TracerError, match="chain unreached"):
        tracer(kernel({"unreached": (rule,)}))


def test_what_the_kernel_lacks_raises_when_reached() -> None:
    with pytest.raises(TracerError, match="@nowhere"):
        tracer(kernel({"services": ("ip daddr @nowhere drop",)})).trace(Packet("10.0.0.5", "10.0.0.9", "tcp", 1))
    with pytest.raises(TracerError, match="chain missing"):
        tracer(kernel({"services": ("goto missing",)})).trace(Packet("10.0.0.5", "10.0.0.9", "tcp", 1))
    with pytest.raises(TracerError, match="not a verdict"):
        tracer(kernel({}, svc={"10.0.0.9 . tcp . 1": "4100:1"})).trace(Packet("10.0.0.5", "10.0.0.9", "tcp", 1))
    with pytest.raises(TracerError, match="components"):
        tracer(kernel({}, svc={"10.0.0.9 . tcp": "drop"})).trace(Packet("10.0.0.5", "10.0.0.9", "tcp", 1))
    with pytest.raises(TracerError, match="loop"):
        tracer(kernel({"services": ("jump services",)})).trace(Packet("10.0.0.5", "10.0.0.9", "tcp", 1))
    with pytest.raises(TracerError, match="loop"):
        tracer(kernel({"services": ("goto services",)})).trace(Packet("10.0.0.5", "10.0.0.9", "tcp", 1))
    with pytest.raises(TracerError, match="no table"):
        Tracer(Kernel(), NODE)


def test_unknown_skeleton_headers_raise() -> None:
    with pytest.raises(TracerError, match="priority"):
        parse_skeleton("chain x {\n\ttype filter hook input priority sideways; policy accept;\n}\n")
    with pytest.raises(TracerError, match="header"):
        parse_skeleton("chain x {\n\ttype filter hook input device eth0 priority 0;\n}\n")
    with pytest.raises(TracerError, match="not modelled"):
        Tracer(kernel({}), NODE, skeleton="chain x {\n\ttype route hook output priority 0; policy accept;\n}\n")


def test_the_real_skeleton_parses_whole() -> None:
    chains, bases = parse_skeleton(skeleton_text())
    hooks = {(b.name, b.hook, b.priority) for b in bases}
    assert ("nat-prerouting", "prerouting", -100) in hooks and ("nat-postrouting", "postrouting", 100) in hooks
    assert ("filter-prerouting", "prerouting", -110) in hooks and ("filter-forward", "forward", 0) in hooks
    assert chains["services"] and all(parse_rule(rule) for rules in chains.values() for rule in rules)
