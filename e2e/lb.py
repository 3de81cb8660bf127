"""A namespace cluster for the bare-metal LoadBalancer: three nodes, a client with no route but the LAN
prefix (so it reaches a LoadBalancer address only through ARP/NDP), the API stand-in serving MetalLB's
objects, and an nftproxy agent on every node. Used by tests/test_lb_l2.py and `python -m e2e.lb_failover`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from e2e.agent import NodeAgent
from e2e.cluster_api import ClusterApi
from e2e.netns import NamespaceCluster, Pod, require_root_and_netns
from e2e.netns.cluster import Client, Node, cleanup_stale

POOL_NAMESPACE = "metallb-system"
GROUP, VERSION = "metallb.io", "v1beta1"
# the LAN is 198.18.0.0/24 and 2001:db8::/64: pools live inside it, so the client resolves them on-link
SEED_POOL_V4 = "198.18.0.200/32"
POD_PORTS = {"TCP": 8080, "UDP": 5353}  # where the harness's echo servers listen

# Sends one ARP request from a namespace and prints the MAC of every answer within `wait` seconds.
_ASK = r"""
import ipaddress, json, socket, sys, time
from nftproxy.lb import frames
ifname, target, wait, source = sys.argv[1], ipaddress.IPv4Address(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((ifname, 0))
mac = s.getsockname()[4]
s.send(frames.build_arp(frames.ARP_REQUEST, mac, ipaddress.IPv4Address(source), frames.ZERO_MAC, target,
                        frames.BROADCAST_MAC))
answers = set()
s.settimeout(0.05)
end = time.monotonic() + wait
while time.monotonic() < end:
    try:
        arp = frames.parse_arp(s.recv(2048))
    except socket.timeout:
        continue
    if arp and arp.op == frames.ARP_REPLY and arp.sender_ip == target:
        answers.add(frames.mac_text(arp.sender_mac))
print(json.dumps(sorted(answers)))
"""


@dataclass
class LBWorld:
    cluster: NamespaceCluster
    api: ClusterApi
    agents: list[NodeAgent]
    pods: list[Pod]
    outside: Client
    core: Any
    discovery: Any
    custom: Any
    created: list[tuple[str, str]] = field(default_factory=list)

    # --- objects --------------------------------------------------------------------------------
    def pool(self, name: str, *addresses: str, **spec: Any) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "IPAddressPool",
                "metadata": {"name": name, "namespace": POOL_NAMESPACE}, "spec": {"addresses": list(addresses), **spec}}
        self._put("ipaddresspools", name, body)

    def l2(self, name: str, **spec: Any) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "L2Advertisement",
                "metadata": {"name": name, "namespace": POOL_NAMESPACE}, "spec": spec}
        self._put("l2advertisements", name, body)

    def _put(self, plural: str, name: str, body: dict[str, Any]) -> None:
        try:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, POOL_NAMESPACE, plural, body)
        except client.exceptions.ApiException as err:
            if err.status != 409:
                raise
            current = self.custom.get_namespaced_custom_object(GROUP, VERSION, POOL_NAMESPACE, plural, name)
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            self.custom.replace_namespaced_custom_object(GROUP, VERSION, POOL_NAMESPACE, plural, name, body)

    def delete_pool(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, POOL_NAMESPACE, "ipaddresspools", name)

    def service(self, name: str, pods: list[Pod], ports: list[tuple[str, int]] | None = None,
                annotations: dict[str, str] | None = None, families: list[str] | None = None,
                **spec: Any) -> None:
        """A LoadBalancer Service and its EndpointSlice(s) (one per family)."""
        ports = ports or [("TCP", 80)]
        families = families or ["IPv4"]
        body = {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "annotations": annotations or {}},
                "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ipFamilies": families,
                         "ipFamilyPolicy": "RequireDualStack" if len(families) > 1 else "SingleStack",
                         "ports": [{"name": f"{proto.lower()}-{port}", "protocol": proto, "port": port,
                                    "targetPort": POD_PORTS[proto]} for proto, port in ports], **spec}}
        self.core.create_namespaced_service("default", body)
        for family in families:
            addresses = [(p.ip if family == "IPv4" else p.ip6, p.node.name) for p in pods]
            slice_body = {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-{family.lower()}", "labels": {"kubernetes.io/service-name": name}},
                "addressType": family,
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": node}
                              for ip, node in addresses],
                "ports": [{"name": f"{proto.lower()}-{port}", "protocol": proto, "port": POD_PORTS[proto]}
                          for proto, port in ports],
            }
            self.discovery.create_namespaced_endpoint_slice("default", slice_body)
        self.created.append(("default", name))

    def delete_service(self, name: str) -> None:
        self.core.delete_namespaced_service(name, "default")
        for family in ("ipv4", "ipv6"):
            try:
                self.discovery.delete_namespaced_endpoint_slice(f"{name}-{family}", "default")
            except client.exceptions.ApiException:
                pass

    def ingress(self, name: str) -> list[str]:
        svc = self.core.read_namespaced_service_status(name, "default")
        return [i.ip for i in (svc.status.load_balancer.ingress or [])] if svc.status.load_balancer else []

    def wait_ingress(self, name: str, count: int = 1, timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            ips = self.ingress(name)
            if len(ips) >= count or time.monotonic() > deadline:
                return ips
            time.sleep(0.1)

    def events(self, name: str) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the Events on Service `name`."""
        items = self.core.list_namespaced_event("default").items
        return [(e.type, e.reason, e.message) for e in items
                if e.involved_object.name == name and e.involved_object.kind == "Service"]

    def wait_event(self, name: str, reason: str, timeout: float = 10.0) -> list[tuple[str, str, str]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(name) if e[1] == reason]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    # --- the LAN as the client sees it ------------------------------------------------------------
    def mac_of(self, node: Node) -> str:
        out = self.cluster.exec(node, ["ip", "-j", "link", "show", node.lan_ifname]).stdout
        return str(json.loads(out)[0]["address"])

    def node_by_mac(self, mac: str) -> str | None:
        return next((n.name for n in self.cluster.nodes if self.mac_of(n) == mac), None)

    def who_answers(self, ip: str, wait: float = 0.5) -> list[str]:
        """Names of the nodes (or raw MACs) that answer one ARP request for `ip` from the client."""
        out = self.cluster.exec(self.outside, [sys.executable, "-c", _ASK, "eth0", ip, str(wait),
                                               str(self.outside.ip)]).stdout
        return [self.node_by_mac(mac) or mac for mac in json.loads(out)]

    def learned(self, ip: str) -> str | None:
        """The node the client's neighbour table (ARP or NDP) holds for `ip`."""
        out = self.cluster.exec(self.outside, ["ip", "-j", "neigh", "show", ip]).stdout
        entries = [e for e in json.loads(out or "[]") if e.get("lladdr")]
        return (self.node_by_mac(entries[0]["lladdr"]) or entries[0]["lladdr"]) if entries else None

    def probe(self, ip: str, port: int = 80, proto: str = "tcp", count: int = 1, timeout: float = 1.0) -> list[Any]:
        return self.cluster.probe(self.outside, ip, port, proto=proto, count=count, timeout=timeout)

    def eventually_served(self, ip: str, port: int = 80, proto: str = "tcp", within: float = 10.0) -> Any:
        deadline = time.monotonic() + within
        while True:
            result = self.probe(ip, port, proto, timeout=0.5)[0]
            if result.ok or time.monotonic() > deadline:
                return result
            time.sleep(0.1)

    def metric(self, node_name: str, name: str) -> float:
        """Sum of a metric's samples on a node (its agent serves /metrics on 127.0.0.1 in the node's namespace)."""
        code = ("import urllib.request; "
                "print(urllib.request.urlopen('http://127.0.0.1:10249/metrics', timeout=5).read().decode())")
        text = self.cluster.exec(self.cluster.node(node_name), [sys.executable, "-c", code]).stdout
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))

    def block_heartbeats(self, a: Node, b: Node, blocked: bool = True) -> None:
        """Drop the heartbeats between two nodes (both ways), as a partition of the node network that ARP
        still crosses would; in a table of its own in each node's namespace."""
        for here, there in ((a, b), (b, a)):
            if blocked:
                script = (f"table inet nfp_partition {{ chain heartbeats {{ type filter hook input priority -300; "
                          f"ip saddr {there.ip} udp dport 7473 drop; }}; }}")
                subprocess.run(["ip", "netns", "exec", here.netns, "nft", "-f", "-"], input=script, text=True,
                               check=True)
            else:
                subprocess.run(["ip", "netns", "exec", here.netns, "nft", "delete", "table", "inet",
                                "nfp_partition"], check=False)

    def diagnose(self, ip: str) -> str:
        """What a failed assertion about `ip` should show: who answers, what each node announces, the
        client's neighbour entry, and the LoadBalancer lines of each agent's log."""
        lines = [f"{ip}: answering {self.who_answers(ip) if ':' not in ip else '(NDP)'}, client learned "
                 f"{self.learned(ip)}"]
        for agent in self.agents:
            try:
                announced = self.metric(agent.node.name, "nftproxy_lb_announced")
            except Exception as err:  # noqa: BLE001 - a diagnosis must not fail
                announced = f"metrics unavailable: {err}"  # type: ignore[assignment]
            lb_lines = [line for line in agent.lines if "nftproxy.lb" in line or "membership" in line][-8:]
            lines.append(f"--- {agent.node.name}: announcing {announced}\n" + "\n".join(lb_lines))
        return "\n".join(lines)

    def agent(self, node_name: str) -> NodeAgent:
        return next(a for a in self.agents if a.node.name == node_name)


