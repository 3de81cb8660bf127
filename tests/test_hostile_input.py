"""Malformed objects are refused by name and never crash a source or cost other Services their rules
(issue 13, 3)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import yaml

from nftproxy.agent.health import HealthState
from nftproxy.agent.manifest_source import ManifestSource
from nftproxy.agent.proxier import Proxier
from nftproxy.config import ProxyConfig
from nftproxy.kernel.fake import FakeKernel
from nftproxy.objects.manifests import object_key
from nftproxy.objects.model import ObjectRef
from nftproxy.objects.parse import InvalidObject, object_ref, parse_node, parse_service

GOOD = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "good", "namespace": "default"},
        "spec": {"clusterIP": "198.19.0.10", "ports": [{"name": "http", "port": 80}]}}
GOOD_REF = ObjectRef("default", "good")


@pytest.mark.parametrize("metadata", ["oops", ["a"], 7, {"name": 5}, {"name": None}])
def test_malformed_metadata_is_refused_by_name_not_a_crash(metadata: object) -> None:
    bad = {**GOOD, "metadata": metadata}
    assert object_key(bad)[0] == "Service"
    assert object_ref(bad).name == ""
    with pytest.raises(InvalidObject, match="metadata"):
        parse_service(bad)


@pytest.mark.parametrize("node, field", [
    ({"kind": "Node", "metadata": {"name": "n1", "labels": ["zone", "a"]}}, "metadata.labels"),
    ({"kind": "Node", "metadata": {"name": "n1", "labels": {"zone": 3}}}, "metadata.labels[zone]"),
    ({"kind": "Node", "metadata": "oops"}, "metadata"),
    ({"kind": "Node", "metadata": {"labels": {}}}, "metadata.name"),
])
def test_a_malformed_node_is_refused_by_field(node: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidObject) as err:
        parse_node(node)
    assert err.value.field == field


def test_the_proxier_keeps_valid_services_next_to_malformed_objects() -> None:
    reported: list[InvalidObject] = []
    proxier = Proxier(ProxyConfig(node_name="n1"), FakeKernel(), on_invalid=reported.append)
    for obj in (GOOD, {**GOOD, "metadata": "oops"},
                {"kind": "Node", "metadata": {"name": "n1", "labels": ["x"]}},
                {"kind": "EndpointSlice", "metadata": ["x"]}):
        proxier.upsert(obj)
    result = proxier.sync()
    assert result.services_synced == 1
    assert {e.kind for e in reported} == {"Service", "Node", "EndpointSlice"}


def test_manifest_mode_with_a_malformed_object_syncs_the_rest(tmp_path: Path) -> None:
    (tmp_path / "objects.yaml").write_text(yaml.safe_dump_all([{**GOOD, "metadata": "oops"}, GOOD]))
    assert len(ManifestSource(tmp_path).poll(strict=True).upserts) == 2
    out = subprocess.run([sys.executable, "-m", "nftproxy", "run", "--manifests", str(tmp_path), "--dry-run",
                          "--node-name", "n1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "default/good:http" in out.stdout
    assert "Traceback" not in out.stderr and "metadata" in out.stderr


def test_a_dead_source_thread_makes_the_agent_unhealthy() -> None:
    health = HealthState(timeout=60)
    health.updated(1000.0)
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    health.require("EndpointSlice#1", thread.is_alive)
    code, body = health.report(1001.0)
    assert code == 503 and body["deadThreads"] == ["EndpointSlice#1"]


@pytest.mark.parametrize("bad, why", [
    ({"addresses": ["2001:db8::5"], "conditions": {"ready": True}}, "is not an IPv4 address"),
    ({"addresses": [], "conditions": {"ready": True}}, "at least one address"),
    ({"addresses": ["banana"]}, "not an IP address"),
])
def test_one_bad_endpoint_is_skipped_the_others_serve(bad: dict[str, object], why: str) -> None:
    """Upstream's endpointslicecache skips the bad endpoint only (issue 13, 5)."""
    reported: list[InvalidObject] = []
    proxier = Proxier(ProxyConfig(node_name="n1"), FakeKernel(), on_invalid=reported.append)
    proxier.upsert(GOOD)
    proxier.upsert({"kind": "EndpointSlice", "addressType": "IPv4",
                    "metadata": {"name": "good-x", "namespace": "default",
                                 "labels": {"kubernetes.io/service-name": "good"}},
                    "ports": [{"name": "http", "port": 8080}],
                    "endpoints": [{"addresses": ["10.0.0.5"]}, bad, {"addresses": ["10.0.0.6"]}]})
    proxier.sync()
    (_, slices) = proxier.committed_inputs[GOOD_REF]
    assert [e.address for s in slices for e in s.endpoints] == ["10.0.0.5", "10.0.0.6"]
    assert len(reported) == 1 and why in str(reported[0]) and "endpoints[1]" in str(reported[0])


# --- names nft cannot carry as they are (issue 13, 4) ----------------------------------------------------
@pytest.mark.parametrize("name", [
    "é" * 117,  # 117 characters, 234 bytes: cut by characters it broke every Service's transaction
    "a" * 126, "a" * 127, "a" * 128, "a" * 129,
    'quo"te\\back\x00nul\nnew\tline',
])
def test_comments_fit_nft_for_any_name(name: str) -> None:
    from nftproxy.desired.elements import COMMENT_MAX_BYTES, quote_comment

    quoted = quote_comment(f"default/{name}:http")
    inner = quoted[1:-1]
    assert len(inner.encode()) <= COMMENT_MAX_BYTES
    assert not any(c in inner for c in '"\\\x00\n\t')
    inner.encode().decode("utf-8")  # cut on a character boundary


@pytest.mark.kernel
def test_odd_names_never_cost_other_services_their_rules(tmp_path: Path) -> None:
    """The kernel takes the transaction whatever the names: the long and odd ones next to a plain one."""
    from e2e.netns import require_root_and_netns

    require_root_and_netns()
    objects = [GOOD]
    for i, name in enumerate(["é" * 60, "x" * 63, 'odd"name\\with\x00nul']):
        objects.append({**GOOD, "metadata": {"name": name, "namespace": "default"},
                        "spec": {"clusterIP": f"198.19.0.{20 + i}", "ports": [{"name": "http", "port": 80}]}})
    (tmp_path / "objects.yaml").write_text(yaml.safe_dump_all(objects, allow_unicode=True))
    from e2e.netns.cluster import _owner_tag

    ns = f"nfp-odd-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    # tagged like e2e/netns' namespaces: concurrent test runs remove untagged nfp-* namespaces
    subprocess.run(["ip", "-n", ns, "link", "set", "dev", "lo", "alias", _owner_tag()], check=True)
    try:
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "nftproxy", "run", "--manifests",
                              str(tmp_path), "--once", "--node-name", "n1"], capture_output=True, text=True,
                             timeout=60, cwd=Path(__file__).resolve().parents[1])
        assert out.returncode == 0, out.stderr
        listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "nftproxy"],
                                capture_output=True, text=True, check=True).stdout
        assert "default/good:http" in listed and "198.19.0.21" in listed and "198.19.0.22" in listed
        assert "default/" + "é" * 10 in listed
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
