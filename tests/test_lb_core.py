"""The bare-metal LoadBalancer's pure core: parsing MetalLB objects, allocation, announcer choice."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest

from nftproxy.lb.allocator import Allocator, Assigned, Refused
from nftproxy.lb.announce import AnnouncedService, NodeInfo, choose, decide, wanted_on
from nftproxy.lb.parse import (
    handles,
    parse_address_range,
    parse_l2_advertisement,
    parse_pool,
    parse_request,
    unsupported_fields,
)
from nftproxy.objects.parse import InvalidObject


def pool(name: str, *addresses: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": name, "namespace": "metallb-system", **spec.pop("meta", {})},
            "spec": {"addresses": list(addresses), **spec}}


def service(name: str, *ports: tuple[str, int], namespace: str = "default", annotations: dict[str, str] | None = None,
            families: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {},
                         "labels": spec.pop("labels", {}), "creationTimestamp": "2026-12-04T10:00:00Z"},
            "spec": {"type": "LoadBalancer", "ipFamilies": families or ["IPv4"],
                     "ports": [{"name": f"p{i}", "protocol": proto, "port": port}
                               for i, (proto, port) in enumerate(ports or [("TCP", 80)])], **spec}}


def allocator(*pools: dict[str, Any]) -> Allocator:
    return Allocator([parse_pool(p) for p in pools])


def assign(alloc: Allocator, svc: dict[str, Any], ns_labels: dict[str, str] | None = None) -> Assigned | Refused:
    return alloc.allocate(parse_request(svc), ns_labels)


# --- parsing ----------------------------------------------------------------------------------------
def test_pool_entries_cidrs_and_ranges_both_families() -> None:
    p = parse_pool(pool("p", "192.168.10.0/30", "192.168.9.1-192.168.9.5", "fc00::/126"))
    assert [r.size for r in p.ranges] == [4, 5, 4]
    assert p.families() == {4, 6}
    assert p.auto_assign and not p.avoid_buggy_ips and not p.restricted
    assert p.contains("192.168.9.5") and not p.contains("192.168.9.6")


@pytest.mark.parametrize("entry, why", [
    ("192.168.9.5-192.168.9.1", "ends before it starts"),
    ("10.0.0.1-fc00::1", "mixes IPv4 and IPv6"),
    ("not-an-ip", "not a CIDR"),
])
def test_bad_pool_entries_name_the_field(entry: str, why: str) -> None:
    with pytest.raises(InvalidObject) as err:
        parse_pool(pool("bad", "10.0.0.0/24", entry))
    assert err.value.field == "spec.addresses[1]" and why in str(err.value)
    assert "IPAddressPool metallb-system/bad" in str(err.value)


def test_pool_type_errors_and_overlaps() -> None:
    with pytest.raises(InvalidObject, match="spec.autoAssign: must be true or false"):
        parse_pool(pool("p", "10.0.0.0/24", autoAssign="yes"))
    with pytest.raises(InvalidObject, match="overlaps"):
        parse_pool(pool("p", "10.0.0.0/24", "10.0.0.128/25"))
    with pytest.raises(InvalidObject, match="spec.addresses: required"):
        parse_pool(pool("p"))
    with pytest.raises(InvalidObject, match="operator"):
        parse_pool(pool("p", "10.0.0.0/24", serviceAllocation={
            "serviceSelectors": [{"matchExpressions": [{"key": "a", "operator": "Maybe"}]}]}))


def test_address_range_of_a_single_host() -> None:
    r = parse_address_range("198.18.0.200/32")
    assert r.first == r.last and r.family == 4


def test_request_annotations_both_vendors_and_legacy_field() -> None:
    req = parse_request(service("a", annotations={"metallb.io/loadBalancerIPs": "10.0.0.5",
                                                  "metallb.io/allow-shared-ip": "k", "metallb.io/address-pool": "p"}))
    assert req.requested == ("10.0.0.5",) and req.sharing_key == "k" and req.pool == "p"
    assert parse_request(service("b", annotations={"lbipam.cilium.io/ips": "10.0.0.6",
                                                   "lbipam.cilium.io/sharing-key": "s"})).sharing_key == "s"
    assert parse_request(service("c", annotations={"metallb.universe.tf/loadBalancerIPs": "10.0.0.7"})).requested \
        == ("10.0.0.7",)
    assert parse_request(service("d", loadBalancerIP="10.0.0.8")).requested == ("10.0.0.8",)
    dual = parse_request(service("e", families=["IPv6", "IPv4"],
                                 annotations={"metallb.io/loadBalancerIPs": "10.0.0.9,fc00::9"}))
    assert dual.families == (6, 4) and dual.requested == ("10.0.0.9", "fc00::9")


def test_request_wrong_family_and_garbage_are_refused_by_name() -> None:
    with pytest.raises(InvalidObject, match="is IPv6 but the Service's ipFamilies are IPv4"):
        parse_request(service("a", annotations={"metallb.io/loadBalancerIPs": "fc00::1"}))
    with pytest.raises(InvalidObject, match="'banana' is not an IP address"):
        parse_request(service("a", loadBalancerIP="banana"))
    with pytest.raises(InvalidObject, match="one per family"):
        parse_request(service("a", families=["IPv4", "IPv6"], loadBalancerIP="10.0.0.1"))


def test_load_balancer_class_decides_ownership() -> None:
    assert handles(service("a"), None)
    assert not handles(service("a", loadBalancerClass="other.io/lb"), None)
    assert handles(service("a", loadBalancerClass="ours"), "ours")
    assert not handles(service("a"), "ours")
    assert not handles({**service("a"), "spec": {"type": "ClusterIP"}}, None)


def test_unsupported_fields_are_listed() -> None:
    assert unsupported_fields("IPAddressPool", pool("p", "10.0.0.0/24", allocateTo="x")) == ["spec.allocateTo"]
    assert unsupported_fields("BGPAdvertisement", {"spec": {}}) == []  # BGP mode: tests/test_lb_bgp.py
    assert unsupported_fields("Community", {"spec": {}})[0].startswith("Community")


# --- allocation -------------------------------------------------------------------------------------
def test_seed_pool_of_one_address_second_service_pending_until_freed() -> None:
    alloc = allocator(pool("seed", "198.18.0.200/32"))
    first = assign(alloc, service("first"))
    assert first == Assigned(("198.18.0.200",), "seed")
    second = assign(alloc, service("second"))
    assert isinstance(second, Refused) and "no free IPv4 address in pool 'seed'" in second.reason
    alloc.release(parse_request(service("first")).ref)
    assert assign(alloc, service("second")) == Assigned(("198.18.0.200",), "seed")


def test_lowest_free_address_and_reuse_of_released() -> None:
    alloc = allocator(pool("p", "10.0.0.0/30"))
    got = [assign(alloc, service(f"s{i}")) for i in range(4)]
    assert [g.ips[0] for g in got if isinstance(g, Assigned)] == ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"]
    alloc.release(parse_request(service("s1")).ref)
    assert assign(alloc, service("new")) == Assigned(("10.0.0.1",), "p")


def test_keeps_what_it_holds_on_reallocation() -> None:
    alloc = allocator(pool("p", "10.0.0.0/28"))
    a = assign(alloc, service("a"))
    assert assign(alloc, service("a", ("TCP", 81))) == a


def test_avoid_buggy_ips_skips_dot_zero_and_255() -> None:
    alloc = allocator(pool("p", "10.0.0.255-10.0.1.1", avoidBuggyIPs=True))
    assert assign(alloc, service("a")) == Assigned(("10.0.1.1",), "p")
    assert alloc.pool_usage()["p"] == (1, 1)


def test_requested_outside_pools_taken_and_excluded() -> None:
    alloc = allocator(pool("p", "10.0.0.0/29"),
                      pool("team", "10.0.1.0/29", serviceAllocation={"namespaces": ["team"]}))
    out = assign(alloc, service("x", annotations={"metallb.io/loadBalancerIPs": "192.0.2.1"}))
    assert isinstance(out, Refused) and "outside every IPAddressPool" in out.reason
    assert assign(alloc, service("a", loadBalancerIP="10.0.0.3")) == Assigned(("10.0.0.3",), "p")
    taken = assign(alloc, service("b", loadBalancerIP="10.0.0.3"))
    assert isinstance(taken, Refused) and "taken by default/a" in taken.reason
    excluded = assign(alloc, service("c", loadBalancerIP="10.0.1.1"))
    assert isinstance(excluded, Refused) and "serviceAllocation excludes" in excluded.reason
    assert assign(alloc, service("c", namespace="team", loadBalancerIP="10.0.1.1")) == Assigned(("10.0.1.1",), "team")


def test_sharing_tcp_and_udp_on_one_address() -> None:
    alloc = allocator(pool("p", "10.0.0.0/29"))
    key = {"metallb.io/allow-shared-ip": "dns"}
    tcp = assign(alloc, service("dns-tcp", ("TCP", 53), annotations=key))
    udp = assign(alloc, service("dns-udp", ("UDP", 53), annotations=key))
    assert isinstance(tcp, Assigned) and tcp == udp
    clash = assign(alloc, service("dns-tcp2", ("TCP", 53), annotations=key))
    assert isinstance(clash, Assigned) and clash.ips != tcp.ips  # a port collision: another address
    pinned = assign(alloc, service("dns-tcp3", ("TCP", 53), annotations=key, loadBalancerIP=tcp.ips[0]))
    assert isinstance(pinned, Refused) and "port TCP/53" in pinned.reason and "dns-tcp" in pinned.reason
    other_key = assign(alloc, service("x", ("TCP", 99), annotations={"metallb.io/allow-shared-ip": "other"},
                                     loadBalancerIP=tcp.ips[0]))
    assert isinstance(other_key, Refused) and "another sharing key" in other_key.reason
    # the address stays with the remaining user when one goes
    alloc.release(parse_request(service("dns-tcp", annotations=key)).ref)
    assert alloc.holders(tcp.ips[0]) == {parse_request(service("dns-udp")).ref}


def test_etp_local_shares_only_with_identical_selectors() -> None:
    alloc = allocator(pool("p", "10.0.0.0/29"))
    key = {"metallb.io/allow-shared-ip": "k"}
    a = assign(alloc, service("a", ("TCP", 80), annotations=key, externalTrafficPolicy="Local",
                              selector={"app": "web"}))
    assert isinstance(a, Assigned)
    b = assign(alloc, service("b", ("TCP", 81), annotations=key, externalTrafficPolicy="Local",
                              selector={"app": "other"}, loadBalancerIP=a.ips[0]))
    assert isinstance(b, Refused) and "identical" in b.reason
    c = assign(alloc, service("c", ("TCP", 82), annotations=key, externalTrafficPolicy="Local",
                              selector={"app": "web"}, loadBalancerIP=a.ips[0]))
    assert c == a


def test_dual_stack_one_address_per_family_from_one_pool() -> None:
    alloc = allocator(pool("v4only", "10.0.0.0/30"), pool("dual", "10.1.0.0/30", "fc00::/126"))
    got = assign(alloc, service("d", families=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack"))
    assert got == Assigned(("10.1.0.0", "fc00::"), "dual")
    six_first = assign(alloc, service("e", families=["IPv6", "IPv4"]))
    assert six_first == Assigned(("fc00::1", "10.1.0.1"), "dual")


def test_pool_choice_priority_selectors_auto_assign_and_named_pool() -> None:
    alloc = allocator(
        pool("general", "10.0.0.0/29"),
        pool("manual", "10.0.2.0/29", autoAssign=False),
        pool("gold-2", "10.0.3.0/29", serviceAllocation={"priority": 20, "serviceSelectors": [
            {"matchLabels": {"tier": "gold"}}]}),
        pool("gold-1", "10.0.4.0/29", serviceAllocation={"priority": 10, "namespaceSelectors": [
            {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}],
            "serviceSelectors": [{"matchLabels": {"tier": "gold"}}]}),
    )
    assert assign(alloc, service("plain")).pool == "general"  # type: ignore[union-attr]
    assert assign(alloc, service("gold", labels={"tier": "gold"})).pool == "gold-2"  # type: ignore[union-attr]
    gold_team = assign(alloc, service("gold-a", labels={"tier": "gold"}), {"team": "a"})
    assert gold_team.pool == "gold-1"  # type: ignore[union-attr]
    named = assign(alloc, service("m", annotations={"metallb.io/address-pool": "manual"}))
    assert named == Assigned(("10.0.2.0",), "manual")
    missing = assign(alloc, service("n", annotations={"metallb.io/address-pool": "nope"}))
    assert isinstance(missing, Refused) and "'nope'" in missing.reason


def test_restore_takes_back_status_and_survives_pool_changes() -> None:
    alloc = allocator(pool("p", "10.0.0.0/29"))
    assert alloc.restore(parse_request(service("b")), ("10.0.0.5",)) == Assigned(("10.0.0.5",), "p")
    # a fresh Service does not get the restored address, and the lowest free one is still used
    assert assign(alloc, service("c")) == Assigned(("10.0.0.0",), "p")
    # a restore outside the pools falls back to a fresh allocation
    assert alloc.restore(parse_request(service("d")), ("192.0.2.1",)) == Assigned(("10.0.0.1",), "p")
    moved = alloc.set_pools([parse_pool(pool("p", "10.0.0.0/30"))])
    assert moved == [parse_request(service("b")).ref]
    assert assign(alloc, service("b")) == Assigned(("10.0.0.2",), "p")


def test_no_pool_at_all_says_so() -> None:
    out = assign(allocator(pool("v6", "fc00::/120")), service("a"))
    assert isinstance(out, Refused) and "v6 (no IPv4)" in out.reason


def test_allocation_rate_is_flat_for_a_large_pool() -> None:
    """50,000 allocations from a /16: the free list never scans (a scan per Service would be quadratic)."""
    alloc = allocator(pool("big", "10.0.0.0/16"))
    requests = [parse_request(service(f"s{i}")) for i in range(50_000)]
    start = time.perf_counter()
    for req in requests:
        assert isinstance(alloc.allocate(req), Assigned)
    elapsed = time.perf_counter() - start
    print(f"50,000 allocations: {elapsed:.2f} s ({50_000 / elapsed:,.0f}/s)")
    assert alloc.pool_usage()["big"] == (50_000, 65_536)
    assert alloc.assigned(requests[-1].ref) == Assigned(("10.0.195.79",), "big")


# --- announcement ------------------------------------------------------------------------------------
def test_choice_is_metallbs_sha256_order() -> None:
    nodes = ["node-1", "node-2", "node-3"]
    ip = "198.18.0.200"
    expected = sorted(nodes, key=lambda n: hashlib.sha256(f"{n}#{ip}".encode()).digest())[0]
    assert choose(ip, nodes) == expected
    assert choose(ip, reversed(nodes)) == expected
    assert choose(ip, []) is None


def test_decide_respects_advertisements_nodes_and_local_endpoints() -> None:
    pools = [parse_pool(pool("p", "198.18.0.200/29", meta={"labels": {"zone": "a"}}))]
    nodes = {f"node-{i}": NodeInfo(f"node-{i}", (("rack", "r1" if i < 3 else "r2"),)) for i in (1, 2, 3)}
    live = frozenset(nodes)
    svc = AnnouncedService(parse_request(service("a")).ref, ("198.18.0.200",))
    assert decide(svc, pools, [], nodes, live).reason == "no L2Advertisement covers pool 'p'"
    by_selector = parse_l2_advertisement({"metadata": {"name": "l2"}, "spec": {
        "ipAddressPoolSelectors": [{"matchLabels": {"zone": "a"}}],
        "nodeSelectors": [{"matchLabels": {"rack": "r2"}}], "interfaces": ["eth1"]}})
    d = decide(svc, pools, [by_selector], nodes, live)
    assert d.node == "node-3" and d.interfaces == ("eth1",)
    assert wanted_on("node-3", [d], "eth0") == {"eth1": frozenset({"198.18.0.200"})}
    assert wanted_on("node-1", [d], "eth0") == {}
    everywhere = parse_l2_advertisement({"metadata": {"name": "all"}, "spec": {}})
    d = decide(svc, pools, [everywhere], nodes, live)
    assert d.node == choose("198.18.0.200", nodes) and d.interfaces == ()
    dead = decide(svc, pools, [everywhere], nodes, live - {d.node})
    assert dead.node not in (None, d.node)
    local = AnnouncedService(svc.ref, svc.addresses, local_only=True, local_nodes=frozenset({"node-2"}))
    assert decide(local, pools, [everywhere], nodes, live).node == "node-2"
    assert decide(local, pools, [everywhere], nodes, live - {"node-2"}).reason == \
        "no live node with a ready local endpoint"


# --- dead-node endpoints (--lb-avoid-dead-node-endpoints) ----------------------------------------------
def test_dead_node_endpoints_are_marked_not_ready_and_restored() -> None:
    from nftproxy.agent.updates import Delete, Upsert
    from nftproxy.lb.deadnodes import DeadNodeFilter

    slice_ = {"kind": "EndpointSlice", "metadata": {"name": "web-x", "namespace": "default"},
              "endpoints": [{"addresses": ["10.0.1.2"], "conditions": {"ready": True}, "nodeName": "node-1"},
                            {"addresses": ["10.0.2.2"], "conditions": {"ready": True}, "nodeName": "node-2"}]}
    other = {"kind": "EndpointSlice", "metadata": {"name": "db-x", "namespace": "default"},
             "endpoints": [{"addresses": ["10.0.2.3"], "nodeName": "node-2"}]}
    f = DeadNodeFilter()
    assert f.update(Upsert(slice_)) == [Upsert(slice_)]
    f.update(Upsert(other))
    resent = f.set_dead(frozenset({"node-1"}))
    assert len(resent) == 1, "only the slice with an endpoint on the dead node is sent again"
    conditions = [e["conditions"] for e in resent[0].obj["endpoints"]]  # type: ignore[index]
    assert conditions == [{"ready": False, "serving": False}, {"ready": True}]
    assert slice_["endpoints"][0]["conditions"] == {"ready": True}, "the API's object is left as it was"
    # an update while node-1 is dead is filtered on the way through
    assert f.update(Upsert(slice_))[0].obj["endpoints"][0]["conditions"]["ready"] is False  # type: ignore[index]
    back = f.set_dead(frozenset())
    assert back == [Upsert(slice_)]
    f.update(Delete("EndpointSlice", "default", "web-x"))
    assert f.set_dead(frozenset({"node-1"})) == []


# --- the controller leaves other controllers' Services alone ------------------------------------------
def test_a_status_written_by_another_controller_is_left_alone() -> None:
    from nftproxy.lb.controller import AllocatorController
    from nftproxy.lb.view import ClusterView

    class Writer:
        def __init__(self) -> None:
            self.writes: list[Any] = []

        def submit(self, write: Any) -> None:
            self.writes.append(write)

    def lb(name: str, ip: str | None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        svc = service(name, annotations=annotations)
        svc["metadata"]["resourceVersion"] = "5"
        if ip:
            svc["status"] = {"loadBalancer": {"ingress": [{"ip": ip}]}}
        return svc

    view, writer = ClusterView(), Writer()
    controller = AllocatorController(view, writer)  # type: ignore[arg-type]
    view.upsert(lb("cloud", "203.0.113.7"))
    controller.start_leading()
    assert writer.writes == [] and not controller.pending, "no pool at all: nothing is ours to decide"
    view.upsert(pool("p", "10.0.0.0/30"))
    view.upsert(lb("mine", None))
    controller.reconcile()
    assert [w.ref.name for w in writer.writes] == ["mine"], "the cloud's status stays; ours gets an address"
    view.changes.clear()
    view.upsert(lb("migrated", "203.0.113.8", {"metallb.io/ip-allocated-from-pool": "old"}))
    controller.reconcile()
    assert writer.writes[-1].ref.name == "migrated" and writer.writes[-1].ips == ("10.0.0.1",), \
        "an address we (or MetalLB) allocated that left every pool is replaced"


def test_normal_events_are_rate_limited_warnings_never() -> None:
    """Thousands of IPAllocated Events at once would double the API requests of an allocation burst."""
    from nftproxy.agent.recorder import EventRecorder
    from nftproxy.objects.model import ObjectRef

    posted: list[str] = []

    class Api:
        def create_namespaced_event(self, namespace: str, body: dict[str, Any]) -> None:
            posted.append(body["reason"])

    now = [0.0]
    recorder = EventRecorder(Api(), "n1", normal_per_second=2, clock=lambda: now[0])
    for _ in range(5):
        recorder.record("Service", ObjectRef("d", "s"), "IPAllocated", "x", "Normal")
    assert recorder.dropped_normal == 3
    now[0] = 1.0
    for _ in range(5):
        recorder.record("Service", ObjectRef("d", "s"), "AllocationFailed", "why")
    assert recorder.dropped_normal == 3, "warnings are not rate-limited"
    deadline = time.monotonic() + 5
    while len(posted) < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert posted.count("IPAllocated") == 2 and posted.count("AllocationFailed") == 5