def node_object(node: Node, labels: dict[str, str] | None = None) -> dict[str, Any]:
    addresses = [{"type": "InternalIP", "address": node.ip}]
    if node.ip6:
        addresses.append({"type": "InternalIP", "address": node.ip6})
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name, **(labels or {})}},
            "status": {"addresses": addresses}}


def agent_args() -> list[str]:
    return ["--lb-lease-namespace", "default", "--lb-lease-duration", "4", "--healthz-bind-address", "",
            "--metrics-bind-address", "127.0.0.1:10249"]  # each in its node's namespace


@contextmanager
def lb_world(nodes: int = 3, extra_args: tuple[str, ...] = ()) -> Iterator[LBWorld]:
    require_root_and_netns()
    cleanup_stale()
    cluster = NamespaceCluster(nodes=nodes, dual_stack=True)
    api: ClusterApi | None = None
    agents: list[NodeAgent] = []
    try:
        pods = [cluster.add_pod(node, f"web-{node.index}") for node in cluster.nodes]
        outside = cluster.add_client("outside")
        api = ClusterApi(cluster.lan_netns, cluster.lan_gateway,
                         service_cidr=f"{cluster.service_cidr},{cluster.service_cidr6}",
                         bookmark_interval=1.0).start()
        api_client = api.api.client()
        core = client.CoreV1Api(api_client)
        core.create_namespace({"metadata": {"name": POOL_NAMESPACE}})
        for node in cluster.nodes:
            core.create_node(node_object(node))
        source = ["--kubeconfig", api.kubeconfig_for_nodes]
        agents = [NodeAgent(cluster, node, source, *agent_args(), *extra_args) for node in cluster.nodes]
        for agent in agents:
            agent.start(wait=False)
        for agent in agents:
            agent.wait_synced(0, timeout=30)
        yield LBWorld(cluster, api, agents, pods, outside, core, client.DiscoveryV1Api(api_client),
                      client.CustomObjectsApi(api_client))
    finally:
        for agent in agents:
            agent.stop()
        if api is not None:
            api.stop()
        cluster.close()


