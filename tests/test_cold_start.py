"""A cold start parses objects while the rebuild is being streamed (`Proxier.defer`).

Deferred parsing must change when objects are parsed, never what comes out: the same script, the
same stores, the same objects reported invalid as upserting each object at once.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

from e2e.objects import endpoint_slice, service
from nftproxy.agent.proxier import Proxier
from nftproxy.config import ProxyConfig
from nftproxy.kernel.fake import FakeKernel

CONFIG = ProxyConfig(node_name="node-1", cluster_cidrs=("198.18.128.0/17",), service_cidrs=("198.19.0.0/16",))


def random_objects(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """Services and slices with conflicts, bad fields, headless and orphan slices, in random order."""
    objects: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Node",
                                      "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "a"}}}]
    for i in range(count):
        name = f"svc-{i}"
        roll = rng.random()
        extra: dict[str, Any] = {"creation": f"2026-01-{rng.randrange(1, 28):02d}T00:00:00Z"}
        if rng.random() < 0.4:
            extra["externalIPs"] = [f"198.18.0.{150 + rng.randrange(3)}"]  # shared: conflicts
        if rng.random() < 0.3:
            extra["trafficDistribution"] = "PreferClose"
        ip: str | list[str] = [f"198.19.0.{i + 1}"] + ([f"2001:db8:2::{i + 1:x}"] if rng.random() < 0.3 else [])
        ports = [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]
        if roll < 0.05:
            ip = "None"  # headless: no rules
        elif roll < 0.1:
            ports[0]["port"] = 0  # invalid: refused, reported
        if roll < 0.9:  # else: slices of a Service that does not exist
            objects.append(service(name, ip, ports, **extra))
        for k in range(rng.randrange(0, 3)):
            fam = rng.choice(["IPv4", "IPv6"])
            addrs = [f"198.18.{129 + rng.randrange(2)}.{rng.randrange(2, 60)}" if fam == "IPv4"
                     else f"2001:db8:1::{rng.randrange(2, 60):x}" for _ in range(rng.randrange(0, 5))]
            sl = endpoint_slice(name, addrs, name=f"{name}-{k}", address_type=fam,
                                ports=[{"name": "http", "port": 8080},
                                       {"name": "dns", "port": 5353, "protocol": "UDP"}])
            for ep in sl["endpoints"]:
                ep["zone"] = rng.choice(["a", "b"])
                ep["hints"] = {"forZones": [{"name": ep["zone"]}]}
            if rng.random() < 0.05:
                sl["endpoints"].append({"addresses": ["198.18.129.300"]})  # invalid address
            if rng.random() < 0.05:
                sl["metadata"]["labels"] = {}  # belongs to no Service
            objects.append(sl)
    rng.shuffle(objects)
    return objects


def stores(proxier: Proxier) -> tuple[Any, ...]:
    return proxier.services, proxier.slices, proxier.slices_of, proxier.invalid, proxier.node


def eager(objects: list[Mapping[str, Any]], proxier: Proxier | None = None) -> Proxier:
    proxier = proxier or Proxier(CONFIG, FakeKernel())
    for obj in objects:
        proxier.upsert(obj)
    return proxier


def deferred(objects: list[Mapping[str, Any]], proxier: Proxier | None = None) -> Proxier:
    proxier = proxier or Proxier(CONFIG, FakeKernel())
    proxier.defer(objects)
    return proxier


@pytest.mark.parametrize("seed", range(6))
def test_a_deferred_cold_start_sends_and_stores_what_upserting_does(seed: int) -> None:
    objects = random_objects(random.Random(seed), 40)
    at_once, later = eager(objects), deferred(objects)
    assert later.pending() and not later.services, "deferred objects wait for the rebuild"
    assert later.compute().transaction.render() == at_once.compute().transaction.render()
    assert stores(later) == stores(at_once)
    assert later.sync().operations == at_once.sync().operations
    assert later.committed.claims == at_once.committed.claims
    assert later.committed_inputs == at_once.committed_inputs


@pytest.mark.parametrize("seed", range(4))
def test_deferred_objects_over_a_synced_state(seed: int) -> None:
    """After a failed transaction (a rebuild), and in the steady state (a diff): deferred objects,
    some of them moving slices between Services, give what upserting them gives."""
    rng = random.Random(100 + seed)
    first, second = random_objects(rng, 30), random_objects(rng, 30)
    for obj in rng.sample(second, 10):
        if obj["kind"] == "EndpointSlice" and obj["metadata"].get("labels"):
            obj["metadata"]["labels"] = {"kubernetes.io/service-name": f"svc-{rng.randrange(30)}"}
    for needs_rebuild in (True, False):
        at_once, later = eager(first), eager(first)
        at_once.sync(), later.sync()
        at_once.needs_rebuild = later.needs_rebuild = needs_rebuild
        eager(second, at_once)
        deferred(second, later)
        assert later.compute().transaction.render() == at_once.compute().transaction.render()
        assert stores(later) == stores(at_once)


def test_a_later_upsert_or_delete_wins_over_a_deferred_object() -> None:
    old = service("web", "198.19.0.10")
    new = service("web", "198.19.0.11")
    proxier = deferred([old, endpoint_slice("web", ["198.18.129.2"]), service("gone", "198.19.0.12")])
    proxier.upsert(new)
    proxier.delete("Service", "default", "gone")
    proxier.sync()
    assert [svc.cluster_ips for svc in proxier.services.values()] == [("198.19.0.11",)]
    assert not proxier.pending()
