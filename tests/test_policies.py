"""Traffic policies and the rest of kube-proxy's Service semantics, each proven by packets.

Two nodes: web-1 and web-3 on node-1, web-2 on node-2; a client pod on node-1; outside clients on
the LAN. Every test checks where connections landed and the source address the endpoint saw.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from e2e.agent import AgentCluster
from e2e.netns import CommandError, NamespaceCluster, Pod, require_root_and_netns
from e2e.netns.cluster import Client, NetnsLike, cleanup_stale
from e2e.objects import service

pytestmark = pytest.mark.kernel


@dataclass
class World:
    cluster: NamespaceCluster
    agents: AgentCluster
    web: list[Pod]
    pod_client: Pod
    outside: Client
    stranger: Client  # another outside client, for source ranges

    def node(self, i: int):
        return self.cluster.nodes[i]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_root_and_netns()
    cleanup_stale()
    cluster = NamespaceCluster(nodes=2)
    agents: AgentCluster | None = None
    try:
        n1, n2 = cluster.nodes
        web = [cluster.add_pod(n1, "web-1"), cluster.add_pod(n2, "web-2"), cluster.add_pod(n1, "web-3")]
        pod_client = cluster.add_pod(n1, "client-pod", tcp=(), udp=())
        outside, stranger = cluster.add_client("outside"), cluster.add_client("stranger")
        agents = AgentCluster(cluster).start()
        yield World(cluster, agents, web, pod_client, outside, stranger)
    finally:
        if agents is not None:
            agents.stop()
        cluster.close()


def slice_of(service_name: str, pods: list[Pod], name: str | None = None, protocol: str = "TCP",
             conditions: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """An EndpointSlice whose endpoints carry their nodeName and targetRef, as the controller writes them."""
    port = 8080 if protocol == "TCP" else 5353
    endpoints = []
    for pod in pods:
        ep: dict[str, Any] = {"addresses": [pod.ip], "nodeName": pod.node.name,
                              "targetRef": {"kind": "Pod", "name": pod.name, "namespace": "default"},
                              "conditions": dict(conditions or {"ready": True, "serving": True, "terminating": False})}
        ep.update(extra.get("per_endpoint", {}).get(pod.name, {}))
        endpoints.append(ep)
    body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{service_name}-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": "p", "port": port, "protocol": protocol}], "endpoints": endpoints}
    if "annotations" in extra:
        body["metadata"]["annotations"] = extra["annotations"]
    return body


def svc(name: str, ip: str, protocol: str = "TCP", port: int = 80, **spec: Any) -> dict[str, Any]:
    ports = [{"name": "p", "port": port, "protocol": protocol}]
    if "node_port" in spec:
        ports[0]["nodePort"] = spec.pop("node_port")
    return service(name, ip, ports, **spec)


def landed(results: list) -> Counter:
    return Counter(r.pod if r.ok else f"error:{r.error}" for r in results)


def test_external_traffic_policy_local(world: World) -> None:
    n1, n2 = world.node(0), world.node(1)
    world.agents.apply("etp", [
        svc("etp", "198.19.1.1", type="LoadBalancer", node_port=30100, externalTrafficPolicy="Local",
            healthCheckNodePort=32100, status={"loadBalancer": {"ingress": [{"ip": "198.18.0.210"}]}}),
        slice_of("etp", [world.web[0], world.web[1]]),
    ])
    # outside -> NodePort on node-1: only node-1's endpoint, and the client's own address is kept
    results = world.cluster.probe(world.outside, n1.ip, 30100, count=20)
    assert landed(results) == {"web-1": 20} and {r.client for r in results} == {world.outside.ip}
    results = world.cluster.probe(world.outside, n2.ip, 30100, count=20)
    assert landed(results) == {"web-2": 20} and {r.client for r in results} == {world.outside.ip}
    # the LB IP routed to node-2: node-2's endpoint only, source kept
    world.cluster.add_route(world.outside, "198.18.0.210/32", n2.ip)
    results = world.cluster.probe(world.outside, "198.18.0.210", 80, count=20)
    assert landed(results) == {"web-2": 20} and {r.client for r in results} == {world.outside.ip}
    # pods are short-circuited to every endpoint, keeping their source
    results = world.cluster.probe(world.pod_client, "198.18.0.210", 80, count=40)
    assert set(landed(results)) == {"web-1", "web-2"} and {r.client for r in results} == {world.pod_client.ip}
    # the node itself too (masqueraded, as upstream does)
    results = world.cluster.probe(n1, n1.ip, 30100, count=30)
    assert set(landed(results)) == {"web-1", "web-2"}
    # a node without local endpoints drops external traffic
    world.agents.apply("etp", [
        svc("etp", "198.19.1.1", type="LoadBalancer", node_port=30100, externalTrafficPolicy="Local",
            healthCheckNodePort=32100, status={"loadBalancer": {"ingress": [{"ip": "198.18.0.210"}]}}),
        slice_of("etp", [world.web[0]]),
    ])
    assert landed(world.cluster.probe(world.outside, n2.ip, 30100, count=1, timeout=1.0)) == {"error:timeout": 1}
    assert landed(world.cluster.probe(world.outside, n1.ip, 30100, count=3)) == {"web-1": 3}


def http_get(world: World, client: Client, url: str) -> tuple[int, dict[str, Any]]:
    code = ("import urllib.request, urllib.error, sys, json\n"
            "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())\n")
    out = world.cluster.exec(client, [sys.executable, "-c", code, url]).stdout
    status, _, body = out.partition("\n")
    return int(status), json.loads(body)


def test_health_check_node_port(world: World) -> None:
    n1, n2 = world.node(0), world.node(1)
    world.agents.apply("hc", [
        svc("hc", "198.19.1.2", type="LoadBalancer", node_port=30101, externalTrafficPolicy="Local",
            healthCheckNodePort=32101, status={"loadBalancer": {"ingress": [{"ip": "198.18.0.211"}]}}),
        slice_of("hc", [world.web[0], world.web[2]]),
    ])
    status, body = http_get(world, world.outside, f"http://{n1.ip}:32101/healthz")
    assert status == 200
    assert body == {"service": {"namespace": "default", "name": "hc"}, "localEndpoints": 2, "serviceProxyHealthy": True}
    status, body = http_get(world, world.outside, f"http://{n2.ip}:32101/")
    assert status == 503 and body["localEndpoints"] == 0
    world.agents.apply("hc", [
        svc("hc", "198.19.1.2", type="LoadBalancer", node_port=30101, externalTrafficPolicy="Local",
            healthCheckNodePort=32101, status={"loadBalancer": {"ingress": [{"ip": "198.18.0.211"}]}}),
        slice_of("hc", [world.web[1]]),
    ])
    assert http_get(world, world.outside, f"http://{n1.ip}:32101/")[0] == 503
    assert http_get(world, world.outside, f"http://{n2.ip}:32101/")[0] == 200
    world.agents.delete("hc")
    with pytest.raises(CommandError):  # the client's urlopen fails: connection refused
        http_get(world, world.outside, f"http://{n2.ip}:32101/")  # the server went with the Service


def test_internal_traffic_policy_local(world: World) -> None:
    world.agents.apply("itp", [svc("itp", "198.19.1.3", internalTrafficPolicy="Local"),
                               slice_of("itp", world.web)])
    results = world.cluster.probe(world.pod_client, "198.19.1.3", 80, count=40)
    assert set(landed(results)) == {"web-1", "web-3"}, "only node-1's endpoints"
    world.agents.apply("itp", [svc("itp", "198.19.1.3", internalTrafficPolicy="Local"),
                               slice_of("itp", [world.web[1]])])
    assert landed(world.cluster.probe(world.pod_client, "198.19.1.3", 80, count=1)) == {"error:timeout": 1}, \
        "no local endpoint: dropped, not sent across"


def test_session_affinity(world: World) -> None:
    spec = {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 3}}}
    world.agents.apply("aff", [svc("aff", "198.19.1.4", **spec), slice_of("aff", world.web)])
    world.cluster.add_route(world.outside, "198.19.1.4/32", world.node(0).ip)
    sources = [f"198.18.0.{180 + i}" for i in range(12)]
    for address in sources:
        world.cluster.exec(world.outside, ["ip", "addr", "add", f"{address}/24", "dev", world.outside.lan_ifname])
    first: dict[str, str] = {}
    for address in sources:
        got = landed(world.cluster.probe(world.outside, "198.19.1.4", 80, count=6, bind=address))
        assert len(got) == 1 and next(iter(got)).startswith("web-"), f"{address} sticks to one endpoint: {got}"
        first[address] = next(iter(got))
    assert len(set(first.values())) >= 2, f"many clients still spread: {first}"
    # the endpoint a client sticks to goes away: the client is released to a live one
    client_ip = sources[0]
    gone = first[client_ip]
    world.agents.apply("aff", [svc("aff", "198.19.1.4", **spec),
                               slice_of("aff", [p for p in world.web if p.name != gone])])
    got = landed(world.cluster.probe(world.outside, "198.19.1.4", 80, count=4, bind=client_ip, timeout=5.0))
    assert gone not in got and sum(got.values()) == 4 and len(got) == 1, got
    # affinity turned off: the same client spreads again at once (its entry no longer steers)
    other = sources[1]
    world.agents.apply("aff", [svc("aff", "198.19.1.4"), slice_of("aff", world.web)])
    spread = landed(world.cluster.probe(world.outside, "198.19.1.4", 80, count=30, bind=other))
    assert len(spread) >= 2, f"without affinity the client is balanced again: {spread}"
    world.agents.apply("aff", [svc("aff", "198.19.1.4", **spec), slice_of("aff", world.web)])
    landed(world.cluster.probe(world.outside, "198.19.1.4", 80, count=1, bind=client_ip))
    # the timeout passes: the entry expires
    listing = world.cluster.exec(world.node(0), ["nft", "list", "map", "inet", "nftproxy", "affinity-v4"]).stdout
    assert f"{client_ip} . 198.19.1.4 . tcp . 80" in listing
    time.sleep(3.5)
    listing = world.cluster.exec(world.node(0), ["nft", "list", "map", "inet", "nftproxy", "affinity-v4"]).stdout
    assert f"{client_ip} . 198.19.1.4" not in listing


def add_addresses(cluster: NamespaceCluster, where: NetnsLike, ifname: str, addresses: Iterable[str]) -> None:
    """Secondary addresses on an interface; tests of a module share namespaces, so adding twice is fine."""
    have = cluster.exec(where, ["ip", "-o", "addr", "show", "dev", ifname]).stdout
    for address in addresses:
        if f" {address}/" not in have:
            extra = ["nodad"] if ":" in address else []
            prefix = 64 if ":" in address else 24
            cluster.exec(where, ["ip", "addr", "add", f"{address}/{prefix}", "dev", ifname, *extra])


def landed_from_each(cluster: NamespaceCluster, client: Client, sources: list[str], address: str, port: int,
                     count: int) -> dict[str, Counter]:
    """Where `count` connections from each source address landed; sources run in parallel, so that
    affinity timing stays tight (one probe process per source)."""
    def run(source: str) -> Counter:
        return landed(cluster.probe(client, address, port, count=count, bind=source))
    with ThreadPoolExecutor(len(sources)) as pool:
        return dict(zip(sources, pool.map(run, sources)))


def sticky_endpoints(cluster: NamespaceCluster, client: Client, sources: list[str], targets: list[tuple[str, int]],
                     count: int = 4) -> dict[str, str]:
    """Asserts each source lands on one endpoint through every (address, port) in turn, and that the
    sources still spread over several endpoints; returns source -> endpoint."""
    seen: dict[str, Counter] = {source: Counter() for source in sources}
    for address, port in targets:
        for source, got in landed_from_each(cluster, client, sources, address, port, count).items():
            seen[source] += got
    for source, got in seen.items():
        assert len(got) == 1 and next(iter(got)).startswith("web-"), \
            f"{source} to {targets} sticks to one endpoint: {got}"
    chosen = {source: next(iter(got)) for source, got in seen.items()}
    assert len(set(chosen.values())) >= 2, f"different clients still spread: {chosen}"
    return chosen


def assert_kept(cluster: NamespaceCluster, client: Client, before: dict[str, str], address: str, port: int,
                pause: float = 2.5) -> None:
    """Well within the timeout, after a pause, every client still lands on its endpoint."""
    time.sleep(pause)
    kept = {s: next(iter(c)) for s, c in landed_from_each(cluster, client, list(before), address, port, 1).items()}
    assert kept == before, f"{address}:{port} after {pause} s: clients keep their endpoints"


def assert_released(cluster: NamespaceCluster, client: Client, sources: list[str], targets: list[tuple[str, int]],
                    timeout: int) -> None:
    """Once `timeout` passed since a client's last connection, it is balanced afresh: with a dozen
    clients over three endpoints, some land elsewhere than before."""
    def where() -> list[dict[str, str]]:
        return [{s: next(iter(c)) for s, c in landed_from_each(cluster, client, sources, a, p, 1).items()}
                for a, p in targets]
    before = where()
    time.sleep(timeout + 1.5)
    after = where()
    for (address, port), old, new in zip(targets, before, after):
        assert all(e.startswith("web-") for e in new.values()), new
        assert new != old, f"{address}:{port} after timeoutSeconds {timeout}: clients are balanced afresh ({new})"


def affinity(timeout: int) -> dict[str, Any]:
    return {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": timeout}}}


def test_session_affinity_on_every_frontend(world: World) -> None:
    """ClusterIP, externalIP, LB IP and NodePort (on two addresses of the node) are all sticky."""
    n1 = world.node(0)
    world.agents.apply("sticky", [
        svc("sticky", "198.19.1.11", type="LoadBalancer", node_port=30080, externalIPs=["198.18.0.151"],
            status={"loadBalancer": {"ingress": [{"ip": "198.18.0.214"}]}}, **affinity(60)),
        slice_of("sticky", world.web),
    ])
    for address in ("198.19.1.11", "198.18.0.151", "198.18.0.214"):
        world.cluster.add_route(world.outside, f"{address}/32", n1.ip)
    alt = "198.18.0.31"  # another address of node-1: NodePorts answer on every local address
    add_addresses(world.cluster, n1, n1.lan_ifname, [alt])
    sources = [f"198.18.0.{60 + i}" for i in range(12)]
    add_addresses(world.cluster, world.outside, world.outside.lan_ifname, sources)
    for address in ("198.19.1.11", "198.18.0.151", "198.18.0.214"):
        sticky_endpoints(world.cluster, world.outside, sources, [(address, 80)])
    # the same client on the same NodePort sticks, whichever local address it reached
    chosen = sticky_endpoints(world.cluster, world.outside, sources, [(n1.ip, 30080), (alt, 30080)])
    assert_kept(world.cluster, world.outside, chosen, alt, 30080)
    world.agents.delete("sticky")


def test_session_affinity_timeout_releases_clients(world: World) -> None:
    n1 = world.node(0)
    world.agents.apply("short", [svc("short", "198.19.1.12", type="NodePort", node_port=30081, **affinity(2)),
                                 slice_of("short", world.web)])
    world.cluster.add_route(world.outside, "198.19.1.12/32", n1.ip)
    sources = [f"198.18.0.{60 + i}" for i in range(12)]
    add_addresses(world.cluster, world.outside, world.outside.lan_ifname, sources)
    assert_released(world.cluster, world.outside, sources, [(n1.ip, 30081), ("198.19.1.12", 80)], 2)
    world.agents.delete("short")


def test_load_balancer_source_ranges(world: World) -> None:
    world.agents.apply("fw", [
        svc("fw", "198.19.1.5", type="LoadBalancer", node_port=30105,
            status={"loadBalancer": {"ingress": [{"ip": "198.18.0.212"}]}},
            loadBalancerSourceRanges=[f" {world.outside.ip}/32 "]),
        slice_of("fw", [world.web[0]]),
    ])
    for client in (world.outside, world.stranger):
        world.cluster.add_route(client, "198.18.0.212/32", world.node(0).ip)
    assert landed(world.cluster.probe(world.outside, "198.18.0.212", 80, count=3)) == {"web-1": 3}
    assert landed(world.cluster.probe(world.stranger, "198.18.0.212", 80, count=1)) == {"error:timeout": 1}
    # as upstream: source ranges guard the LoadBalancer IP, not the NodePort
    assert landed(world.cluster.probe(world.stranger, world.node(0).ip, 30105, count=2)) == {"web-1": 2}


def test_load_balancer_source_ranges_allow_the_services_own_lb_addresses(world: World) -> None:
    """As upstream: traffic from one of the Service's LoadBalancer addresses (a node reaching the LB
    from that address, e.g. SNATted to it) passes whatever the ranges say."""
    n1 = world.node(0)
    lb1, lb2 = "198.18.0.215", "198.18.0.216"
    def fw_self(ranges: list[str]) -> list[dict[str, Any]]:
        return [svc("fw-self", "198.19.1.13", type="LoadBalancer", node_port=30106, loadBalancerSourceRanges=ranges,
                    status={"loadBalancer": {"ingress": [{"ip": lb1}, {"ip": lb2}]}}),
                slice_of("fw-self", [world.web[0]])]
    world.agents.apply("fw-self", fw_self([f"{world.outside.ip}/32"]))
    for client in (world.outside, world.stranger):
        world.cluster.add_route(client, f"{lb1}/32", n1.ip)
    assert landed(world.cluster.probe(world.stranger, lb1, 80, count=1)) == {"error:timeout": 1}, "ranges still apply"
    # node-1 holds lb1 (a VIP bound on the node) and connects from it to it
    world.cluster.exec(n1, ["ip", "addr", "add", f"{lb1}/32", "dev", "lo"])
    try:
        assert landed(world.cluster.probe(n1, lb1, 80, count=3, bind=lb1)) == {"web-1": 3}
        # a LAN host sending from the Service's other LB address (as after SNAT to it)
        add_addresses(world.cluster, world.stranger, world.stranger.lan_ifname, [lb2])
        world.cluster.add_route(n1, f"{lb2}/32", world.stranger.ip)  # replies to lb2 go back to it
        assert landed(world.cluster.probe(world.stranger, lb1, 80, count=3, bind=lb2)) == {"web-1": 3}
        # ranges that hold the LB addresses already: merged, not refused by the kernel as overlapping
        world.agents.apply("fw-self", fw_self([f"{world.outside.ip}/32", "198.18.0.208/29", "198.18.0.212/30"]))
        assert landed(world.cluster.probe(world.stranger, lb1, 80, count=2, bind=lb2)) == {"web-1": 2}
        assert landed(world.cluster.probe(world.stranger, lb1, 80, count=1)) == {"error:timeout": 1}
        assert landed(world.cluster.probe(world.outside, lb1, 80, count=2)) == {"web-1": 2}
    finally:
        world.cluster.exec(n1, ["ip", "addr", "del", f"{lb1}/32", "dev", "lo"])
        world.agents.delete("fw-self")


def test_terminating_endpoints_and_publish_not_ready(world: World) -> None:
    terminating = {"ready": False, "serving": True, "terminating": True}
    world.agents.apply("term", [svc("term", "198.19.1.6"),
                                slice_of("term", [world.web[1]], conditions=terminating)])
    assert landed(world.cluster.probe(world.pod_client, "198.19.1.6", 80, count=3)) == {"web-2": 3}, \
        "no ready endpoint: serving terminating ones keep the Service up"
    world.agents.apply("term", [svc("term", "198.19.1.6"),
                                slice_of("term", [world.web[1]], name="term-old", conditions=terminating),
                                slice_of("term", [world.web[0]], name="term-new")])
    assert landed(world.cluster.probe(world.pod_client, "198.19.1.6", 80, count=10)) == {"web-1": 10}
    not_ready = {"ready": False, "serving": False, "terminating": False}
    world.agents.apply("term", [svc("term", "198.19.1.6"), slice_of("term", [world.web[2]], conditions=not_ready)])
    assert landed(world.cluster.probe(world.pod_client, "198.19.1.6", 80, count=1)) == {"error:refused": 1}
    world.agents.apply("term", [svc("term", "198.19.1.6", publishNotReadyAddresses=True),
                                slice_of("term", [world.web[2]], conditions=not_ready)])
    assert landed(world.cluster.probe(world.pod_client, "198.19.1.6", 80, count=3)) == {"web-3": 3}


def test_topology_hints_prefer_close(world: World) -> None:
    nodes = [{"apiVersion": "v1", "kind": "Node",
              "metadata": {"name": n.name, "labels": {"topology.kubernetes.io/zone": z}}}
             for n, z in zip(world.cluster.nodes, ("zone-a", "zone-b"))]
    hints = {"web-1": {"zone": "zone-a", "hints": {"forZones": [{"name": "zone-a"}]}},
             "web-3": {"zone": "zone-a", "hints": {"forZones": [{"name": "zone-a"}]}},
             "web-2": {"zone": "zone-b", "hints": {"forZones": [{"name": "zone-b"}]}}}
    world.agents.apply("topo", [*nodes, svc("topo", "198.19.1.7", trafficDistribution="PreferClose"),
                                slice_of("topo", world.web, per_endpoint=hints)])
    assert set(landed(world.cluster.probe(world.pod_client, "198.19.1.7", 80, count=30))) == {"web-1", "web-3"}
    partial = dict(hints)
    partial["web-2"] = {"zone": "zone-b"}  # one endpoint without hints: hints are ignored, as upstream
    world.agents.apply("topo", [*nodes, svc("topo", "198.19.1.7", trafficDistribution="PreferClose"),
                                slice_of("topo", world.web, per_endpoint=partial)])
    assert set(landed(world.cluster.probe(world.pod_client, "198.19.1.7", 80, count=40))) == {"web-1", "web-2", "web-3"}
    world.agents.delete("topo")


def test_stale_udp_flows_move_to_a_live_endpoint(world: World) -> None:
    world.agents.apply("dns", [svc("dns", "198.19.1.8", protocol="UDP", port=53),
                               slice_of("dns", [world.web[0]], protocol="UDP")])
    results = world.cluster.probe(world.pod_client, "198.19.1.8", 53, proto="udp", count=3, source_port=40053)
    assert landed(results) == {"web-1": 3}
    world.agents.apply("dns", [svc("dns", "198.19.1.8", protocol="UDP", port=53),
                               slice_of("dns", [world.web[1]], protocol="UDP")])
    # same source port, like a resolver: web-1 still runs, so only a deleted conntrack entry moves it
    results = world.cluster.probe(world.pod_client, "198.19.1.8", 53, proto="udp", count=3, source_port=40053)
    assert landed(results) == {"web-2": 3}


def test_weighted_endpoints(world: World) -> None:
    weights = json.dumps({world.web[0].ip: 3, "web-2": 1})
    world.agents.apply("weighted", [
        svc("weighted", "198.19.1.9", annotations={"nftproxy.io/endpoint-weights": weights}),
        slice_of("weighted", [world.web[0], world.web[1]]),
    ])
    counts = landed(world.cluster.probe(world.pod_client, "198.19.1.9", 80, count=4000, timeout=2.0))
    assert sum(counts.values()) == 4000, counts
    assert abs(counts["web-1"] / 4000 - 0.75) <= 0.04 and abs(counts["web-2"] / 4000 - 0.25) <= 0.04, counts


def _sctp_supported() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _sctp_supported(), reason="this kernel has no SCTP sockets (EPROTONOSUPPORT): "
                    "SCTP rules are covered by the ruleset tests only")
def test_sctp_service(world: World) -> None:
    sctp_pod = world.cluster.add_pod(world.node(1), "sctp-1", tcp=(), udp=(), sctp=(9999,))
    world.agents.apply("sctp", [service("sctp", "198.19.1.10", [{"name": "s", "port": 99, "protocol": "SCTP"}]),
                                {**slice_of("sctp", [sctp_pod]),
                                 "ports": [{"name": "s", "port": 9999, "protocol": "SCTP"}]}])
    assert landed(world.cluster.probe(world.pod_client, "198.19.1.10", 99, proto="sctp", count=3)) == {"sctp-1": 3}
