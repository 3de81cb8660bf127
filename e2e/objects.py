"""Builders for API objects as the API serves them, shared by tests."""

from __future__ import annotations

from typing import Any


def service(
    name: str,
    cluster_ip: str | list[str],
    ports: list[dict[str, Any]] | None = None,
    namespace: str = "default",
    type: str = "ClusterIP",
    **spec: Any,
) -> dict[str, Any]:
    ips = cluster_ip if isinstance(cluster_ip, list) else [cluster_ip]
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": type, "clusterIP": ips[0], "clusterIPs": ips,
                 "ports": ports if ports is not None else [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }
    status = spec.pop("status", None)
    creation = spec.pop("creation", None)
    if creation:
        body["metadata"]["creationTimestamp"] = creation
    annotations = spec.pop("annotations", None)
    if annotations:
        body["metadata"]["annotations"] = annotations
    body["spec"].update(spec)
    if status is not None:
        body["status"] = status
    return body


def endpoint_slice(
    service_name: str,
    addresses: list[str],
    ports: list[dict[str, Any]] | None = None,
    name: str | None = None,
    namespace: str = "default",
    address_type: str = "IPv4",
    node: str | None = None,
    **conditions: Any,
) -> dict[str, Any]:
    def ep(addr: str) -> dict[str, Any]:
        e: dict[str, Any] = {"addresses": [addr], "conditions": {"ready": True, **conditions}}
        if node:
            e["nodeName"] = node
        return e

    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name or f"{service_name}-abcde", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": address_type,
        "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [ep(a) for a in addresses],
    }