def kill(agent: NodeAgent) -> None:
    """SIGKILL: no farewell, no hand-over (a crashed or powered-off node)."""
    if agent.process is not None and agent.process.poll() is None:
        agent.process.kill()
        agent.process.wait(5)


def set_link(world: LBWorld, node: Node, up: bool) -> None:
    subprocess.run(["ip", "-n", node.netns, "link", "set", node.lan_ifname, "up" if up else "down"], check=True)


# Starts a TCP connection every `gap` seconds, each on its own thread with `timeout`, so a lost attempt
# never delays the next one; prints "<monotonic start> <ok>" per attempt.
_PROBER = r"""
import socket, sys, threading, time
ip, port, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
timeout, duration = float(sys.argv[4]), float(sys.argv[5])
family = socket.AF_INET6 if ":" in ip else socket.AF_INET
lock = threading.Lock()
def attempt(started):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        s.sendall(b"hello\n")
        ok = bool(s.recv(100))
    except OSError:
        ok = False
    finally:
        s.close()
    with lock:
        print(f"{started:.6f} {int(ok)}", flush=True)
end = time.monotonic() + duration
next_at = time.monotonic()
while next_at < end:
    threading.Thread(target=attempt, args=(next_at,), daemon=True).start()
    next_at += gap
    time.sleep(max(0.0, next_at - time.monotonic()))
time.sleep(timeout + 0.1)
"""


class Prober:
    """New TCP connections from the client to `ip:port`, one every `gap` seconds, timestamped on the
    system-wide monotonic clock (the same one this process reads)."""

    def __init__(self, world: LBWorld, ip: str, port: int = 80, gap: float = 0.02, timeout: float = 0.2,
                 duration: float = 60.0) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", world.outside.netns, sys.executable, "-c", _PROBER, ip, str(port), str(gap),
             str(timeout), str(duration)], stdout=subprocess.PIPE, text=True)
        self.results: list[tuple[float, bool]] = []

    def stop(self) -> list[tuple[float, bool]]:
        if self.process.poll() is None:
            self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        for line in out.splitlines():
            stamp, ok = line.split()
            self.results.append((float(stamp), ok == "1"))
        self.results.sort()
        return self.results

    def recovered_after(self, moment: float) -> float | None:
        """When a connection first succeeded again after the outage that began at `moment` (`moment`
        itself when nothing failed). Later failures are not the address's: connections balanced to an
        endpoint on the dead node fail until Kubernetes marks it not ready."""
        since = [(t, ok) for t, ok in self.results if t >= moment]
        first_failure = next((t for t, ok in since if not ok), None)
        if first_failure is None:
            return moment
        return next((t for t, ok in since if ok and t > first_failure), None)
