"""The API server stand-in serves MetalLB's custom resources from deploy/'s CRDs, as a real server would.

Driven through the real `kubernetes` client (CustomObjectsApi) and kubectl when present: discovery,
create/get/list/paging/watch, the schema's defaults, pruning and errors (worded as apiextensions words
them), and the status subresource. The nftproxy agent reads MetalLB's objects through exactly these paths.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from e2e.apiserver import ApiServerStandin
from tests.test_apiserver import Collector, error_of

CRDS = Path(__file__).resolve().parents[1] / "deploy" / "components" / "loadbalancer" / "crds.yaml"
GROUP, V1BETA1, NS = "metallb.io", "v1beta1", "metallb-system"


@pytest.fixture
def api() -> Iterator[ApiServerStandin]:
    with ApiServerStandin(bookmark_interval=0.3, seed=7) as server:
        client.CoreV1Api(server.client()).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
        yield server


@pytest.fixture
def custom(api: ApiServerStandin) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api.client())


def pool(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("addresses", ["192.168.10.0/24"])
    return {"apiVersion": f"{GROUP}/{V1BETA1}", "kind": "IPAddressPool", "metadata": {"name": name}, "spec": spec}


def create_pool(custom: client.CustomObjectsApi, name: str, **spec: Any) -> dict[str, Any]:
    return custom.create_namespaced_custom_object(GROUP, V1BETA1, NS, "ipaddresspools", pool(name, **spec))


# --- discovery and the CRD list ---------------------------------------------------------------------

def test_discovery_serves_every_version_of_the_deployed_crds(api: ApiServerStandin,
                                                             custom: client.CustomObjectsApi) -> None:
    deployed = [d for d in yaml.safe_load_all(CRDS.read_text()) if d]
    for crd in deployed:
        for version in crd["spec"]["versions"]:
            served = {r.name: r for r in custom.get_api_resources(GROUP, version["name"]).resources}
            plural = crd["spec"]["names"]["plural"]
            assert served[plural].kind == crd["spec"]["names"]["kind"] and served[plural].namespaced
            assert set(served[plural].verbs) >= {"create", "get", "list", "watch", "update", "patch", "delete"}
            assert f"{plural}/status" in served
    group = next(g for g in client.ApisApi(api.client()).get_api_versions().groups if g.name == GROUP)
    assert group.preferred_version.version == "v1beta2"  # kube-aware order, as the real server prefers
    assert {v.version for v in group.versions} == {"v1beta1", "v1beta2"}

    # ... and the CRDs themselves, read-only, as an established CRD looks
    extensions = client.ApiextensionsV1Api(api.client())
    listed = {c.metadata.name: c for c in extensions.list_custom_resource_definition().items}
    assert set(listed) == {crd["metadata"]["name"] for crd in deployed}
    pools = listed["ipaddresspools.metallb.io"]
    assert {c.type: c.status for c in pools.status.conditions} == {"NamesAccepted": "True", "Established": "True"}
    assert pools.status.stored_versions == ["v1beta1"]
    status, body = error_of(lambda: extensions.delete_custom_resource_definition("ipaddresspools.metallb.io"))
    assert (status, body["reason"]) == (405, "MethodNotAllowed")


# --- create, defaults, pruning, errors -------------------------------------------------------------

def test_create_applies_defaults_and_prunes_unknown_fields(custom: client.CustomObjectsApi) -> None:
    body = pool("p", serviceAllocation={"priority": 5, "namespaces": ["web"], "colour": "red"}, extra=1)
    body["metadata"]["bogus"] = True
    created, _, headers = custom.create_namespaced_custom_object_with_http_info(
        GROUP, V1BETA1, NS, "ipaddresspools", body)
    assert created["spec"] == {"addresses": ["192.168.10.0/24"], "autoAssign": True, "avoidBuggyIPs": False,
                               "serviceAllocation": {"priority": 5, "namespaces": ["web"]}}
    assert "bogus" not in created["metadata"] and created["metadata"]["generation"] == 1
    # fieldValidation defaults to Warn: each pruned field is named in a Warning header
    warnings = headers.get("Warning", "")
    for field in ("metadata.bogus", "spec.extra", "spec.serviceAllocation.colour"):
        assert f'unknown field \\"{field}\\"' in warnings, warnings
    assert custom.get_namespaced_custom_object(GROUP, V1BETA1, NS, "ipaddresspools", "p") == created
    # an explicit value stands; a replace without the field gets the default again
    kept = create_pool(custom, "q", autoAssign=False, avoidBuggyIPs=True)
    assert (kept["spec"]["autoAssign"], kept["spec"]["avoidBuggyIPs"]) == (False, True)
    replaced = custom.replace_namespaced_custom_object(GROUP, V1BETA1, NS, "ipaddresspools", "q",
                                                       {**pool("q"), "metadata": kept["metadata"]})
    assert replaced["spec"]["autoAssign"] is True and replaced["metadata"]["generation"] == 2
    # a BGPPeer (v1beta2) gets its port's default
    peer = custom.create_namespaced_custom_object(GROUP, "v1beta2", NS, "bgppeers", {
        "apiVersion": f"{GROUP}/v1beta2", "kind": "BGPPeer", "metadata": {"name": "tor"},
        "spec": {"myASN": 64512, "peerASN": 64513, "peerAddress": "10.0.0.1"}})
    assert peer["spec"]["peerPort"] == 179


def test_strict_field_validation_refuses_unknown_fields(custom: client.CustomObjectsApi) -> None:
    status, body = error_of(lambda: custom.create_namespaced_custom_object(
        GROUP, V1BETA1, NS, "ipaddresspools", pool("p", autoassign=False), field_validation="Strict"))
    assert (status, body["reason"]) == (400, "BadRequest")
    assert body["message"] == 'strict decoding error: unknown field "spec.autoassign"'


@pytest.mark.parametrize("spec, field, message", [
    ({"addresses": ["10.0.0.0/24"], "autoAssign": "yes"}, "spec.autoAssign",
     'Invalid value: "string": spec.autoAssign in body must be of type boolean: "string"'),
    ({}, "spec.addresses", "Required value"),
    ({"addresses": "10.0.0.0/24"}, "spec.addresses",
     'Invalid value: "string": spec.addresses in body must be of type array: "string"'),
    ({"addresses": ["10.0.0.0/24", 7]}, "spec.addresses[1]",
     'Invalid value: "integer": spec.addresses[1] in body must be of type string: "integer"'),
    ({"addresses": ["10.0.0.0/24"], "serviceAllocation": {"priority": 1.5}}, "spec.serviceAllocation.priority",
     'Invalid value: "number": spec.serviceAllocation.priority in body must be of type integer: "number"'),
    ({"addresses": ["10.0.0.0/24"],
      "serviceAllocation": {"serviceSelectors": [{"matchExpressions": [{"key": "app", "operator": "Is"}]}]}},
     "spec.serviceAllocation.serviceSelectors[0].matchExpressions[0].operator",
     'Unsupported value: "Is": supported values: "In", "NotIn", "Exists", "DoesNotExist"'),
])
def test_schema_errors_are_422_invalid_naming_the_field(custom: client.CustomObjectsApi, spec: dict[str, Any],
                                                         field: str, message: str) -> None:
    body = pool("bad")
    body["spec"] = spec
    status, answer = error_of(lambda: custom.create_namespaced_custom_object(GROUP, V1BETA1, NS, "ipaddresspools",
                                                                            body))
    assert (status, answer["reason"]) == (422, "Invalid")
    assert answer["message"] == f'IPAddressPool.metallb.io "bad" is invalid: {field}: {message}'
    assert [(c["field"], c["message"]) for c in answer["details"]["causes"]] == [(field, message)]


def test_minimum_and_maximum_are_enforced(custom: client.CustomObjectsApi) -> None:
    body = {"apiVersion": f"{GROUP}/v1beta2", "kind": "BGPPeer", "metadata": {"name": "tor"},
            "spec": {"myASN": 4294967296, "peerASN": 64513, "peerAddress": "10.0.0.1", "peerPort": 0}}
    status, answer = error_of(lambda: custom.create_namespaced_custom_object(GROUP, "v1beta2", NS, "bgppeers", body))
    assert status == 422
    assert answer["message"] == (
        'BGPPeer.metallb.io "tor" is invalid: ['
        "spec.myASN: Invalid value: 4294967296: spec.myASN in body should be less than or equal to 4294967295, "
        "spec.peerPort: Invalid value: 0: spec.peerPort in body should be greater than or equal to 1]")


# --- status subresource --------------------------------------------------------------------------

def test_status_is_written_only_through_the_status_subresource(custom: client.CustomObjectsApi) -> None:
    counts = {"assignedIPv4": 1, "assignedIPv6": 0, "availableIPv4": 255, "availableIPv6": 0}
    body = pool("p")
    body["status"] = counts
    created = custom.create_namespaced_custom_object(GROUP, V1BETA1, NS, "ipaddresspools", body)
    assert "status" not in created  # dropped on create
    written = custom.replace_namespaced_custom_object_status(GROUP, V1BETA1, NS, "ipaddresspools", "p",
                                                             {**created, "status": counts})
    assert written["status"] == counts and written["metadata"]["generation"] == 1
    # a main-resource write keeps the stored status whatever it sends; a spec change bumps generation
    spec_change = {**written, "spec": {**written["spec"], "autoAssign": False}, "status": {}}
    updated = custom.replace_namespaced_custom_object(GROUP, V1BETA1, NS, "ipaddresspools", "p", spec_change)
    assert updated["status"] == counts and updated["metadata"]["generation"] == 2
    patched = custom.patch_namespaced_custom_object_status(GROUP, V1BETA1, NS, "ipaddresspools", "p",
                                                           {"status": {"assignedIPv4": 2}})
    assert patched["status"]["assignedIPv4"] == 2 and patched["metadata"]["generation"] == 2
    # the status is held to its schema too
    status, answer = error_of(lambda: custom.patch_namespaced_custom_object_status(
        GROUP, V1BETA1, NS, "ipaddresspools", "p", {"status": {"assignedIPv6": "none"}}))
    assert status == 422 and answer["details"]["causes"][0]["field"] == "status.assignedIPv6"
    status, answer = error_of(lambda: custom.replace_namespaced_custom_object_status(
        GROUP, V1BETA1, NS, "ipaddresspools", "p", {**patched, "status": {"assignedIPv4": 2}}))
    assert status == 422 and "status.assignedIPv6: Required value" in answer["message"]


# --- list, paging, watch ---------------------------------------------------------------------------

def test_list_pages_and_a_watch_from_a_resource_version_sees_every_change(api: ApiServerStandin,
                                                                          custom: client.CustomObjectsApi) -> None:
    for i in range(3):
        create_pool(custom, f"p{i}")
    first = custom.list_namespaced_custom_object(GROUP, V1BETA1, NS, "ipaddresspools", limit=2)
    assert first["kind"] == "IPAddressPoolList" and [p["metadata"]["name"] for p in first["items"]] == ["p0", "p1"]
    assert first["metadata"]["remainingItemCount"] == 1
    rest = custom.list_namespaced_custom_object(GROUP, V1BETA1, NS, "ipaddresspools", limit=2,
                                                _continue=first["metadata"]["continue"])
    assert [p["metadata"]["name"] for p in rest["items"]] == ["p2"] and "continue" not in rest["metadata"]

    since = first["metadata"]["resourceVersion"]
    live = Collector(custom.list_namespaced_custom_object, group=GROUP, version=V1BETA1, namespace=NS,
                     plural="ipaddresspools", resource_version=since, allow_watch_bookmarks=True, timeout_seconds=5)
    assert api.wait_for_watches(1)
    create_pool(custom, "w")
    custom.patch_namespaced_custom_object(GROUP, V1BETA1, NS, "ipaddresspools", "w", {"spec": {"autoAssign": False}})
    custom.delete_namespaced_custom_object(GROUP, V1BETA1, NS, "ipaddresspools", "w")
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in (live.next() for _ in range(3))]
    assert seen == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
    bookmark = live.next(skip_bookmarks=False)
    assert bookmark["type"] == "BOOKMARK" and bookmark["object"]["kind"] == "IPAddressPool"
    live.w.stop()

    # the same history, replayed to a watch that starts later from the same resourceVersion
    replay = watch.Watch().stream(custom.list_namespaced_custom_object, GROUP, V1BETA1, NS, "ipaddresspools",
                                  resource_version=since, timeout_seconds=1)
    assert [(e["type"], e["object"]["spec"]["autoAssign"]) for e in replay] == [
        ("ADDED", True), ("MODIFIED", False), ("DELETED", False)]

    api.compact()
    with pytest.raises(ApiException) as info:
        list(watch.Watch().stream(custom.list_namespaced_custom_object, GROUP, V1BETA1, NS, "ipaddresspools",
                                  resource_version=since, timeout_seconds=1))
    assert info.value.status == 410


# --- kubectl ---------------------------------------------------------------------------------------

METALLB_SAMPLE = f"""\
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: first-pool
  namespace: {NS}
