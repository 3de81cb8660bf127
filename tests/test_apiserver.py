"""The API server stand-in, driven only through the real `kubernetes` client (and kubectl when present).

These tests pin the wire behaviour nftproxy's tests will rely on: allocation
and validation of Services, watch semantics (bookmarks, resume, 410), paging,
status subresource, optimistic concurrency and the fault-injection hooks.
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from e2e.apiserver import ApiServerStandin

CIDR = "198.19.0.0/16"


@pytest.fixture
def api() -> Iterator[ApiServerStandin]:
    with ApiServerStandin(service_cidr=CIDR, bookmark_interval=0.3, seed=7) as server:
        yield server


@pytest.fixture
def core(api: ApiServerStandin) -> client.CoreV1Api:
    return client.CoreV1Api(api.client())


def svc(name: str, **spec: Any) -> client.V1Service:
    spec.setdefault("ports", [client.V1ServicePort(port=80, name="http")])
    spec.setdefault("selector", {"app": name})
    return client.V1Service(metadata=client.V1ObjectMeta(name=name, labels={"app": name}),
                            spec=client.V1ServiceSpec(**spec))


def error_of(fn: Callable[[], Any]) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ApiException) as info:
        fn()
    return info.value.status, json.loads(info.value.body)


class Collector:
    """Runs `watch.Watch().stream(...)` in a thread and queues what it yields (or raises)."""

    def __init__(self, func: Callable[..., Any], **kwargs: Any) -> None:
        self.w = watch.Watch()
        self.events: "queue.Queue[Any]" = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(func, kwargs), daemon=True)
        self.thread.start()

    def _run(self, func: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        try:
            for ev in self.w.stream(func, **kwargs):
                self.events.put(ev)
            self.events.put("END")
        except Exception as exc:  # handed to the test thread
            self.events.put(exc)

    def next(self, timeout: float = 5.0, skip_bookmarks: bool = True) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            item = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if skip_bookmarks and isinstance(item, dict) and item["type"] == "BOOKMARK":
                continue
            return item

    def stop(self) -> None:
        self.w.stop()
        self.thread.join(timeout=5)


# --- discovery ------------------------------------------------------------------------

def test_discovery_documents(api: ApiServerStandin, core: client.CoreV1Api) -> None:
    c = api.client()
    assert client.VersionApi(c).get_code().major == "1"
    core_res = {r.name: r for r in core.get_api_resources().resources}
    assert core_res["services"].short_names == ["svc"] and core_res["services"].namespaced
    assert core_res["services/status"].verbs == ["get", "patch", "update"]
    assert core_res["nodes"].namespaced is False and core_res["nodes"].singular_name == "node"
    assert {"namespaces", "events", "pods", "configmaps", "nodes/status"} <= set(core_res)
    groups = {g.name: g for g in client.ApisApi(c).get_api_versions().groups}
    assert {"discovery.k8s.io", "events.k8s.io", "coordination.k8s.io"} <= set(groups)
    eps = {r.name: r for r in client.DiscoveryV1Api(c).get_api_resources().resources}
    assert eps["endpointslices"].kind == "EndpointSlice"
    leases = client.CoordinationV1Api(c).get_api_resources()
    assert leases.group_version == "coordination.k8s.io/v1"
    names = [n.metadata.name for n in core.list_namespace().items]
    assert {"default", "kube-system"} <= set(names)


def test_dynamic_client_discovers_resources(api: ApiServerStandin) -> None:
    from kubernetes.dynamic import DynamicClient

    dyn = DynamicClient(api.client())
    slices = dyn.resources.get(api_version="discovery.k8s.io/v1", kind="EndpointSlice")
    assert slices.namespaced
    assert dyn.resources.get(api_version="v1", kind="Service").get(namespace="default").items == []


# --- services ---------------------------------------------------------------------------

def test_service_crud_allocates_and_releases_cluster_ip(api: ApiServerStandin, core: client.CoreV1Api) -> None:
    created = core.create_namespaced_service("default", svc("web"))
    ip = created.spec.cluster_ip
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(CIDR)
    assert created.spec.cluster_ips == [ip]
    assert created.spec.ip_families == ["IPv4"] and created.spec.ip_family_policy == "SingleStack"
    assert created.spec.session_affinity == "None" and created.spec.internal_traffic_policy == "Cluster"
    assert created.spec.external_traffic_policy is None
    assert created.spec.ports[0].protocol == "TCP" and created.spec.ports[0].target_port == 80
    assert created.metadata.uid and created.metadata.creation_timestamp and created.metadata.resource_version

    listed = core.list_namespaced_service("default")
    assert [s.metadata.name for s in listed.items] == ["web"]
    assert int(listed.metadata.resource_version) >= int(created.metadata.resource_version)
    assert core.list_service_for_all_namespaces(label_selector="app in (web,x)").items[0].spec.cluster_ip == ip
    assert core.list_namespaced_service("default", field_selector="metadata.name=nope").items == []

    patched = core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"tier": "front"}}})
    assert patched.metadata.labels == {"app": "web", "tier": "front"}
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)
    assert core.read_namespaced_service("web", "default").metadata.labels["tier"] == "front"

    # Taking an IP that is in use is refused; after delete the IP is free again.
    status, body = error_of(lambda: core.create_namespaced_service("default", svc("twin", cluster_ip=ip)))
    assert status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "spec.clusterIPs"
    assert "already allocated" in body["message"]
    deleted = core.delete_namespaced_service("web", "default")
    assert deleted.metadata.name == "web"
    assert core.create_namespaced_service("default", svc("twin", cluster_ip=ip)).spec.cluster_ip == ip

    status, body = error_of(lambda: core.read_namespaced_service("web", "default"))
    assert (status, body["reason"], body["kind"], body["status"]) == (404, "NotFound", "Status", "Failure")
    assert body["message"] == 'services "web" not found'
    status, body = error_of(lambda: core.create_namespaced_service("default", svc("twin")))
    assert (status, body["reason"]) == (409, "AlreadyExists")


def test_service_types_and_allocations(api: ApiServerStandin, core: client.CoreV1Api) -> None:
    np = core.create_namespaced_service("default", svc("np", type="NodePort", ports=[
        client.V1ServicePort(name="dns", port=53, protocol="UDP"),
        client.V1ServicePort(name="dns-tcp", port=53, protocol="TCP")]))
    ports = [p.node_port for p in np.spec.ports]
    assert all(30000 <= p <= 32767 for p in ports) and ports[0] == ports[1]
    assert np.spec.external_traffic_policy == "Cluster"

    lb = core.create_namespaced_service("default", svc("lb", type="LoadBalancer", external_traffic_policy="Local"))
    assert 30000 <= lb.spec.health_check_node_port <= 32767
    assert lb.spec.allocate_load_balancer_node_ports is True and lb.spec.ports[0].node_port

    headless = core.create_namespaced_service("default", svc("hl", cluster_ip="None"))
    assert headless.spec.cluster_ip == "None" and headless.spec.cluster_ips == ["None"]

    ext = core.create_namespaced_service("default", client.V1Service(
        metadata=client.V1ObjectMeta(name="ext"),
        spec=client.V1ServiceSpec(type="ExternalName", external_name="example.com")))
    assert ext.spec.cluster_ip is None and ext.spec.internal_traffic_policy is None

    taken = ports[0]
    status, body = error_of(lambda: core.create_namespaced_service("default", svc(
        "clash", type="NodePort", ports=[client.V1ServicePort(port=81, node_port=taken)])))
    assert status == 422 and "provided port is already allocated" in body["message"]
    status, body = error_of(lambda: core.create_namespaced_service("default", svc(
        "far", type="NodePort", ports=[client.V1ServicePort(port=81, node_port=80)])))
    assert status == 422 and body["details"]["causes"][0]["field"] == "spec.ports[0].nodePort"
    status, body = error_of(lambda: core.create_namespaced_service("default", svc("out", cluster_ip="10.0.0.1")))
    assert status == 422 and "not in the valid range" in body["message"]

    # NodePort -> ClusterIP wipes the node ports, which are then free for others.
    core.patch_namespaced_service("np", "default", {"spec": {"type": "ClusterIP"}})
    assert all(p.node_port is None for p in core.read_namespaced_service("np", "default").spec.ports)
    again = core.create_namespaced_service("default", svc(
        "again", type="NodePort", ports=[client.V1ServicePort(port=81, node_port=taken)]))
    assert again.spec.ports[0].node_port == taken


@pytest.mark.parametrize("port, field, reason", [
    ({"port": 0}, "spec.ports[0].port", "FieldValueInvalid"),
    ({"port": 70000}, "spec.ports[0].port", "FieldValueInvalid"),
    ({"port": 80, "protocol": "ICMP"}, "spec.ports[0].protocol", "FieldValueNotSupported"),
    ({"port": 80, "targetPort": "Not_A_Name"}, "spec.ports[0].targetPort", "FieldValueInvalid"),
])
def test_service_validation_is_422_naming_the_field(core: client.CoreV1Api, port: dict[str, Any], field: str,
                                                    reason: str) -> None:
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad"},
            "spec": {"selector": {"app": "x"}, "ports": [port]}}
    status, status_obj = error_of(lambda: core.create_namespaced_service("default", body))
    assert status == 422 and status_obj["reason"] == "Invalid"
    assert status_obj["details"]["kind"] == "Service" and status_obj["details"]["name"] == "bad"
    assert {"field": field, "reason": reason} in [{k: c[k] for k in ("field", "reason")}
                                                  for c in status_obj["details"]["causes"]]
    assert status_obj["message"].startswith('Service "bad" is invalid: ')


def test_generate_name_and_namespace_checks(core: client.CoreV1Api) -> None:
    made = core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(generate_name="cfg-"), data={"a": "b"}))
    assert made.metadata.name.startswith("cfg-") and len(made.metadata.name) == 9
    status, body = error_of(lambda: core.create_namespaced_config_map("nope", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="x"))))
    assert status == 404 and body["message"] == 'namespaces "nope" not found'


def test_status_subresource_and_status_ignored_on_main_writes(core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", svc("lb", type="LoadBalancer"))
    ingress = {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}
    after = core.patch_namespaced_service_status("lb", "default", ingress)
    assert after.status.load_balancer.ingress[0].ip == "203.0.113.7"

    # A spec change sent to /status is ignored; a status change sent to the main resource too.
    core.patch_namespaced_service_status("lb", "default", {"spec": {"sessionAffinity": "ClientIP"}})
    core.patch_namespaced_service("lb", "default", {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}})
    now = core.read_namespaced_service("lb", "default")
    assert now.spec.session_affinity == "None"
    assert now.status.load_balancer.ingress[0].ip == "203.0.113.7"
    # A write that changes nothing keeps the resourceVersion (no event either).
    same = core.patch_namespaced_service("lb", "default", {"metadata": {"labels": {"app": "lb"}}})
    assert same.metadata.resource_version == now.metadata.resource_version

    node = core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="n1"),
                                          status=client.V1NodeStatus(addresses=[client.V1NodeAddress(
                                              type="InternalIP", address="192.0.2.10")])))
    assert node.status.addresses[0].address == "192.0.2.10"
    core.patch_node_status("n1", {"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}})
    types = sorted(a.type for a in core.read_node("n1").status.addresses)
    assert types == ["Hostname", "InternalIP"]  # strategic merge by `type`


def test_optimistic_concurrency_conflict(core: client.CoreV1Api) -> None:
    first = core.create_namespaced_service("default", svc("occ"))
    first.metadata.labels["v"] = "1"
    core.replace_namespaced_service("occ", "default", first)
    first.metadata.labels["v"] = "2"  # still carries the old resourceVersion
    status, body = error_of(lambda: core.replace_namespaced_service("occ", "default", first))
    assert (status, body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in body["message"]
    stale = {"metadata": {"resourceVersion": first.metadata.resource_version, "labels": {"v": "3"}}}
    assert error_of(lambda: core.patch_namespaced_service("occ", "default", stale))[0] == 409


def test_json_patch_and_strategic_merge_of_ports(core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", svc("jp", ports=[client.V1ServicePort(name="a", port=80)]))
    core.patch_namespaced_service("jp", "default", [
        {"op": "add", "path": "/metadata/annotations", "value": {"k": "v"}},
        {"op": "replace", "path": "/spec/ports/0/targetPort", "value": 8080}])
    got = core.read_namespaced_service("jp", "default")
    assert got.metadata.annotations == {"k": "v"} and got.spec.ports[0].target_port == 8080
    core.patch_namespaced_service("jp", "default", {"spec": {"ports": [{"name": "b", "port": 443}]}})
    assert [p.port for p in core.read_namespaced_service("jp", "default").spec.ports] == [80, 443]
    status, _ = error_of(lambda: core.patch_namespaced_service("jp", "default", [
        {"op": "test", "path": "/spec/type", "value": "NodePort"}]))
    assert status == 422


# --- endpointslices, leases, events ----------------------------------------------------------

def test_endpointslices(api: ApiServerStandin) -> None:
    disc = client.DiscoveryV1Api(api.client())
    body = client.V1EndpointSlice(
        metadata=client.V1ObjectMeta(name="web-abc", labels={"kubernetes.io/service-name": "web"}),
        address_type="IPv4",
        endpoints=[client.V1Endpoint(addresses=["192.0.2.20"],
                                     conditions=client.V1EndpointConditions(ready=True), node_name="n1")],
        ports=[client.DiscoveryV1EndpointPort(name="http", port=8080)])
    made = disc.create_namespaced_endpoint_slice("default", body)
    assert made.metadata.generation == 1 and made.ports[0].protocol == "TCP"
    found = disc.list_endpoint_slice_for_all_namespaces(label_selector="kubernetes.io/service-name=web")
    assert [s.metadata.name for s in found.items] == ["web-abc"]
    assert disc.list_namespaced_endpoint_slice("default", label_selector="!kubernetes.io/service-name").items == []
    bumped = disc.patch_namespaced_endpoint_slice("web-abc", "default", {"endpoints": [
        {"addresses": ["192.0.2.21"], "conditions": {"ready": False}}]})
    assert bumped.metadata.generation == 2 and bumped.endpoints[0].addresses == ["192.0.2.21"]
    status, body_ = error_of(lambda: disc.create_namespaced_endpoint_slice("default", {
        "metadata": {"name": "bad"}, "addressType": "IPv4", "endpoints": [{"addresses": ["not-an-ip"]}]}))
    assert status == 422 and body_["details"]["causes"][0]["field"] == "endpoints[0].addresses[0]"


def test_leases_create_update(api: ApiServerStandin) -> None:
    coord = client.CoordinationV1Api(api.client())
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    lease = coord.create_namespaced_lease("kube-node-lease", client.V1Lease(
        metadata=client.V1ObjectMeta(name="n1"),
        spec=client.V1LeaseSpec(holder_identity="n1", lease_duration_seconds=40, renew_time=now)))
    assert lease.spec.renew_time.replace(microsecond=0) == now.replace(microsecond=0)
    lease.spec.renew_time = now + dt.timedelta(seconds=10)
    renewed = coord.replace_namespaced_lease("n1", "kube-node-lease", lease)
    assert renewed.spec.renew_time > lease.metadata.creation_timestamp
    assert int(renewed.metadata.resource_version) > int(lease.metadata.resource_version)
    status, _ = error_of(lambda: coord.replace_namespaced_lease("n1", "kube-node-lease", lease))
    assert status == 409  # lease still carries the pre-update resourceVersion


def test_events_core_and_events_k8s_io_share_storage(api: ApiServerStandin, core: client.CoreV1Api) -> None:
    import datetime as dt

    ev = core.create_namespaced_event("default", client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="web.1"), reason="Synced", message="rules applied", type="Normal",
        event_time=dt.datetime.now(dt.timezone.utc), action="Sync",
        involved_object=client.V1ObjectReference(kind="Service", name="web", namespace="default"),
        reporting_component="nftproxy", reporting_instance="n1", count=1))
    assert ev.reason == "Synced"
    ev_api = client.EventsV1Api(api.client())
    seen = ev_api.read_namespaced_event("web.1", "default")
    assert seen.note == "rules applied" and seen.regarding.name == "web" and seen.reporting_controller == "nftproxy"
    assert [e.metadata.name for e in core.list_namespaced_event(
        "default", field_selector="involvedObject.name=web").items] == ["web.1"]
    made = ev_api.create_namespaced_event("default", client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="web.2"), event_time=dt.datetime.now(dt.timezone.utc),
        reporting_controller="nftproxy", reporting_instance="n1", action="Sync", reason="Synced", type="Normal",
        regarding=client.V1ObjectReference(kind="Service", name="web", namespace="default")))
    assert core.read_namespaced_event("web.2", "default").reporting_component == "nftproxy"
    assert made.metadata.resource_version
    status, body = error_of(lambda: ev_api.create_namespaced_event("default", client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="web.3"), event_time=dt.datetime.now(dt.timezone.utc), reason="Synced")))
    assert status == 422
    assert {"reportingController", "reportingInstance", "action"} <= {c["field"] for c in body["details"]["causes"]}


# --- list paging ----------------------------------------------------------------------------

def test_paging_with_limit_and_continue_is_a_consistent_snapshot(api: ApiServerStandin,
                                                                  core: client.CoreV1Api) -> None:
    for i in range(5):
        core.create_namespaced_service("default", svc(f"p{i}"))
    first = core.list_namespaced_service("default", limit=2)
    assert [s.metadata.name for s in first.items] == ["p0", "p1"]
    assert first.metadata.remaining_item_count == 3 and first.metadata.var_continue
    core.create_namespaced_service("default", svc("p15"))  # not in the snapshot
    core.delete_namespaced_service("p3", "default")  # still in the snapshot
    second = core.list_namespaced_service("default", limit=2, _continue=first.metadata.var_continue)
    third = core.list_namespaced_service("default", limit=2, _continue=second.metadata.var_continue)
    assert [s.metadata.name for s in second.items + third.items] == ["p2", "p3", "p4"]
    assert second.metadata.resource_version == first.metadata.resource_version
    assert not third.metadata.var_continue
    api.compact()
    token = core.list_namespaced_service("default", limit=1).metadata.var_continue
    core.create_namespaced_service("default", svc("p9"))
    api.compact()
    status, body = error_of(lambda: core.list_namespaced_service("default", limit=1, _continue=token))
    assert (status, body["reason"]) == (410, "Expired")


# --- watch -----------------------------------------------------------------------------------

def test_watch_added_modified_deleted_bookmark_and_resume(api: ApiServerStandin, core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", svc("pre"))
    listed = core.list_namespaced_service("default")
    col = Collector(core.list_namespaced_service, namespace="default", allow_watch_bookmarks=True,
                    resource_version=listed.metadata.resource_version, timeout_seconds=5)
    assert api.wait_for_watches(1)
    core.create_namespaced_service("default", svc("w"))
    core.patch_namespaced_service("w", "default", {"metadata": {"labels": {"x": "y"}}})
    core.delete_namespaced_service("w", "default")
    kinds = [(e["type"], e["object"].metadata.name) for e in (col.next(), col.next(), col.next())]
    assert kinds == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
    deleted_rv = int(col.w.resource_version)
    bookmark = col.next(skip_bookmarks=False)
    assert bookmark["type"] == "BOOKMARK"
    assert set(bookmark["raw_object"]) == {"kind", "apiVersion", "metadata"}
    assert int(bookmark["raw_object"]["metadata"]["resourceVersion"]) >= deleted_rv
    col.stop()

    # Resuming from the "pre" list RV replays exactly what happened since.
    events = []
    for ev in watch.Watch().stream(core.list_namespaced_service, namespace="default",
                                   resource_version=listed.metadata.resource_version, timeout_seconds=1):
        events.append((ev["type"], ev["object"].metadata.name))
    assert events == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]

    # resourceVersion "0" starts with synthetic ADDED events for the current state.
    initial = [(ev["type"], ev["object"].metadata.name) for ev in watch.Watch().stream(
        core.list_namespaced_service, namespace="default", resource_version="0", timeout_seconds=1)]
    assert initial == [("ADDED", "pre")]


def test_watch_selectors_turn_label_changes_into_added_deleted(api: ApiServerStandin,
                                                               core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", svc("sel"))
    rv = core.list_namespaced_service("default").metadata.resource_version
    col = Collector(core.list_service_for_all_namespaces, label_selector="proxy=yes", resource_version=rv,
                    timeout_seconds=5)
    assert api.wait_for_watches(1)
    core.patch_namespaced_service("sel", "default", {"metadata": {"labels": {"proxy": "yes"}}})
    core.patch_namespaced_service("sel", "default", {"metadata": {"labels": {"proxy": "no"}}})
    assert [col.next()["type"], col.next()["type"]] == ["ADDED", "DELETED"]
    col.stop()


def test_watch_wire_format_is_chunked_ndjson(api: ApiServerStandin, core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", svc("wire"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = api.url + "/api/v1/namespaces/default/services?watch=1&timeoutSeconds=1&allowWatchBookmarks=true"
    with opener.open(url, timeout=10) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.headers["Content-Type"] == "application/json"
        lines = [json.loads(line) for line in resp.read().decode().splitlines() if line]
    assert lines[0]["type"] == "ADDED" and lines[0]["object"]["kind"] == "Service"
    assert lines[0]["object"]["metadata"]["name"] == "wire"
    assert lines[-1]["type"] == "BOOKMARK"


def test_label_and_field_selector_grammar(core: client.CoreV1Api) -> None:
    for name, labels in (("a", {"tier": "web", "env": "prod"}), ("b", {"tier": "db"}), ("c", {})):
        core.create_namespaced_service("default", client.V1Service(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)])))

    def names(**kw: Any) -> list[str]:
        return [s.metadata.name for s in core.list_namespaced_service("default", **kw).items]

    assert names(label_selector="tier") == ["a", "b"]
    assert names(label_selector="!tier") == ["c"]
    assert names(label_selector="tier!=web") == ["b", "c"]
    assert names(label_selector="tier notin (web)") == ["b", "c"]
    assert names(label_selector="tier in (web, db),env==prod") == ["a"]
    assert names(field_selector="metadata.name!=a") == ["b", "c"]
    assert names(field_selector="metadata.namespace=default,metadata.name=c") == ["c"]
    status, body = error_of(lambda: core.list_namespaced_service("default", field_selector="spec.ports=1"))
    assert status == 400 and body["reason"] == "BadRequest"


def test_compact_makes_resumed_watch_410(api: ApiServerStandin, core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", svc("a"))
    old_rv = core.list_namespaced_service("default").metadata.resource_version
    core.create_namespaced_service("default", svc("b"))
    api.compact()
    # With timeout_seconds the client does not retry: the in-stream ERROR becomes ApiException(410).
    with pytest.raises(ApiException) as info:
        list(watch.Watch().stream(core.list_namespaced_service, namespace="default", resource_version=old_rv,
                                  timeout_seconds=2))
    assert info.value.status == 410 and "Expired" in info.value.reason
    # Without it the client retries once with the same version, then gives up with the same 410.
    with pytest.raises(ApiException) as info:
        list(watch.Watch().stream(core.list_namespaced_service, namespace="default", resource_version=old_rv))
    assert info.value.status == 410
    # On the wire it is a 200 stream whose only line is an ERROR event carrying a 410 Status.
    raw = core.list_namespaced_service("default", watch=True, resource_version=old_rv, _preload_content=False)
    assert raw.status == 200
    line = json.loads(raw.data.decode().splitlines()[0])
    assert line["type"] == "ERROR" and line["object"]["code"] == 410 and line["object"]["reason"] == "Expired"


def test_history_window_is_bounded() -> None:
    with ApiServerStandin(service_cidr=CIDR, history_size=3) as small:
        core = client.CoreV1Api(small.client())
        first = core.create_namespaced_config_map("default", {"metadata": {"name": "c0"}}).metadata.resource_version
        for i in range(1, 6):
            core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
        with pytest.raises(ApiException) as info:
            list(watch.Watch().stream(core.list_namespaced_config_map, namespace="default",
                                      resource_version=first, timeout_seconds=1))
        assert info.value.status == 410
        recent = str(int(small.resource_version) - 2)
        names = [e["object"].metadata.name for e in watch.Watch().stream(
            core.list_namespaced_config_map, namespace="default", resource_version=recent, timeout_seconds=1)]
        assert names == ["c4", "c5"]


def test_cut_watches_ends_streams(api: ApiServerStandin, core: client.CoreV1Api) -> None:
    col = Collector(core.list_namespaced_service, namespace="default", timeout_seconds=10)
    assert api.wait_for_watches(1)
    assert api.cut_watches() == 1
    ended = col.next()
    # An abrupt cut surfaces as a broken chunked stream in urllib3.
    assert isinstance(ended, (urllib3.exceptions.ProtocolError, Exception)) and ended != "END"
    deadline = time.monotonic() + 5  # the cut watch must be gone before the next one is counted
    while api.watch_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert api.watch_count == 0
    col2 = Collector(core.list_namespaced_service, namespace="default", timeout_seconds=10)
    assert api.wait_for_watches(1)
    assert api.cut_watches(graceful=True) == 1
    assert col2.next() == "END"
    deadline = time.monotonic() + 5  # the server unregisters the watch just after the client saw the end
    while api.watch_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert api.watch_count == 0


def test_watch_without_timeout_reconnects_after_graceful_cut(api: ApiServerStandin,
                                                             core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", svc("r1"))
    rv = core.list_namespaced_service("default").metadata.resource_version
    col = Collector(core.list_namespaced_service, namespace="default", resource_version=rv)
    assert api.wait_for_watches(1)
    api.cut_watches(graceful=True)
    core.create_namespaced_service("default", svc("r2"))
    ev = col.next()
    assert (ev["type"], ev["object"].metadata.name) == ("ADDED", "r2")
    watches = [p for m, p in api.request_log if "watch=true" in p]
    assert len(watches) == 2 and f"resourceVersion={rv}" in watches[0]
    col.stop()


def test_request_log_records_list_then_watch(api: ApiServerStandin, core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_service("default").metadata.resource_version
    list(watch.Watch().stream(core.list_namespaced_service, namespace="default", resource_version=rv,
                              timeout_seconds=1))
    svc_calls = [p for m, p in api.request_log if m == "GET" and "/services" in p]
    assert "watch" not in svc_calls[0] and "watch=true" in svc_calls[1]


# --- faults and back doors --------------------------------------------------------------------

def test_set_down_refuses_then_recovers_on_same_port(api: ApiServerStandin) -> None:
    cfg = client.Configuration()
    cfg.host = api.url
    cfg.retries = False
    core = client.CoreV1Api(client.ApiClient(cfg))
    port = api.port
    core.list_namespace()
    assert api.drop_connections(host="127.0.0.1") == 1  # the client's pooled keep-alive connection
    core.list_namespace()  # urllib3 notices the dropped connection and opens a new one
    api.set_down(True)
    with pytest.raises(urllib3.exceptions.HTTPError):
        core.list_namespace()
    api.set_down(False)
    assert api.port == port
    assert "default" in [n.metadata.name for n in core.list_namespace().items]
    api.set_down(True, mode="unavailable")
    status, body = error_of(core.list_namespace)
    assert (status, body["reason"]) == (503, "ServiceUnavailable")
    api.set_down(False)
    core.list_namespace()


def test_put_raw_stores_invalid_objects_and_emits_events(api: ApiServerStandin, core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_service("default").metadata.resource_version
    col = Collector(core.list_namespaced_service, namespace="default", resource_version=rv, timeout_seconds=5,
                    deserialize=False)
    assert api.wait_for_watches(1)
    bad = api.put_raw("services", {"metadata": {"name": "weird"},
                                   "spec": {"clusterIP": "not-an-ip", "ports": [{"port": 99999}]}})
    assert bad["metadata"]["resourceVersion"] and bad["metadata"]["uid"]
    ev = col.next()
    assert ev["type"] == "ADDED" and ev["object"]["spec"]["clusterIP"] == "not-an-ip"
    col.stop()
    assert api.get_raw("services", "weird")["spec"]["ports"][0]["port"] == 99999
    raw = core.list_namespaced_service("default", _preload_content=False)
    assert json.loads(raw.data)["items"][0]["spec"]["clusterIP"] == "not-an-ip"
    api.delete_raw("services", "weird")
    assert api.get_raw("services", "weird") is None


def _raw(api: ApiServerStandin, method: str, path: str, body: Any = None,
         ctype: str = "application/json") -> tuple[int, dict[str, Any], list[str]]:
    """Plain HTTP, for bodies the v37 client's pydantic checks would refuse to send."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api.url + path, data=data, method=method, headers={"Content-Type": ctype})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), resp.headers.get_all("Warning") or []
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers.get_all("Warning") or []


