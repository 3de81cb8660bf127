"""The sync logic against the in-memory kernel: expected rulesets, diffs, conflicts, failures."""

from __future__ import annotations

import logging
import random

import pytest

from nftproxy.agent.proxier import Proxier
from nftproxy.config import ProxyConfig
from nftproxy.desired.conntrack import StaleFlows
from nftproxy.desired.skeleton import class_id, skeleton_text
from nftproxy.kernel import KernelError
from nftproxy.kernel.fake import FakeKernel
from nftproxy.objects.model import ObjectRef

from e2e.objects import endpoint_slice, service

CONFIG = ProxyConfig("node-1", cluster_cidrs=("198.18.128.0/17",), service_cidrs=("198.19.0.0/16",))


def fresh(config: ProxyConfig = CONFIG) -> tuple[Proxier, FakeKernel]:
    kernel = FakeKernel()
    return Proxier(config, kernel), kernel


def test_expected_ruleset_for_a_nodeport_service() -> None:
    proxier, kernel = fresh()
    proxier.upsert(service("web", "198.19.0.10", [{"name": "http", "port": 80, "nodePort": 30080}],
                           namespace="shop", type="NodePort", externalIPs=["198.18.0.150"]))
    proxier.upsert(endpoint_slice("web", ["198.18.129.3", "198.18.129.2"], namespace="shop"))
    proxier.upsert(service("empty", "198.19.0.11", [{"name": "dns", "port": 53, "protocol": "UDP"}], namespace="shop"))
    proxier.sync()
    assert kernel.dump() == sorted([
        "chain lb-cluster-v4-2 meta priority set none",
        "chain lb-cluster-v4-2 ip saddr != 198.18.128.0/17 meta mark set meta mark | 0x00004000",
        "chain lb-cluster-v4-2 meta l4proto { tcp, udp, sctp } "
        "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @backends-cluster-v4-2",
        "chain lb-cluster-v4-2 ip daddr . meta l4proto . th dport @affinity-frontends-v4 "
        "meta l4proto { tcp, udp, sctp } dnat ip to ip saddr . ip daddr . meta l4proto . th dport map @affinity-v4",
        "chain lb-external-v4-2 ip daddr . meta l4proto . th dport @affinity-frontends-v4 "
        "meta l4proto { tcp, udp, sctp } dnat ip to ip saddr . ip daddr . meta l4proto . th dport map @affinity-v4",
        "chain lb-external-v4-2 meta priority set none",
        "chain lb-external-v4-2 meta mark set meta mark | 0x00004000",
        "chain lb-external-v4-2 meta l4proto { tcp, udp, sctp } "
        "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @backends-external-v4-2",
        "chain lb-nodeport-v4-2 meta l4proto . th dport @affinity-nodeport-frontends-v4 "
        "meta l4proto { tcp, udp, sctp } dnat ip to ip saddr . meta l4proto . th dport map @affinity-nodeports-v4",
        "chain lb-nodeport-v4-2 meta priority set none",
        "chain lb-nodeport-v4-2 meta mark set meta mark | 0x00004000",
        "chain lb-nodeport-v4-2 meta l4proto { tcp, udp, sctp } "
        "dnat ip to meta l4proto . th dport . numgen random mod 2 map @backends-nodeport-v4-2",
        'element backends-cluster-v4-2 198.19.0.10 . tcp . 80 . 0 comment "shop/web:http" : 198.18.129.2 . 8080',
        'element backends-cluster-v4-2 198.19.0.10 . tcp . 80 . 1 comment "shop/web:http" : 198.18.129.3 . 8080',
        'element backends-external-v4-2 198.18.0.150 . tcp . 80 . 0 comment "shop/web:http" : 198.18.129.2 . 8080',
        'element backends-external-v4-2 198.18.0.150 . tcp . 80 . 1 comment "shop/web:http" : 198.18.129.3 . 8080',
        'element backends-nodeport-v4-2 tcp . 30080 . 0 comment "shop/web:http" : 198.18.129.2 . 8080',
        'element backends-nodeport-v4-2 tcp . 30080 . 1 comment "shop/web:http" : 198.18.129.3 . 8080',
        "element classes 4100:2 : goto lb-cluster-v4-2",
        "element classes 4200:2 : goto lb-external-v4-2",
        "element classes 4500:2 : goto lb-nodeport-v4-2",
        'element cluster-ips-v4 198.19.0.10 comment "shop/web"',
        'element cluster-ips-v4 198.19.0.11 comment "shop/empty"',
        "element hairpin-v4 198.18.129.2 . 198.18.129.2",
        "element hairpin-v4 198.18.129.3 . 198.18.129.3",
        'element no-endpoint-services-v4 198.19.0.11 . udp . 53 comment "shop/empty:dns"',
        "element cluster-cidrs-v4 198.18.128.0/17",
        "element nodeport-cidrs-v4 0.0.0.0/0",
        "element nodeport-cidrs-v6 ::/0",
        "element service-cidrs-v4 198.19.0.0/16",
        'element service-ips-v4 198.18.0.150 . tcp . 80 comment "shop/web:http" : 4200:2',
        'element service-ips-v4 198.19.0.10 . tcp . 80 comment "shop/web:http" : 4100:2',
        'element service-nodeports-v4 tcp . 30080 comment "shop/web:http" : 4500:2',
    ])


