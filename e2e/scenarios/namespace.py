"""NamespaceTarget: the scenarios against the namespace cluster, the API stand-in and real agents.

Two nodes built from network namespaces (``e2e/netns``), an outside client on their LAN, the API
server stand-in listening on the LAN (``e2e/cluster_api.py``) and one ``python -m nftproxy run
--kubeconfig ... --min-sync-period 0`` per node (``e2e/agent.py``). Services are created through the
real ``kubernetes`` client, so the stand-in allocates ClusterIPs and nodePorts as a real API server
does. There is no EndpointSlice controller in the stand-in: this target plays it, writing one slice
per Service from the backends its selector matches (nodeName, targetRef, ready/serving conditions,
port names and target ports as the Service says), and rewriting it when backends come and go.

External IPs and LoadBalancer IPs come from a pool in the LAN (``198.18.0.200`` up); the outside
client gets a /32 route to each via the chosen node, and LB IPs are written to the Service's
``status.loadBalancer.ingress`` through the status subresource (no LB implementation here).
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

from kubernetes import client as k8s

from e2e.agent import NodeAgent
from e2e.cluster_api import ClusterApi
from e2e.netns import NamespaceCluster, require_root_and_netns
from e2e.netns.cluster import Client, Pod, cleanup_stale
from e2e.scenarios.targets import APP_LABEL, Backend, Reply, Service, Skip, Source, Target

#: first address handed out as an externalIP / LoadBalancer IP (in the LAN, never a node or client)
POOL_START = "198.18.0.200"
POOL_END = "198.18.0.254"


class NamespaceTarget(Target):
    name = "namespace"
    converge_timeout = 15.0
    drop_timeout = 1.0

    def __init__(self, nodes: int = 2, agent_args: tuple[str, ...] = ()) -> None:
        """``agent_args``: extra ``nftproxy run`` flags for every agent (e.g. ``("--masquerade-all",)``)."""
        self._node_count = nodes
        self._agent_args = agent_args
        self.cluster: NamespaceCluster | None = None
        self.api: ClusterApi | None = None
        self.agents: list[NodeAgent] = []
        self.namespace = f"nftproxy-e2e-{secrets.token_hex(3)}"
        self._outside: Client | None = None
        self._client_pods: dict[str, Pod] = {}
        self._pods: dict[str, Pod] = {}
        self._backends: dict[str, Backend] = {}
        self._services: dict[str, dict[str, Any]] = {}  # name -> the Service as stored
        self._slices: set[str] = set()
        self._next_pool = int(ipaddress.ip_address(POOL_START))
        self.core: Any = None
        self.discovery: Any = None
        self._api_client: Any = None

    # -- lifecycle ---------------------------------------------------------- #

    def start(self) -> NamespaceTarget:
        require_root_and_netns()
        cleanup_stale()
        try:
            self.cluster = cluster = NamespaceCluster(nodes=self._node_count)
            self._outside = cluster.add_client("outside")
            self.api = ClusterApi(cluster.lan_netns, cluster.lan_gateway, service_cidr=cluster.service_cidr,
                                  bookmark_interval=1.0).start()
            self._api_client = self.api.api.client()
            self.core = k8s.CoreV1Api(self._api_client)
            self.discovery = k8s.DiscoveryV1Api(self._api_client)
            self.core.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": self.namespace}})
            for node in cluster.nodes:
                self.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {
                    "name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
                    "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]}})
                self.core.patch_node_status(node.name, {"status": {"addresses": [
                    {"type": "InternalIP", "address": node.ip}, {"type": "Hostname", "address": node.name}]}})
            source = ["--kubeconfig", self.api.kubeconfig_for_nodes]
            for node in cluster.nodes:
                # NodeAgent passes --min-sync-period 0, --cluster-cidr and --service-cidr itself
                self.agents.append(NodeAgent(cluster, node, source, *self._agent_args).start())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.agents = []
        if self.api is not None:
            self.api.stop()
            self.api = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def agent_logs(self, lines: int = 20) -> str:
        """The last lines of every agent's log (for failure reports)."""
        return "\n".join(f"--- agent on {a.node.name} ---\n" + "\n".join(a.log_text().splitlines()[-lines:])
                         for a in self.agents)

    def _cluster(self) -> NamespaceCluster:
        if self.cluster is None:
            raise RuntimeError("NamespaceTarget is not started")
        return self.cluster

    # -- the cluster -------------------------------------------------------- #

    @property
    def nodes(self) -> list[str]:
        return [n.name for n in self._cluster().nodes]

    def node_address(self, node: str) -> str:
        return self._cluster().node(node).ip

    # -- workloads ---------------------------------------------------------- #

    def deploy_backends(self, app: str, nodes: list[str]) -> list[Backend]:
        cluster = self._cluster()
        out = []
        for i, node in enumerate(nodes, 1):
            name = f"{app}-{i}"
            pod = cluster.add_pod(cluster.node(node), name, tcp=(8080,), udp=(5353,))
            self._pods[name] = pod
            backend = Backend(name=name, app=app, node=node, ip=pod.ip)
            self._backends[name] = backend
            out.append(backend)
        self._sync_app(app)
        return out

    def delete_backend(self, backend: Backend) -> None:
        # as when a Pod is deleted: it leaves the slices, then its process and network go
        self._backends.pop(backend.name, None)
        self._sync_app(backend.app)
        pod = self._pods.pop(backend.name, None)
        if pod is not None:
            self._cluster().stop_pod(pod)

    def create_service(self, name: str, app: str, ports: list[dict[str, Any]], **spec: Any) -> Service:
        body = {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {"selector": {APP_LABEL: app}, "ports": [dict(p) for p in ports], **spec}}
        stored = self._api_client.sanitize_for_serialization(self.core.create_namespaced_service(self.namespace, body))
        self._services[name] = stored
        self._write_slice(name)
        return Service.from_api(stored)

    def patch_service(self, service: Service, spec: dict[str, Any]) -> Service:
        stored = self._api_client.sanitize_for_serialization(
            self.core.patch_namespaced_service(service.name, self.namespace, {"spec": spec}))
        self._services[service.name] = stored
        self._write_slice(service.name)
        return Service.from_api(stored)

    def delete_service(self, service: Service) -> None:
        self._services.pop(service.name, None)
        self.core.delete_namespaced_service(service.name, self.namespace)
        slice_name = _slice_name(service.name)
        if slice_name in self._slices:  # what the garbage collector does for the controller's slice
            self._slices.discard(slice_name)
            self.discovery.delete_namespaced_endpoint_slice(slice_name, self.namespace)

    def external_ip(self, via: str) -> str:
        return self._routed_address(via)

    def load_balancer_ip(self, service: Service, via: str) -> str:
        ip = self._routed_address(via)
        self.core.patch_namespaced_service_status(service.name, self.namespace,
                                                  {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
        return ip

    def _routed_address(self, via: str) -> str:
        if self._next_pool > int(ipaddress.ip_address(POOL_END)):
            raise Skip(f"the external address pool {POOL_START}-{POOL_END} is used up")
        ip = str(ipaddress.ip_address(self._next_pool))
        self._next_pool += 1
        assert self._outside is not None
        self._cluster().exec(self._outside, ["ip", "route", "replace", f"{ip}/32", "via", self.node_address(via)])
        return ip

    # -- the EndpointSlice controller's part ----------------------------------- #

    def _sync_app(self, app: str) -> None:
        for name, stored in self._services.items():
            if (stored.get("spec", {}).get("selector") or {}).get(APP_LABEL) == app:
                self._write_slice(name)

    def _write_slice(self, service_name: str) -> None:
        stored = self._services[service_name]
        spec = stored["spec"]
        app = (spec.get("selector") or {}).get(APP_LABEL)
        backends = [b for b in self._backends.values() if b.app == app]
        ports = [{"name": p.get("name", ""), "port": int(p["targetPort"]), "protocol": p["protocol"]}
                 for p in spec.get("ports", [])]
        endpoints = [{"addresses": [b.ip], "nodeName": b.node,
                      "conditions": {"ready": True, "serving": True, "terminating": False},
                      "targetRef": {"kind": "Pod", "name": b.name, "namespace": self.namespace}}
                     for b in sorted(backends, key=lambda b: b.name)]
        name = _slice_name(service_name)
        body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": self.namespace,
                             "labels": {"kubernetes.io/service-name": service_name,
                                        "endpointslice.kubernetes.io/managed-by": "nftproxy-e2e.scenarios"},
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service_name,
                                                  "uid": stored["metadata"]["uid"], "controller": True,
                                                  "blockOwnerDeletion": True}]},
                "addressType": "IPv4",
                # as the real controller's placeholder slice: no endpoints, no ports
                "ports": ports if endpoints else [],
                "endpoints": endpoints}
        if name in self._slices:
            self.discovery.replace_namespaced_endpoint_slice(name, self.namespace, body)
        else:
            self.discovery.create_namespaced_endpoint_slice(self.namespace, body)
            self._slices.add(name)

    # -- traffic ------------------------------------------------------------ #

    def pod_client(self, node: str) -> Source:
        pod = self._client_pods.get(node)
        if pod is None:
            cluster = self._cluster()
            pod = cluster.add_pod(cluster.node(node), f"client-{cluster.node(node).index}", tcp=(), udp=())
            self._client_pods[node] = pod
        return Source("pod", pod.name, pod.ip, node, handle=pod)

    def node_client(self, node: str) -> Source:
        n = self._cluster().node(node)
        return Source("node", n.name, n.ip, n.name, handle=n)

    def outside_client(self) -> Source:
        assert self._outside is not None
        return Source("outside", self._outside.name, self._outside.ip, None, handle=self._outside)

    def backend_client(self, backend: Backend) -> Source:
        return Source("backend", backend.name, backend.ip, backend.node, handle=self._pods[backend.name])

    def request(self, source: Source, ip: str, port: int, proto: str = "tcp", count: int = 1,
                ask: str = "hostname", timeout: float = 2.0) -> list[Reply]:
        results = self._cluster().probe(source.handle, ip, port, proto=proto, count=count, timeout=timeout)
        return [Reply(r.ok, r.pod, r.client, r.error) for r in results]


def _slice_name(service_name: str) -> str:
    return f"{service_name}-e2e"