def test_unknown_fields_are_pruned_or_rejected(api: ApiServerStandin, core: client.CoreV1Api) -> None:
    body = {"metadata": {"name": "extra"}, "spec": {"ports": [{"port": 80, "bogus": 1}], "alsoBogus": True}}
    status, made, warnings = _raw(api, "POST", "/api/v1/namespaces/default/services", body)
    assert status == 201 and '299 - "unknown field \\"spec.alsoBogus\\""' in warnings
    assert "bogus" not in made["spec"]["ports"][0] and "alsoBogus" not in made["spec"]
    assert core.read_namespaced_service("extra", "default").spec.ports[0].port == 80
    body["metadata"]["name"] = "extra2"
    status, resp, _ = _raw(api, "POST", "/api/v1/namespaces/default/services?fieldValidation=Strict", body)
    assert status == 400 and 'unknown field "spec.alsoBogus"' in resp["message"]
    status, resp, _ = _raw(api, "POST", "/api/v1/namespaces/default/services",
                           {"metadata": {"name": "typed"}, "spec": {"ports": [{"port": "80"}]}})
    assert status == 400 and "cannot unmarshal string" in resp["message"]


def test_namespace_delete_removes_contents(api: ApiServerStandin, core: client.CoreV1Api) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="tmp")))
    ip = core.create_namespaced_service("tmp", svc("gone")).spec.cluster_ip
    core.delete_namespace("tmp")
    assert core.list_service_for_all_namespaces().items == []
    assert core.create_namespaced_service("default", svc("reuse", cluster_ip=ip)).spec.cluster_ip == ip