def test_sync_with_no_change_sends_nothing() -> None:
    proxier, kernel = fresh()
    proxier.upsert(service("web", "198.19.0.10"))
    proxier.upsert(endpoint_slice("web", ["198.18.129.2"]))
    proxier.sync()
    sent = len(kernel.transactions)
    proxier.upsert(service("web", "198.19.0.10"))  # same object again
    result = proxier.sync()
    assert result.operations == 0 and len(kernel.transactions) == sent


def _populate(proxier: Proxier, count: int) -> None:
    for i in range(count):
        proxier.upsert(service(f"svc-{i}", f"198.19.{i // 250}.{i % 250 + 1}"))
        proxier.upsert(endpoint_slice(f"svc-{i}", [f"198.18.{129 + i % 3}.{j + 2}" for j in range(3)]))


@pytest.mark.parametrize("size", [10, 1000])
def test_one_service_change_costs_the_same_at_any_size(size: int) -> None:
    proxier, _ = fresh()
    _populate(proxier, size)
    proxier.sync()
    proxier.upsert(endpoint_slice("svc-5", ["198.18.131.2", "198.18.131.3", "198.18.131.9"]))  # was .2 .3 .4
    changed = proxier.sync()
    proxier.upsert(service("new", "198.19.100.1"))
    proxier.upsert(endpoint_slice("new", ["198.18.129.2"]))
    added = proxier.sync()
    proxier.delete("Service", "default", "svc-7")
    deleted = proxier.sync()
    # Exact counts, independent of `size`: one backend replaced (delete + add) and its new hairpin entry;
    # a new Service's frontend, backend, cluster IP and (first of its kind) lb chain with its class; a
    # deleted Service's frontend, three backends and cluster IP (hairpin entries are shared with other Services).
    assert (changed.operations, added.operations, deleted.operations) == (3, 4, 5)
    assert changed.services_synced == added.services_synced == deleted.services_synced == 1


