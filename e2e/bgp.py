"""A namespace cluster for BGP mode: the LoadBalancer world of `e2e.lb` (three nodes, the API stand-in
serving MetalLB's objects, an agent per node) plus a router namespace running BIRD (AS 64513, ECMP over
equal paths into its kernel) and a client behind the router whose only route is its default route to
the router: it reaches a LoadBalancer address only through routes the nodes advertise over BGP.
Used by tests/test_lb_bgp_e2e.py and `python -m e2e.bgp_failover`.

    client 203.0.113.2 ── router 203.0.113.1 | 198.18.0.254 (BIRD, AS 64513) ── LAN ── node-1..3 (AS 64512)

The router is configured as a router in front of a cluster would be: one BGP session per node and per
family, import all, export nothing, graceful restart helper (BIRD's default), hold time 3 s, BFD offered
(100 ms x 3: used by the sessions of nodes whose BGPPeer names a BFDProfile), and it accepts a returning
peer at once (`error wait time 1,2`: BIRD's own default waits 60 s after an error).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from e2e.lb import GROUP, POOL_NAMESPACE, LBWorld, lb_world
from e2e.netns.cluster import Client, Node, Router

ROUTER_ASN, NODE_ASN = 64513, 64512
POOL_V4, POOL_V6 = "198.51.100.0/24", "2001:db8:5::/120"
HOLD = 3  # seconds: the smallest hold time RFC 4271 allows, for quick failover in the tests

_ROUTER_CONF = """\
router id {router_id};
log stderr {{ info, warning, error, fatal, bug }};
protocol device {{ scan time 10; }}
protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}
protocol kernel {{ ipv6 {{ import none; export all; }}; merge paths on; }}
protocol bfd {{ }}
template bgp nodes {{
    hold time {hold}; keepalive time 1; connect retry time 2; error wait time 1, 2;
    bfd {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};
}}
{peers}
"""
_ROUTER_PEER = """\
protocol bgp {name} from nodes {{
    local {local} as {asn}; neighbor {neighbor} as {node_asn};
    ipv{family} {{ import all; export none; }};
}}
"""


@dataclass
class BGPWorld:
    lb: LBWorld
    router: Router
    client: Client
    bird: subprocess.Popen[bytes]
    bird_socket: str

    @property
    def cluster(self) -> Any:
        return self.lb.cluster

    # --- MetalLB's BGP objects -----------------------------------------------------------------------
    def peer(self, name: str, version: str = "v1beta2", **spec: Any) -> None:
        body = {"apiVersion": f"{GROUP}/{version}", "kind": "BGPPeer",
                "metadata": {"name": name, "namespace": POOL_NAMESPACE}, "spec": spec}
        self.lb.custom.create_namespaced_custom_object(GROUP, version, POOL_NAMESPACE, "bgppeers", body)

    def delete_peer(self, name: str) -> None:
        self.lb.custom.delete_namespaced_custom_object(GROUP, "v1beta2", POOL_NAMESPACE, "bgppeers", name)

    def bfd_profile(self, name: str, **spec: Any) -> None:
        body = {"apiVersion": f"{GROUP}/v1beta1", "kind": "BFDProfile",
                "metadata": {"name": name, "namespace": POOL_NAMESPACE}, "spec": spec}
        self.lb.custom.create_namespaced_custom_object(GROUP, "v1beta1", POOL_NAMESPACE, "bfdprofiles", body)

    def patch_peer(self, name: str, **spec: Any) -> None:
        self.lb.custom.patch_namespaced_custom_object(GROUP, "v1beta2", POOL_NAMESPACE, "bgppeers", name,
                                                      {"spec": spec})

    def wait_established(self, timeout: float = 30.0, family: str = "") -> None:
        """Until the router's session with every node (n1.., or n1v6.. with family "v6") is established."""
        deadline = time.monotonic() + timeout
        while not all("Established" in self.session_state(f"n{n.index}{family}") for n in self.cluster.nodes):
            if time.monotonic() > deadline:
                raise AssertionError("sessions not established: " + self.birdc("show", "protocols"))
            time.sleep(0.05)

    def advertisement(self, name: str, **spec: Any) -> None:
        body = {"apiVersion": f"{GROUP}/v1beta1", "kind": "BGPAdvertisement",
                "metadata": {"name": name, "namespace": POOL_NAMESPACE}, "spec": spec}
        self.lb.custom.create_namespaced_custom_object(GROUP, "v1beta1", POOL_NAMESPACE, "bgpadvertisements", body)

    def delete_advertisement(self, name: str) -> None:
        self.lb.custom.delete_namespaced_custom_object(GROUP, "v1beta1", POOL_NAMESPACE, "bgpadvertisements", name)

    def peer_events(self, name: str) -> list[tuple[str, str, str]]:
        items = self.lb.core.list_namespaced_event(POOL_NAMESPACE).items
        return [(e.type, e.reason, e.message) for e in items
                if e.involved_object.kind == "BGPPeer" and e.involved_object.name == name]

    # --- the router's view -------------------------------------------------------------------------------
    def next_hops(self, address: str) -> set[str]:
        """Node names the router's kernel forwards `address` to (one per ECMP path)."""
        family = "-6" if ":" in address else "-4"
        out = subprocess.run(["ip", family, "-n", self.router.netns, "-j", "route", "show", address],
                             capture_output=True, text=True, check=True).stdout
        by_ip = {n.ip: n.name for n in self.cluster.nodes} | {n.ip6: n.name for n in self.cluster.nodes if n.ip6}
        hops: set[str] = set()
        for route in json.loads(out or "[]"):
            gateways = [h.get("gateway") for h in route.get("nexthops", [])] or [route.get("gateway")]
            hops.update(by_ip.get(g, g) for g in gateways if g)
        return hops

    def wait_next_hops(self, address: str, expected: set[str], timeout: float = 15.0) -> float:
        """Seconds until the router's kernel forwards `address` to exactly `expected` (AssertionError when
        it does not within `timeout`)."""
        started = time.monotonic()
        while True:
            hops = self.next_hops(address)
            if hops == expected:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"router forwards {address} to {sorted(hops)}, expected {sorted(expected)}")
            time.sleep(0.01)

    def cut(self, node: Node, cut: bool = True) -> None:
        """Pull (or plug back) a node's cable: its LAN port goes down on the switch (the bridge), so the node
        keeps its own configuration and nobody hears from it."""
        subprocess.run(["ip", "-n", self.cluster.lan_netns, "link", "set", f"n{node.index}", "down" if cut else "up"],
                       check=True)

    def birdc(self, *command: str) -> str:
        return subprocess.run(["birdc", "-s", self.bird_socket, *command], capture_output=True, text=True,
                              check=True).stdout

    def set_ready(self, service: str, ready: bool, family: str = "IPv4") -> None:
        """Mark every endpoint of a Service's slice (as `LBWorld.service` made it) ready or not."""
        name = f"{service}-{family.lower()}"
        slice_ = self.lb.discovery.read_namespaced_endpoint_slice(name, "default")
        for endpoint in slice_.endpoints:
            endpoint.conditions.ready = ready
        self.lb.discovery.replace_namespaced_endpoint_slice(name, "default", slice_)

    def entry_node(self, source: str | None) -> str | None:
        """The node a masqueraded connection came through, from the source address its pod saw."""
        for n in self.cluster.nodes:
            if source in (n.ip, n.ip6, n.pod_gateway):
                return str(n.name)
        return None

    def session_state(self, protocol: str) -> str:
        """The router's BGP state of one of its sessions (n1, n2v6, ...)."""
        for line in self.birdc("show", "protocols", protocol).splitlines():
            if line.startswith(protocol + " "):
                return line.split()[-1]
        return ""

    def probe(self, ip: str, port: int = 80, count: int = 1, timeout: float = 1.0) -> list[Any]:
        return self.cluster.probe(self.client, ip, port, count=count, timeout=timeout)

    def node(self, name: str) -> Node:
        return self.cluster.node(name)


