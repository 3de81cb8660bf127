"""Manifest files: libyaml's loader (when PyYAML has it) reads them as the pure-Python safe loader does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nftproxy.objects import manifests

DOCUMENTS = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: &meta {name: web, namespace: shop, creationTimestamp: 2024-01-01T00:00:00Z, labels: {app: "01"}}
  spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80, targetPort: web, protocol: TCP}], sessionAffinity: None}
---
# a comment, then an empty document
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: ["198.18.129.2"]
  conditions: {ready: yes, serving: on, terminating: false}
  zone: null
ports: [{name: http, port: 8080}]
"""


def test_the_c_loader_reads_what_the_safe_loader_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML built without libyaml: only the safe loader is used")
    path = tmp_path / "objects.yaml"
    path.write_text(DOCUMENTS)
    assert manifests.YAML_LOADER is yaml.CSafeLoader
    fast = manifests.read_file(path)
    monkeypatch.setattr(manifests, "YAML_LOADER", yaml.SafeLoader)
    assert manifests.read_file(path) == fast
    assert [obj["kind"] for obj in fast] == ["Service", "EndpointSlice"]
    assert fast[1]["endpoints"][0]["conditions"] == {"ready": True, "serving": True, "terminating": False}
    path.write_text("kind: Service\nmetadata: {name: web\n")
    with pytest.raises(manifests.ManifestError, match="objects.yaml: not valid YAML/JSON"):
        manifests.read_file(path)