def _random_world(rng: random.Random, proxier: Proxier) -> None:
    i = rng.randrange(12)
    name = f"svc-{i}"
    roll = rng.random()
    if roll < 0.35:
        ports = [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": rng.choice(["UDP", "TCP"])}]
        extra = {}
        if rng.random() < 0.5:
            extra["externalIPs"] = [f"198.18.0.{150 + rng.randrange(3)}"]  # shared on purpose: conflicts
        svc_type = rng.choice(["ClusterIP", "NodePort", "LoadBalancer"])
        if svc_type != "ClusterIP":
            for k, p in enumerate(ports):
                p["nodePort"] = 30000 + rng.randrange(6) * 2 + k  # collisions on purpose
        if svc_type == "LoadBalancer" and rng.random() < 0.7:
            extra["status"] = {"loadBalancer": {"ingress": [{"ip": f"198.18.0.{200 + rng.randrange(3)}"}]}}
            if rng.random() < 0.5:
                extra["loadBalancerSourceRanges"] = rng.sample(
                    ["198.18.0.0/24", "198.18.0.101/32", "198.18.0.200/30"], 2)
        if svc_type != "ClusterIP" and rng.random() < 0.3:
            extra["externalTrafficPolicy"] = "Local"
        if rng.random() < 0.2:
            extra["internalTrafficPolicy"] = "Local"
        if rng.random() < 0.3:
            extra["trafficDistribution"] = "PreferClose"  # read against the node's zone, which changes below
        if rng.random() < 0.3:
            extra["sessionAffinity"] = "ClientIP"
            extra["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": rng.choice([10, 60])}}
        ips = [f"198.19.0.{i + 1}"] + ([f"2001:db8:2::{i + 1:x}"] if rng.random() < 0.3 else [])
        proxier.upsert(service(name, ips, ports, type=svc_type,
                               creation=f"2026-01-{rng.randrange(1, 28):02d}T00:00:00Z", **extra))
    elif roll < 0.75:
        fam = rng.choice(["IPv4", "IPv6"])
        addrs = [f"198.18.{129 + rng.randrange(2)}.{rng.randrange(2, 8)}" if fam == "IPv4"
                 else f"2001:db8:1::{rng.randrange(2, 8):x}"
                 for _ in range(rng.randrange(0, 5))]
        slice_ = endpoint_slice(name, addrs, name=f"{name}-{fam.lower()}-{rng.randrange(2)}", address_type=fam,
                                node=rng.choice([None, "node-1", "node-2"]),
                                ports=[{"name": "http", "port": 8080},
                                       {"name": "dns", "port": 5353, "protocol": "UDP"}])
        if rng.random() < 0.6:  # topology hints, used only when every endpoint has them
            for endpoint in slice_["endpoints"]:
                endpoint["hints"] = {"forZones": [{"name": rng.choice(["zone-a", "zone-b"])}]}
        proxier.upsert(slice_)
    elif roll < 0.8:
        if rng.random() < 0.7:
            proxier.upsert({"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": "node-1", "labels": {"topology.kubernetes.io/zone": rng.choice(["zone-a", "zone-b"])}}})
        else:
            proxier.delete("Node", "", "node-1")
    elif roll < 0.92:
        proxier.delete("Service", "default", name)
    else:
        proxier.delete("EndpointSlice", "default", f"{name}-ipv4-{rng.randrange(2)}")


@pytest.mark.parametrize("seed", range(8))
def test_incremental_syncs_always_equal_a_fresh_rebuild(seed: int) -> None:
    """The heart of the diff: after any sequence of changes, the kernel holds what a rebuild would."""
    rng = random.Random(seed)
    proxier, kernel = fresh()
    for step in range(60):
        for _ in range(rng.randrange(1, 4)):
            _random_world(rng, proxier)
        proxier.sync()
        reference, ref_kernel = fresh()
        for obj in _current_objects(proxier):
            reference.upsert(obj)
        reference.sync()
        assert kernel.dump() == ref_kernel.dump(), f"seed {seed} step {step}"


def test_static_classes_in_the_skeleton_are_the_ones_translation_uses() -> None:
    text = skeleton_text()
    for family in (4, 6):
        for kind in ("external-local", "nodeport-local"):
            assert f"{class_id(kind, family)} : goto {kind}-v{family}" in text
        assert text.count(f"{class_id('drop', family)} : drop") == 2, "in @classes and @local-classes"


