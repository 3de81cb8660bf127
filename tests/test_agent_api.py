"""The agent against the API server stand-in, with real packets through the rules it programs."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from e2e.agent import NodeAgent
from e2e.cluster_api import ClusterApi
from e2e.netns import NamespaceCluster, Pod, require_root_and_netns
from e2e.netns.cluster import cleanup_stale
from e2e.objects import endpoint_slice

pytestmark = pytest.mark.kernel


@dataclass
class ApiWorld:
    cluster: NamespaceCluster
    api: ClusterApi
    agents: list[NodeAgent]
    web: list[Pod]
    client_pod: Pod
    core: Any
    discovery: Any

    def create(self, name: str, pods: list[Pod], annotations: dict[str, str] | None = None) -> str:
        """A Service and its EndpointSlice through the API; returns the allocated cluster IP."""
        marks = [a.mark() for a in self.agents]
        svc = self.core.create_namespaced_service("default", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        self.put_slice(name, pods, annotations, wait=False)
        for agent, mark in zip(self.agents, marks):
            agent.wait_synced(mark)
        return svc.spec.cluster_ip

    def put_slice(self, name: str, pods: list[Pod], annotations: dict[str, str] | None = None,
                  wait: bool = True) -> None:
        marks = [a.mark() for a in self.agents]
        body = endpoint_slice(name, [p.ip for p in pods], name=f"{name}-slice")
        if annotations:
            body["metadata"]["annotations"] = annotations
        try:
            self.discovery.replace_namespaced_endpoint_slice(f"{name}-slice", "default", body)
        except client.exceptions.ApiException as err:
            if err.status != 404:
                raise
            self.discovery.create_namespaced_endpoint_slice("default", body)
        if wait:
            for agent, mark in zip(self.agents, marks):
                agent.wait_synced(mark)

    def landed(self, ip: str, count: int = 5, timeout: float = 1.0) -> Counter:
        results = self.cluster.probe(self.client_pod, ip, 80, count=count, timeout=timeout)
        return Counter(r.pod if r.ok else f"error:{r.error}" for r in results)

    def eventually_landed(self, ip: str, expected: dict[str, int], within: float = 15.0) -> Counter:
        """Probe until traffic lands as expected (each watch reconnects on its own schedule)."""
        deadline = time.monotonic() + within
        while True:
            got = self.landed(ip, sum(expected.values()))
            if got == expected or time.monotonic() > deadline:
                return got
            time.sleep(0.2)

    def http_get(self, node_index: int, url: str) -> tuple[int, str]:
        code = ("import urllib.request, urllib.error, sys\n"
                "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status); print(r.read().decode())\n"
                "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())\n")
        out = self.cluster.exec(self.cluster.nodes[node_index], [sys.executable, "-c", code, url]).stdout
        status, _, body = out.partition("\n")
        return int(status), body


@pytest.fixture(scope="module")
def world() -> Iterator[ApiWorld]:
    require_root_and_netns()
    cleanup_stale()
    cluster = NamespaceCluster(nodes=2)
    api: ClusterApi | None = None
    agents: list[NodeAgent] = []
    try:
        n1, n2 = cluster.nodes
        web = [cluster.add_pod(n1, "web-1"), cluster.add_pod(n2, "web-2")]
        client_pod = cluster.add_pod(n1, "client-pod", tcp=(), udp=())
        api = ClusterApi(cluster.lan_netns, cluster.lan_gateway, service_cidr=cluster.service_cidr,
                         bookmark_interval=1.0).start()
        source = ["--kubeconfig", api.kubeconfig_for_nodes]
        agents = [NodeAgent(cluster, node, source).start() for node in cluster.nodes]
        api_client = api.api.client()
        yield ApiWorld(cluster, api, agents, web, client_pod, client.CoreV1Api(api_client),
                       client.DiscoveryV1Api(api_client))
    finally:
        for agent in agents:
            agent.stop()
        if api is not None:
            api.stop()
        cluster.close()


def test_service_created_updated_deleted_through_the_api(world: ApiWorld) -> None:
    ip = world.create("life", world.web)
    assert set(world.landed(ip, 30)) == {"web-1", "web-2"}
    world.put_slice("life", [world.web[1]])
    assert world.landed(ip, 10) == {"web-2": 10}
    marks = [a.mark() for a in world.agents]
    world.core.delete_namespaced_service("life", "default")
    for agent, mark in zip(world.agents, marks):
        agent.wait_synced(mark)
    assert world.landed(ip, 1) == {"error:timeout": 1}, "a deleted Service's address is dropped (service CIDR)"


def test_watch_cut_mid_stream_is_resumed_without_relisting(world: ApiWorld) -> None:
    before = len(world.api.api.request_log)
    world.api.api.cut_watches()
    ip = world.create("after-cut", [world.web[0]])
    assert world.landed(ip, 3) == {"web-1": 3}
    since = world.api.api.request_log[before:]
    lists = [p for m, p in since if m == "GET" and "watch=" not in p and ("/services" in p or "/endpointslices" in p)]
    watches = [p for m, p in since if "watch=" in p and "resourceVersion=" in p]
    assert not lists, f"a cut watch resumes from its resourceVersion, no relist: {lists}"
    assert watches, "the agents opened new watches"


def test_410_forces_a_relist_that_catches_a_deletion_made_while_away(world: ApiWorld) -> None:
    ip = world.create("gone", [world.web[1]])
    assert world.landed(ip, 2) == {"web-2": 2}
    world.api.down()
    world.core.delete_namespaced_service("gone", "default")
    world.discovery.delete_namespaced_endpoint_slice("gone-slice", "default")
    world.api.api.compact()
    marks = [a.mark() for a in world.agents]
    world.api.up()
    for agent, mark in zip(world.agents, marks):
        agent.wait_synced(mark, timeout=30)
    assert world.eventually_landed(ip, {"error:timeout": 1}) == {"error:timeout": 1}, "the relist noticed the deletion"
    assert "410 Gone" in world.agents[0].log_text()


def test_api_down_leaves_rules_and_traffic_then_the_agent_catches_up(world: ApiWorld) -> None:
    ip = world.create("steady", [world.web[0], world.web[1]])
    log_before = len(world.agents[0].log_text().splitlines())
    world.api.down()
    try:
        time.sleep(1.5)
        assert set(world.landed(ip, 20)) == {"web-1", "web-2"}, "rules stay while the API is away"
        status, _ = world.http_get(0, "http://127.0.0.1:10256/healthz")
        assert status == 200, "no change is queued, so the proxy is healthy"
        svc = world.core.create_namespaced_service("default", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "late"},
            "spec": {"ports": [{"name": "http", "port": 80}]}})
        world.discovery.create_namespaced_endpoint_slice(
            "default", endpoint_slice("late", [world.web[1].ip], name="late-slice"))
        time.sleep(1.0)
        assert world.landed(svc.spec.cluster_ip, 1) == {"error:timeout": 1}
        assert "API server unreachable" in world.agents[0].log_text()
        marks = [a.mark() for a in world.agents]
    finally:
        world.api.up()
    for agent, mark in zip(world.agents, marks):
        agent.wait_synced(mark, timeout=30)
    assert world.eventually_landed(svc.spec.cluster_ip, {"web-2": 3}) == {"web-2": 3}
    log_during = "\n".join(world.agents[0].log_text().splitlines()[log_before:])
    for message in ("API server unreachable", "connected to the API server"):
        resources = [line.split(" nftproxy.watch: ")[1].split(":")[0] for line in log_during.splitlines()
                     if message in line and " nftproxy.watch: " in line]
        assert resources, message
        # once per watched resource and state change (the proxier's three, and the LoadBalancer side's;
        # two watches of Node: the proxier's own Node and every Node)
        counts = Counter(resources)
        assert all(n <= (2 if kind == "Node" else 1) for kind, n in counts.items()), (message, counts)


def test_no_sync_until_every_initial_list_completes(world: ApiWorld) -> None:
    ip = world.create("partial", [world.web[1]])
    agent = world.agents[0]
    agent.stop()
    world.cluster.exec(world.cluster.nodes[0], ["nft", "delete", "table", "inet", "nftproxy"])
    world.api.fail({"endpointslices"})
    try:
        agent.start(wait=False)
        time.sleep(3.0)
        tables = world.cluster.exec(world.cluster.nodes[0], ["nft", "list", "tables"]).stdout
        assert "nftproxy" not in tables, "Services listed but EndpointSlices not: nothing is programmed"
        assert agent.syncs == 0
    finally:
        world.api.fail(())
    agent.wait_synced(0, timeout=30)
    assert world.eventually_landed(ip, {"web-2": 3}) == {"web-2": 3}


def test_invalid_service_gets_an_event_and_the_others_keep_working(world: ApiWorld) -> None:
    marks = [a.mark() for a in world.agents]
    world.api.api.put_raw("services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "broken", "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": "198.19.250.1", "clusterIPs": ["198.19.250.1"],
                 "ports": [{"name": "http", "port": 70000, "protocol": "TCP"}]}})
    ip = world.create("healthy", [world.web[0]])
    for agent, mark in zip(world.agents, marks):
        agent.wait_synced(mark)
    assert world.landed(ip, 3) == {"web-1": 3}
    deadline = time.time() + 10
    messages: list[str] = []
    while time.time() < deadline:
        events = world.core.list_namespaced_event("default").items
        messages = [e.message for e in events
                    if e.involved_object.name == "broken" and e.involved_object.kind == "Service"]
        if messages:
            break
        time.sleep(0.2)
    assert messages and "spec.ports[0].port: port 70000 is outside 1-65535" in messages[0]
    assert "Service default/broken: spec.ports[0].port" in world.agents[0].log_text()


def test_health_and_metrics_endpoints(world: ApiWorld) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 0.5))
    ip = world.create("observed", [world.web[0]],
                      annotations={"endpoints.kubernetes.io/last-change-trigger-time": stamp})
    assert world.landed(ip, 1) == {"web-1": 1}
    status, body = world.http_get(0, "http://127.0.0.1:10256/healthz")
    assert status == 200 and json.loads(body)["lastUpdated"]
    assert world.http_get(0, "http://127.0.0.1:10256/livez")[0] == 200
    status, text = world.http_get(0, "http://127.0.0.1:10249/metrics")
    assert status == 200
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] > time.time() - 600
    assert values["kubeproxy_network_programming_duration_seconds_count"] >= 1
    assert values["nftproxy_services_programmed"] >= 1
    assert values['nftproxy_api_connected{resource="EndpointSlice"}'] == 1
    assert values['nftproxy_map_elements{map="service-ips-v4"}'] >= 1
    assert "kubeproxy_sync_proxy_rules_nftables_sync_failures_total" in values
    assert values["process_resident_memory_bytes"] > 0