spec:
  addresses:
  - 192.168.1.240-192.168.1.250
  - fc00:f853:ccd:e799::/124
  autoAssign: false
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: example
  namespace: {NS}
spec:
  ipAddressPools:
  - first-pool
  nodeSelectors:
  - matchLabels:
      kubernetes.io/hostname: worker-1
"""


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_applies_metallbs_sample_and_prints_its_columns(api: ApiServerStandin, tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": api.kubeconfig_path}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, timeout=30)

    manifest = tmp_path / "metallb.yaml"
    manifest.write_text(METALLB_SAMPLE)
    out = kubectl("apply", "-f", str(manifest))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["ipaddresspool.metallb.io/first-pool created",
                                          "l2advertisement.metallb.io/example created"]
    out = kubectl("apply", "-f", str(manifest))
    assert out.returncode == 0 and out.stdout.count("unchanged") == 2, out.stdout + out.stderr

    table = kubectl("get", "ipaddresspools", "-n", NS)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "AUTO", "ASSIGN", "AVOID", "BUGGY", "IPS", "ADDRESSES"]
    assert row.split() == ["first-pool", "false", "false", '["192.168.1.240-192.168.1.250","fc00:f853:ccd:e799::/124"]']
    got = kubectl("get", "l2advertisement", "example", "-n", NS, "-o", "json")
    assert json.loads(got.stdout)["spec"]["nodeSelectors"] == [{"matchLabels": {"kubernetes.io/hostname": "worker-1"}}]
    assert "ipaddresspools.metallb.io" in kubectl("get", "crd", "-o", "name").stdout

    # kubectl asks for strict field validation: a misspelt field is refused, not silently dropped
    manifest.write_text(METALLB_SAMPLE.replace("autoAssign", "autoassign"))
    out = kubectl("apply", "-f", str(manifest))
    assert out.returncode != 0 and 'unknown field "spec.autoassign"' in out.stderr, out.stderr