def _current_objects(proxier: Proxier) -> list[dict]:
    """Re-create the objects the proxier holds, to feed a fresh proxier (rebuild from scratch)."""
    return list(proxier._test_objects.values())  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _record_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record the last object upserted per (kind, ref), so a test can replay the world into a fresh proxier."""
    original_upsert, original_delete = Proxier.upsert, Proxier.delete

    def upsert(self: Proxier, obj: dict) -> None:
        store = self.__dict__.setdefault("_test_objects", {})
        store[(obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
        original_upsert(self, obj)

    def delete(self: Proxier, kind: str, namespace: str, name: str) -> None:
        self.__dict__.setdefault("_test_objects", {}).pop((kind, namespace, name), None)
        original_delete(self, kind, namespace, name)

    monkeypatch.setattr(Proxier, "upsert", upsert)
    monkeypatch.setattr(Proxier, "delete", delete)


def test_conflict_older_service_wins_and_loser_takes_over_when_it_goes(caplog: pytest.LogCaptureFixture) -> None:
    proxier, kernel = fresh()
    proxier.upsert(service("young", "198.19.0.2", externalIPs=["198.18.0.150"], creation="2026-02-01T00:00:00Z"))
    proxier.upsert(endpoint_slice("young", ["198.18.129.9"]))
    proxier.sync()
    proxier.upsert(service("old", "198.19.0.1", externalIPs=["198.18.0.150"], creation="2026-01-01T00:00:00Z"))
    proxier.upsert(endpoint_slice("old", ["198.18.129.2"]))
    with caplog.at_level(logging.WARNING):
        proxier.sync()
    owner = [line for line in kernel.dump() if "198.18.0.150 . tcp . 80 . 0" in line]
    assert owner == ['element backends-external-v4-1 198.18.0.150 . tcp . 80 . 0 comment "default/old:http" '
                     ': 198.18.129.2 . 8080']
    assert ("default/young wants service-ips-v4 198.18.0.150 . tcp . 80, already held by Service default/old"
            in caplog.text)
    proxier.delete("Service", "default", "old")
    proxier.sync()
    owner = [line for line in kernel.dump() if "198.18.0.150 . tcp . 80 . 0" in line]
    assert owner == ['element backends-external-v4-1 198.18.0.150 . tcp . 80 . 0 comment "default/young:http" '
                     ': 198.18.129.9 . 8080']


def test_failed_transaction_keeps_state_and_next_sync_rebuilds() -> None:
    proxier, kernel = fresh()
    proxier.upsert(service("web", "198.19.0.10"))
    proxier.upsert(endpoint_slice("web", ["198.18.129.2"]))
    proxier.sync()
    before = kernel.dump()
    proxier.upsert(endpoint_slice("web", ["198.18.129.3"]))
    kernel.fail_next = "Cannot allocate memory"
    with pytest.raises(KernelError):
        proxier.sync()
    assert kernel.dump() == before, "a refused transaction leaves the old ruleset"
    result = proxier.sync()
    assert result.rebuild and any("198.18.129.3" in line for line in kernel.dump())


def test_broken_objects_cost_nobody_else_their_rules(caplog: pytest.LogCaptureFixture) -> None:
    proxier, kernel = fresh()
    good = service("good", "198.19.0.10")
    bad_port = service("bad-port", "198.19.0.11", [{"name": "x", "port": 70000}], namespace="team")
    bad_ip = service("bad-ip", "198.19.0.999", namespace="team")
    wrong_family = service("wrong-family", "198.19.0.12", namespace="team", ipFamilies=["IPv6"])
    bad_slice = endpoint_slice("good", ["2001:db8:1::5"], name="good-broken")
    with caplog.at_level(logging.ERROR):
        for obj in (good, bad_port, bad_ip, wrong_family, endpoint_slice("good", ["198.18.129.2"]), bad_slice):
            proxier.upsert(obj)
        proxier.upsert(bad_port)  # reported once, not on every update
        proxier.sync()
    assert caplog.text.count("Service team/bad-port: spec.ports[0].port: port 70000 is outside 1-65535") == 1
    assert "Service team/bad-ip: spec.clusterIPs[0]" in caplog.text
    assert "Service team/wrong-family: spec.clusterIPs[0]: 198.19.0.12 is not an IPv6 address" in caplog.text
    assert "EndpointSlice default/good-broken: endpoints[0].addresses[0]" in caplog.text
    dump = kernel.dump()
    assert 'element service-ips-v4 198.19.0.10 . tcp . 80 comment "default/good:http" : 4100:1' in dump
    assert not any("team/" in line for line in dump)
    assert ObjectRef("default", "good") in proxier.services


def test_affinity_covers_every_frontend() -> None:
    """ClusterIP, externalIP, LB IP and NodePort get affinity elements; IPv6 ones carry the endpoints' port."""
    proxier, kernel = fresh()
    proxier.upsert(service("web", ["198.19.0.10", "2001:db8:2::10"], [{"name": "http", "port": 80, "nodePort": 30080}],
                           type="LoadBalancer", externalIPs=["198.18.0.150"], ipFamilies=["IPv4", "IPv6"],
                           status={"loadBalancer": {"ingress": [{"ip": "198.18.0.200"}]}},
                           sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}))
    proxier.upsert(endpoint_slice("web", ["198.18.129.2"]))
    proxier.upsert(endpoint_slice("web", ["2001:db8:1::2"], name="web-v6", address_type="IPv6"))
    proxier.sync()
    affinity = [line.replace(' comment "default/web:http"', "") for line in kernel.dump() if "element affinity" in line]
    frontends = ["198.18.0.150 . tcp . 80", "198.18.0.200 . tcp . 80", "198.19.0.10 . tcp . 80"]
    assert affinity == sorted(
        [f"element affinity-frontends-v4 {f}" for f in frontends]
        + [f"element affinity-services-v4 {f} : 4800:3c" for f in frontends]
        + [f"element affinity-valid-v4 {f} . 198.18.129.2 . 8080" for f in frontends]
        + ["element affinity-nodeport-frontends-v4 tcp . 30080",
           "element affinity-nodeport-services-v4 tcp . 30080 : 4900:3c",
           "element affinity-nodeport-valid-v4 tcp . 30080 . 198.18.129.2 . 8080"]
        + [f"element affinity-classes {c} : jump {chain}" for c, chain in (
            ("4800:3c", "affinity-record-v4-60"), ("4900:3c", "affinity-nodeport-record-v4-60"),
            ("6800:3c", "affinity-record-v6-60"), ("6900:3c", "affinity-nodeport-record-v6-60"))]
        + ["element affinity-frontends-v6 2001:db8:2::10 . tcp . 80",
           "element affinity-ports-v6 2001:db8:2::10 . tcp . 80 : 8080",
           "element affinity-services-v6 2001:db8:2::10 . tcp . 80 : 6800:3c",
           "element affinity-valid-v6 2001:db8:2::10 . tcp . 80 . 2001:db8:1::2 . 8080",
           "element affinity-nodeport-frontends-v6 tcp . 30080",
           "element affinity-nodeport-ports-v6 tcp . 30080 : 8080",
           "element affinity-nodeport-services-v6 tcp . 30080 : 6900:3c",
           "element affinity-nodeport-valid-v6 tcp . 30080 . 2001:db8:1::2 . 8080"])
    # IPv6 entries hold no port: a frontend whose endpoints listen on different ports is not sticky
    proxier.upsert(endpoint_slice("web", ["2001:db8:1::3"], name="web-v6-b", address_type="IPv6",
                                  ports=[{"name": "http", "port": 9090, "protocol": "TCP"}]))
    proxier.sync()
    assert not [line for line in kernel.dump() if "element affinity" in line and "-v6" in line]
    assert any(line.startswith("element affinity-services-v4 ") for line in kernel.dump())