# --- out-of-process use --------------------------------------------------------------------------

def test_standalone_module_and_kubeconfig(tmp_path: Any) -> None:
    kc = tmp_path / "kubeconfig"
    proc = subprocess.Popen([sys.executable, "-m", "e2e.apiserver", "--port", "0", "--kubeconfig-out", str(kc)],
                            stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("serving http://127.0.0.1:")
        from kubernetes import config

        core = client.CoreV1Api(config.new_client_from_config(config_file=str(kc)))
        assert "kube-system" in [n.metadata.name for n in core.list_namespace().items]
    finally:
        proc.terminate()
        proc.wait(timeout=5)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_create_get_delete(api: ApiServerStandin, tmp_path: Any) -> None:
    manifest = tmp_path / "svc.yaml"
    manifest.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: kc\nspec:\n  type: NodePort\n"
                        "  selector: {app: kc}\n  ports:\n  - {name: http, port: 80}\n")
    env = {**os.environ, "KUBECONFIG": api.kubeconfig_path}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, timeout=30)

    out = kubectl("create", "-f", str(manifest))
    assert out.returncode == 0, out.stderr
    got = kubectl("get", "svc", "kc", "-o", "json")
    assert got.returncode == 0, got.stderr
    assert ipaddress.ip_address(json.loads(got.stdout)["spec"]["clusterIP"]) in ipaddress.ip_network(CIDR)
    table = kubectl("get", "svc", "-o", "wide")  # server-side printing: the real columns
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    assert row.split()[:2] == ["kc", "NodePort"] and row.split()[-1] == "app=kc"
    out = kubectl("apply", "-f", str(manifest))
    assert out.returncode == 0, out.stderr
    out = kubectl("delete", "-f", str(manifest))
    assert out.returncode == 0 and "deleted" in out.stdout, out.stderr
    assert kubectl("get", "svc", "kc").returncode != 0
