"""The demo's example Services: a ClusterIP, a NodePort, an externalIPs and a LoadBalancer Service, each
with an EndpointSlice listing the three serving pods."""

from __future__ import annotations

from typing import Any

from e2e.objects import endpoint_slice, service

# Service addresses (the harness's service CIDR is 198.19.0.0/16, its LAN 198.18.0.0/24).
CLUSTER_IP = "198.19.0.10"
NODEPORT_CLUSTER_IP = "198.19.0.11"
EXTERNAL_CLUSTER_IP = "198.19.0.12"
LB_CLUSTER_IP = "198.19.0.13"
EXTERNAL_IP = "198.18.0.150"
LB_IP = "198.18.0.200"
NODE_PORT = 30080
LB_NODE_PORT = 30081
SERVICE_PORT = 80
POD_PORT = 8080


def example_services(web: list[Any]) -> list[tuple[str, str, str, list[dict[str, Any]]]]:
    """(kind, file name, frontends, objects) of every example Service, its endpoints the `web` pods."""

    def port(**extra: Any) -> list[dict[str, Any]]:
        return [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP", "targetPort": POD_PORT, **extra}]

    def slice_for(name: str) -> dict[str, Any]:
        eps = endpoint_slice(name, [p.ip for p in web],
                             ports=[{"name": "http", "port": POD_PORT, "protocol": "TCP"}])
        for ep, pod in zip(eps["endpoints"], web):
            ep["nodeName"] = pod.node.name
            ep["targetRef"] = {"kind": "Pod", "namespace": "default", "name": pod.name}
        return eps

    lb_status = {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
    return [
        ("ClusterIP", "web", f"{CLUSTER_IP}:{SERVICE_PORT}",
         [service("web", CLUSTER_IP, port()), slice_for("web")]),
        ("NodePort", "web-nodeport", f"{NODEPORT_CLUSTER_IP}:{SERVICE_PORT}, every node's address :{NODE_PORT}",
         [service("web-nodeport", NODEPORT_CLUSTER_IP, port(nodePort=NODE_PORT), type="NodePort"),
          slice_for("web-nodeport")]),
        ("externalIPs", "web-external",
         f"{EXTERNAL_CLUSTER_IP}:{SERVICE_PORT}, externalIP {EXTERNAL_IP}:{SERVICE_PORT}",
         [service("web-external", EXTERNAL_CLUSTER_IP, port(), externalIPs=[EXTERNAL_IP]),
          slice_for("web-external")]),
        ("LoadBalancer", "web-lb",
         f"{LB_CLUSTER_IP}:{SERVICE_PORT}, ingress IP {LB_IP}:{SERVICE_PORT}, every node's address :{LB_NODE_PORT}",
         [service("web-lb", LB_CLUSTER_IP, port(nodePort=LB_NODE_PORT), type="LoadBalancer", status=lb_status),
          slice_for("web-lb")]),
    ]