def test_a_zone_change_moves_topology_hinted_traffic_and_flushes_its_udp_flows() -> None:
    """Hints are read against this node's zone: when the zone changes, the Service's rules (and its UDP
    flows to endpoints no longer chosen) change with it, though the Service and its slices did not."""
    stale: list[StaleFlows] = []
    kernel = FakeKernel()
    proxier = Proxier(CONFIG, kernel, on_stale_flows=stale.extend)

    def node(zone: str) -> dict:
        return {"kind": "Node", "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": zone}}}

    slice_ = endpoint_slice("dns", ["198.18.129.2", "198.18.129.3"],
                            ports=[{"name": "dns", "port": 5353, "protocol": "UDP"}])
    for endpoint, zone in zip(slice_["endpoints"], ("zone-a", "zone-b")):
        endpoint["hints"] = {"forZones": [{"name": zone}]}
    proxier.upsert(node("zone-a"))
    proxier.upsert(service("dns", "198.19.0.53", [{"name": "dns", "port": 53, "protocol": "UDP"}],
                           trafficDistribution="PreferClose"))
    proxier.upsert(slice_)
    proxier.sync()
    backends = [line for line in kernel.dump() if line.startswith("element backends-cluster-v4-1 ")]
    assert len(backends) == 1 and "198.18.129.2 . 5353" in backends[0]
    stale.clear()
    proxier.upsert(node("zone-b"))
    proxier.sync()
    backends = [line for line in kernel.dump() if line.startswith("element backends-cluster-v4-1 ")]
    assert len(backends) == 1 and "198.18.129.3 . 5353" in backends[0]
    assert StaleFlows(4, "198.19.0.53", 53, ("198.18.129.2", 5353)) in stale