def _router_config(world: LBWorld, router: Router) -> str:
    peers = []
    for node in world.cluster.nodes:
        peers.append(_ROUTER_PEER.format(name=f"n{node.index}", local=router.ip, asn=ROUTER_ASN, neighbor=node.ip,
                                         node_asn=NODE_ASN, family=4))
        if node.ip6 and router.ip6:
            peers.append(_ROUTER_PEER.format(name=f"n{node.index}v6", local=router.ip6, asn=ROUTER_ASN,
                                             neighbor=node.ip6, node_asn=NODE_ASN, family=6))
    return _ROUTER_CONF.format(router_id=router.ip, hold=HOLD, peers="".join(peers))


@contextmanager
def bgp_world(extra_args: tuple[str, ...] = ()) -> Iterator[BGPWorld]:
    """The LB world with a BGP router and a client behind it; the pool `public` (outside every network the
    client or the router know) and the BGPPeers `router` (IPv4) and `router6` (IPv6) that every node opens."""
    with lb_world(extra_args=extra_args) as lb:
        cluster = lb.cluster
        router = cluster.add_router("tor")
        client = cluster.add_client_behind(router, "far")
        cluster.exec(router, ["sysctl", "-q", "-w", "net.ipv4.fib_multipath_hash_policy=1",
                              "net.ipv6.fib_multipath_hash_policy=1"])  # spread connections, not just clients
        for node in cluster.nodes:  # the way back to the client (a real node's default route)
            cluster.add_route(node, router.outside_cidr, router.ip)
            if node.ip6 and router.outside_cidr6 and router.ip6:
                cluster.add_route(node, router.outside_cidr6, router.ip6)
        conf = cluster.logdir / "router-bird.conf"
        conf.write_text(_router_config(lb, router))
        sock = str(cluster.logdir / "router-bird.ctl")
        log = open(cluster.logdir / "router-bird.log", "wb")
        bird = subprocess.Popen(["ip", "netns", "exec", router.netns, "bird", "-f", "-c", str(conf), "-s", sock],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            lb.pool("public", POOL_V4, POOL_V6)
            world = BGPWorld(lb, router, client, bird, sock)
            common = {"myASN": NODE_ASN, "peerASN": ROUTER_ASN, "holdTime": f"{HOLD}s", "keepaliveTime": "1s"}
            world.peer("router", peerAddress=router.ip, **common)
            if router.ip6:
                world.peer("router6", peerAddress=router.ip6, **common)
            world.advertisement("public", ipAddressPools=["public"])
            yield world
        finally:
            bird.kill()
            bird.wait(5)
            log.close()
