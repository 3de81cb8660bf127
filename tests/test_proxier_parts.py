"""The parts the proxier is made of, each on its own: the object store, the committed state, the
syncer's commit, and the observers of a commit. test_sync_fake.py tests them together."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from e2e.objects import endpoint_slice, service
from nftproxy.agent.committed import Commit, CommittedState, owner_of
from nftproxy.agent.observers import ConflictLog, HealthCheckDiff, StaleFlowCleanup
from nftproxy.agent.store import ObjectStore, ServiceInputs
from nftproxy.agent.syncer import Syncer
from nftproxy.config import ProxyConfig
from nftproxy.desired.conntrack import StaleFlows
from nftproxy.desired.elements import Element
from nftproxy.desired.healthcheck import HealthCheck
from nftproxy.diff.plan import Conflict
from nftproxy.kernel import KernelError
from nftproxy.kernel.fake import FakeKernel
from nftproxy.objects.model import ObjectRef
from nftproxy.objects.parse import (
    InvalidObject,
    creation_timestamp,
    object_ref,
    parse_endpoint_slice,
    parse_node,
    slice_service_ref,
)

CONFIG = ProxyConfig(node_name="node-1")
WEB = ObjectRef("default", "web")


def store(committed: set[ObjectRef] | None = None, reports: list[InvalidObject] | None = None) -> ObjectStore:
    held = committed or set()
    return ObjectStore("node-1", held.__contains__, None if reports is None else reports.append)


def inputs_of(*objects: dict[str, Any]) -> ServiceInputs:
    s = store()
    for obj in objects:
        s.upsert(obj)
    ref = next(iter(s.services))
    found = s.inputs(ref)
    assert found is not None
    return found


# --- who a raw object is ---------------------------------------------------------------------------
@pytest.mark.parametrize("metadata, ref, service_ref", [
    ({"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
     ObjectRef("shop", "web-1"), ObjectRef("shop", "web")),
    ({"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},  # a manifest without a namespace
     ObjectRef("default", "web-1"), ObjectRef("default", "web")),
    ({"name": "web-1", "namespace": 7, "labels": {"kubernetes.io/service-name": 5}},
     ObjectRef("default", "web-1"), ObjectRef("default", "5")),
    ({"name": ["x"], "labels": {}}, ObjectRef("default", ""), None),
    ({"name": "web-1", "labels": "web"}, ObjectRef("default", "web-1"), None),
    ("web", ObjectRef("default", ""), None),
])
def test_an_objects_ref_and_its_service_are_read_as_the_parser_reads_them(
        metadata: Any, ref: ObjectRef, service_ref: ObjectRef | None) -> None:
    obj = {"kind": "EndpointSlice", "metadata": metadata, "addressType": "IPv4", "endpoints": []}
    assert object_ref(obj) == ref
    assert slice_service_ref(obj) == service_ref
    try:
        parsed = parse_endpoint_slice(obj)
    except InvalidObject as err:
        assert err.ref == ref
    else:
        assert (parsed.service if parsed is not None else None) == service_ref


def test_a_node_has_no_namespace_and_a_creation_stamp_is_text() -> None:
    assert parse_node({"metadata": {"name": "node-1", "namespace": "x"}}).name == "node-1"
    with pytest.raises(InvalidObject) as err:
        parse_node({"metadata": {"name": 3}})
    assert err.value.ref == ObjectRef("", "")
    assert creation_timestamp({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}}) == "2026-01-01T00:00:00Z"
    assert creation_timestamp({"metadata": None}) == creation_timestamp({}) == ""


# --- the store -------------------------------------------------------------------------------------
def test_deleting_a_service_the_kernel_never_held_leaves_nothing_to_sync() -> None:
    s = store()
    s.upsert(service("headless", "None"))
    s.delete("Service", "default", "headless")
    assert not s.has_changes()
    held = store(committed={WEB})
    held.delete("Service", "default", "web")
    assert held.dirty == {WEB}


def test_a_slice_that_moves_to_another_service_dirties_both() -> None:
    s = store()
    s.upsert(endpoint_slice("web", ["198.18.129.2"], name="shared"))
    s.dirty.clear()
    s.upsert(endpoint_slice("api", ["198.18.129.2"], name="shared"))
    assert s.dirty == {WEB, ObjectRef("default", "api")}
    assert list(s.slices_of) == [ObjectRef("default", "api")]


def test_a_zone_change_dirties_only_the_services_that_read_hints() -> None:
    s = store()
    s.upsert(service("web", "198.19.0.10", trafficDistribution="PreferClose"))
    s.upsert(service("plain", "198.19.0.11"))
    s.dirty.clear()
    s.upsert({"kind": "Node", "metadata": {"name": "node-2", "labels": {"topology.kubernetes.io/zone": "b"}}})
    assert s.node is None and not s.dirty, "another node's Node"
    s.upsert({"kind": "Node", "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "a"}}})
    assert s.zone == "a" and s.dirty == {WEB}
    s.dirty.clear()
    s.upsert({"kind": "Node", "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "a", "x": "y"}}})
    assert not s.dirty, "same zone"


def test_an_invalid_object_is_reported_once_per_reason() -> None:
    reports: list[InvalidObject] = []
    s = store(reports=reports)
    bad = service("web", "198.19.0.10", [{"name": "http", "port": 0}])
    s.upsert(bad)
    s.upsert(bad)
    assert len(reports) == 1 and ("Service", WEB) in s.invalid
    s.upsert(service("web", "198.19.0.10"))
    assert ("Service", WEB) not in s.invalid and WEB in s.services


def test_deferred_objects_wait_for_whoever_parses_them() -> None:
    s = store()
    s.defer([service("web", "198.19.0.10", creation="2026-01-02T00:00:00Z"), endpoint_slice("web", ["198.18.129.2"]),
             endpoint_slice("orphan", ["198.18.129.3"])])
    assert s.has_changes() and not s.services
    creations, slices = s.services_to_come()
    assert creations == {WEB: "2026-01-02T00:00:00Z"}
    assert slices == {WEB: [("EndpointSlice", ObjectRef("default", "web-abcde"))],
                      ObjectRef("default", "orphan"): [("EndpointSlice", ObjectRef("default", "orphan-abcde"))]}
    s.parse_deferred_of(WEB, slices[WEB])
    found = s.inputs(WEB)
    assert found is not None and [sl.ref.name for sl in found[1]] == ["web-abcde"]
    s.parse_deferred()
    assert not s.has_deferred()


# --- the committed state ---------------------------------------------------------------------------
def test_owners_follow_the_committed_inputs() -> None:
    state = CommittedState()
    old = inputs_of(service("web", "198.19.0.10", creation="2026-01-01T00:00:00Z"))
    new = inputs_of(service("web", "198.19.0.10", creation="2026-02-01T00:00:00Z"))  # re-created: a new owner id
    state.record(state.claims, {WEB: old}, rebuild=False, zone=None)
    assert state.holds(WEB) and state.owners == {owner_of(old): WEB}
    state.record(state.claims, {WEB: new}, rebuild=False, zone=None)
    assert state.owners == {owner_of(new): WEB}
    assert state.previous([WEB, ObjectRef("default", "x")]) == {WEB: new, ObjectRef("default", "x"): None}
    state.record(state.claims, {WEB: None}, rebuild=False, zone=None)
    assert not state.holds(WEB) and not state.owners


# --- the syncer ------------------------------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.commits: list[Commit] = []

    def committed(self, commit: Commit) -> None:
        self.commits.append(commit)


def syncer(kernel: FakeKernel) -> tuple[Syncer, ObjectStore, Recorder]:
    state, seen = CommittedState(), Recorder()
    s = ObjectStore("node-1", state.holds)
    return Syncer(CONFIG, kernel, s, state, [seen]), s, seen


def test_observers_see_each_commit_with_what_was_committed_before() -> None:
    kernel = FakeKernel()
    sync, s, seen = syncer(kernel)
    s.upsert(service("web", "198.19.0.10"))
    first = sync.sync()
    assert first.rebuild and not sync.pending() and not s.dirty
    s.upsert(endpoint_slice("web", ["198.18.129.2"]))
    sync.sync()
    assert [c.rebuild for c in seen.commits] == [True, False]
    change = seen.commits[1]
    before, after = change.previous[WEB], change.inputs[WEB]
    assert before is not None and before[1] == () and after is not None and len(after[1]) == 1


def test_a_refused_transaction_commits_nothing_and_tells_no_observer() -> None:
    kernel = FakeKernel()
    sync, s, seen = syncer(kernel)
    s.upsert(service("web", "198.19.0.10"))
    sync.sync()
    s.upsert(endpoint_slice("web", ["198.18.129.2"]))
    kernel.fail_next = "Cannot allocate memory"
    with pytest.raises(KernelError):
        sync.sync()
    assert sync.needs_rebuild and s.dirty == {WEB} and len(seen.commits) == 1
    held = sync.committed.inputs[WEB]
    assert held[1] == ()


def test_compute_sends_nothing_and_commits_nothing() -> None:
    kernel = FakeKernel()
    sync, s, seen = syncer(kernel)
    s.upsert(service("web", "198.19.0.10"))
    pending = sync.compute()
    assert pending.rebuild and not kernel.transactions and not seen.commits and sync.needs_rebuild
    assert not sync.committed.inputs and s.dirty == {WEB}


# --- the observers ---------------------------------------------------------------------------------
def commit(inputs: dict[ObjectRef, ServiceInputs | None], previous: dict[ObjectRef, ServiceInputs | None],
           rebuild: bool = False, conflicts: list[Conflict] | None = None) -> Commit:
    return Commit(rebuild, inputs, previous, conflicts or [], None, None)


def test_a_conflict_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    log = ConflictLog()
    conflict = Conflict("2026-02 default/young", "2026-01 default/old", Element("external-ips", "198.18.0.150"))
    with caplog.at_level(logging.WARNING):
        log.committed(commit({}, {}, conflicts=[conflict]))
        log.committed(commit({}, {}, conflicts=[conflict]))
    assert [r.getMessage() for r in caplog.records] == [
        "Service default/young wants external-ips 198.18.0.150, already held by Service default/old: ignored for it"]


def test_health_checks_change_only_for_what_changed_and_a_rebuild_drops_the_rest() -> None:
    lb = service("lb", "198.19.0.20", [{"name": "http", "port": 80, "nodePort": 30080}], type="LoadBalancer",
                 externalTrafficPolicy="Local", healthCheckNodePort=30999)
    lb_ref = ObjectRef("default", "lb")
    reported: list[dict[ObjectRef, HealthCheck | None]] = []
    checks = HealthCheckDiff("node-1", reported.append)
    lb_inputs = inputs_of(lb, endpoint_slice("lb", ["198.18.129.2"], node="node-1"))
    checks.committed(commit({lb_ref: lb_inputs}, {lb_ref: None}))
    assert reported == [{lb_ref: HealthCheck(30999, lb_ref, 1)}]
    checks.committed(commit({lb_ref: lb_inputs}, {lb_ref: lb_inputs}))
    assert len(reported) == 1, "no change: nothing reported"
    checks.committed(commit({}, {}, rebuild=True))
    assert reported[-1] == {lb_ref: None} and not checks.health_checks


def test_stale_udp_flows_are_handed_on_only_when_there_are_some() -> None:
    dns = service("dns", "198.19.0.53", [{"name": "dns", "port": 53, "protocol": "UDP"}])
    ports = [{"name": "dns", "port": 5353, "protocol": "UDP"}]
    dns_ref = ObjectRef("default", "dns")
    before = inputs_of(dns, endpoint_slice("dns", ["198.18.129.2", "198.18.129.3"], ports))
    after = inputs_of(dns, endpoint_slice("dns", ["198.18.129.2"], ports))
    handed: list[list[StaleFlows]] = []
    cleanup = StaleFlowCleanup(CONFIG, handed.append)
    cleanup.committed(commit({dns_ref: before}, {dns_ref: before}))
    cleanup.committed(commit({dns_ref: before}, {dns_ref: after}))  # an endpoint came: nothing is stale
    assert not handed
    cleanup.committed(commit({dns_ref: after}, {dns_ref: before}))
    assert len(handed) == 1 and handed[0]
