"""The benchmark's workload: N ClusterIP Services with one EndpointSlice each, as API dicts, and the
one-Service changes measured on top of them.

Every Service is a ClusterIP with one TCP port and one EndpointSlice; cluster IPs from 198.18.0.0/15,
endpoints from 100.64.0.0/10: these addresses are only map elements in the throwaway namespace, no
packet is sent. `--mix policies` (NFTPROXY_BENCH_MIX=policies) makes a quarter each NodePort, eTP Local
LoadBalancer, ClientIP affinity with an externalIP and iTP Local.

Standard library only: the cold start's parse-rate process loads this file by its path next to the
nftproxy of another checkout (`--baseline`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SERVICE_BASE = (198 << 24) | (18 << 16)  # 198.18.0.0/15
SERVICE_SPACE = 1 << 17
POD_BASE = (100 << 24) | (64 << 16)  # 100.64.0.0/10
POD_SPACE = 1 << 22
NAMESPACE = "bench"

CHANGE_KINDS = (
    ("endpoint", "replace one endpoint"),
    ("add", "add a Service"),
    ("delete", "delete a Service"),
)


def _ipv4(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def service_name(i: int) -> str:
    return f"svc-{i:06d}"


def cluster_ip(i: int) -> str:
    return _ipv4(SERVICE_BASE + 1 + i)


def pod_ip(i: int) -> str:
    return _ipv4(POD_BASE + 1 + i)


def _mixed() -> bool:
    """--mix policies: the policy-rich scenario mix (passed to the measuring process by environment)."""
    return os.environ.get("NFTPROXY_BENCH_MIX") == "policies"


def service_object(i: int) -> dict[str, Any]:
    ip = cluster_ip(i)
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(i), "namespace": NAMESPACE, "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ipFamilies": ["IPv4"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    }
    if _mixed():
        # a quarter each: NodePort; eTP Local LoadBalancer with source ranges; ClientIP affinity with an
        # externalIP; iTP Local. Addresses from 240.0.0.0/4: only elements in a throwaway namespace.
        # The NodePort range holds 2,768 ports: past them, LoadBalancers get none (as with
        # allocateLoadBalancerNodePorts: false) and the NodePort quarter stays ClusterIP.
        spec, port, kind = obj["spec"], obj["spec"]["ports"][0], i % 4
        extra = f"240.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        node_ports_left = i // 4 < 1384
        if kind == 0 and node_ports_left:
            spec["type"], port["nodePort"] = "NodePort", 30000 + 2 * (i // 4)
        elif kind == 1:
            spec.update(type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=32000,
                        loadBalancerSourceRanges=["192.0.2.0/24", "198.51.100.0/24"])
            if node_ports_left:
                port["nodePort"] = 30001 + 2 * (i // 4)
            obj["status"] = {"loadBalancer": {"ingress": [{"ip": extra}]}}
        elif kind == 2:
            spec.update(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}},
                        externalIPs=[extra])
        else:
            spec["internalTrafficPolicy"] = "Local"
    return obj


def slice_object(i: int, addresses: Sequence[str]) -> dict[str, Any]:
    name = service_name(i)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-abcde", "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True},
                       "nodeName": "bench-node" if not _mixed() or j % 2 == 0 else "other-node"}
                      for j, a in enumerate(addresses)],
    }


def original_addresses(i: int, endpoints: int) -> list[str]:
    return [pod_ip(i * endpoints + j) for j in range(endpoints)]


def check_capacity(n: int, endpoints: int, changes: int) -> str | None:
    if n < 1 or endpoints < 1 or changes < 1:
        return "Service count, endpoints and changes must be at least 1"
    if n + changes + 2 > SERVICE_SPACE:
        return f"{n} Services (+{changes} added) do not fit 198.18.0.0/15"
    if (n + changes) * endpoints + changes + 2 > POD_SPACE:
        return f"{n} x {endpoints} endpoints do not fit 100.64.0.0/10"
    return None


# the flags `nftproxy run` gets for this workload's cluster
BENCH_FLAGS = ["--cluster-cidr", "100.64.0.0/10", "--service-cidr", "198.18.0.0/15", "--node-name", "bench-node"]


def write_manifests(directory: Path, n: int, endpoints: int) -> int:
    """The N Services and slices as one JSON List (as `kubectl get -o json` writes them); objects written."""
    with (directory / "objects.json").open("w") as out:
        out.write('{"apiVersion": "v1", "kind": "List", "items": [\n')
        for i in range(n):
            out.write(("" if i == 0 else ",\n") + json.dumps(service_object(i)) + ",\n"
                      + json.dumps(slice_object(i, original_addresses(i, endpoints))))
        out.write("\n]}\n")
    return 2 * n

