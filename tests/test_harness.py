"""Tests of the namespace-cluster harness itself (e2e/netns), with real packets.

These need root and network namespaces; they fail (not skip) without them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time

import pytest

from e2e.netns import (
    CommandError,
    HarnessError,
    NamespaceCluster,
    cleanup_stale,
    list_netns,
    summarize,
)
from e2e.netns import cluster as cluster_mod
from e2e.netns.fixtures import namespace_cluster, namespace_cluster_factory  # noqa: F401 (fixtures)

kernel = pytest.mark.kernel


def host_state() -> dict[str, object]:
    """What of the host netns must never change: links, addresses, routes, rules."""

    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    links = {(link["ifindex"], link["ifname"]) for link in json.loads(out("ip", "-j", "link", "show"))}
    addrs = {
        (link["ifindex"], a["family"], a["local"], a["prefixlen"])
        for link in json.loads(out("ip", "-j", "addr", "show"))
        for a in link.get("addr_info", [])
    }

    def routes(*family: str) -> set[str]:
        # drop lifetimes ("expires 1234sec") that tick on hosts with RA/DHCP
        lines = out("ip", *family, "route", "show", "table", "all").splitlines()
        return {re.sub(r" expires \S+", "", line) for line in lines}

    return {
        "links": links,
        "addrs": addrs,
        "routes4": routes("-4"),
        "routes6": routes("-6"),
        "sysctl": out(
            "sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
            "net.ipv4.conf.all.rp_filter", "net.ipv6.conf.default.accept_dad",
        ),  # fmt: skip
        "nft": out("nft", "list", "ruleset"),
    }


# --------------------------------------------------------------------------- #
# reachability
# --------------------------------------------------------------------------- #


@kernel
def test_pod_to_pod_across_nodes_keeps_source_ip(namespace_cluster: NamespaceCluster) -> None:
    c = namespace_cluster
    a = c.add_pod(c.nodes[0], "a", tcp=[8080], udp=[])
    b = c.add_pod(c.nodes[1], "b", tcp=[8080], udp=[])
    assert a.ip == "198.18.129.2" and b.ip == "198.18.130.2"
    results = c.probe(a, b.ip, 8080, count=20)
    assert summarize(results) == {"b": 20}
    assert {r.client for r in results} == {a.ip}


@kernel
def test_udp_round_trip_and_fixed_source_port(namespace_cluster: NamespaceCluster) -> None:
    c = namespace_cluster
    a = c.add_pod(c.nodes[0], "a", tcp=[], udp=[])
    b = c.add_pod(c.nodes[1], "b", tcp=[], udp=[5353])
    results = c.probe(a, b.ip, 5353, proto="udp", count=10)
    assert summarize(results) == {"b": 10}
    assert all(r.client == a.ip for r in results)
    fixed = c.probe(a, b.ip, 5353, proto="udp", count=5, source_port=40053)
    assert summarize(fixed) == {"b": 5}
    assert {r.client_port for r in fixed} == {40053}


@kernel
def test_lan_client_reaches_host_network_server(namespace_cluster: NamespaceCluster) -> None:
    c = namespace_cluster
    node = c.nodes[1]
    c.start_server(node, "node-2-host", tcp=[10250], udp=[10053])
    client = c.add_client("outside")
    assert client.ip == "198.18.0.101"
    tcp = c.probe(client, node.ip, 10250, count=3)
    udp = c.probe(client, node.ip, 10053, proto="udp", count=3)
    assert summarize(tcp) == {"node-2-host": 3}
    assert summarize(udp) == {"node-2-host": 3}
    assert {r.client for r in tcp + udp} == {client.ip}


@kernel
def test_client_has_no_route_to_pods_until_added(namespace_cluster: NamespaceCluster) -> None:
    c = namespace_cluster
    pod = c.add_pod(c.nodes[0], "web", tcp=[8080], udp=[])
    client = c.add_client("outside")
    start = time.monotonic()
    assert summarize(c.probe(client, pod.ip, 8080, timeout=1.0)) == {"error:unreachable": 1}
    assert time.monotonic() - start < 1.0  # no route: immediate, not a timeout
    # the harness does nothing with the Service CIDR: unreachable too
    assert summarize(c.probe(client, "198.19.0.10", 80)) == {"error:unreachable": 1}
    c.add_route(client, pod.node.pod_cidr, pod.node.ip)
    assert summarize(c.probe(client, pod.ip, 8080, count=3)) == {"web": 3}


@kernel
def test_errors_are_classified_quickly(namespace_cluster: NamespaceCluster) -> None:
    c = namespace_cluster
    a = c.add_pod(c.nodes[0], "a", tcp=[], udp=[])
    b = c.add_pod(c.nodes[1], "b", tcp=[8080], udp=[5353])
    start = time.monotonic()
    assert summarize(c.probe(a, b.ip, 9, proto="udp", count=3, timeout=2.0)) == {"error:refused": 3}
    assert summarize(c.probe(a, b.ip, 9, proto="tcp", count=3, timeout=2.0)) == {"error:refused": 3}
    assert time.monotonic() - start < 2.0  # ICMP unreachable / RST, not timeouts
    # nobody answers ARP for this LAN address: a timeout
    assert summarize(c.probe(c.nodes[0], "198.18.0.250", 80, timeout=0.3)) == {"error:timeout": 1}


@kernel
def test_many_sequential_tcp_requests_are_fast(namespace_cluster: NamespaceCluster) -> None:
    c = namespace_cluster
    a = c.add_pod(c.nodes[0], "a", tcp=[], udp=[])
    b = c.add_pod(c.nodes[1], "b", tcp=[8080], udp=[])
    start = time.monotonic()
    results = c.probe(a, b.ip, 8080, count=3000)
    elapsed = time.monotonic() - start
    assert summarize(results) == {"b": 3000}
    assert elapsed < 15, f"3000 requests took {elapsed:.1f}s"


@kernel
def test_long_lived_line_mode_connection(namespace_cluster: NamespaceCluster) -> None:
    c = namespace_cluster
    a = c.add_pod(c.nodes[0], "a", tcp=[], udp=[])
    b = c.add_pod(c.nodes[1], "b", tcp=[8080], udp=[])
    with c.open_connection(a, b.ip, 8080) as conn:
        assert conn.local is not None and conn.local[0] == a.ip
        replies = [conn.exchange() for _ in range(5)]
        assert all(r.ok and r.pod == "b" and r.client == a.ip for r in replies), replies
        # one connection: the server sees the same source port every time
        assert {r.client_port for r in replies} == {conn.local[1]}
        c.stop_pod(b)
        broken = conn.exchange()
        assert not broken.ok and broken.error in ("closed", "reset")
        assert conn.broken
        assert conn.exchange().error == "closed"


@kernel
def test_open_connection_failure_raises(namespace_cluster: NamespaceCluster) -> None:
    c = namespace_cluster
    b = c.add_pod(c.nodes[1], "b", tcp=[8080], udp=[])
    with pytest.raises(HarnessError, match="refused"):
        c.open_connection(c.nodes[0], b.ip, 9)


@kernel
def test_stop_pod_removes_it(namespace_cluster: NamespaceCluster) -> None:
    c = namespace_cluster
    pod = c.add_pod(c.nodes[0], "web", tcp=[8080], udp=[])
    assert summarize(c.probe(c.nodes[1], pod.ip, 8080)) == {"web": 1}
    c.stop_pod(pod)
    assert pod.netns not in list_netns()
    assert "web" not in c.pods
    assert summarize(c.probe(c.nodes[1], pod.ip, 8080, timeout=0.5))["web"] == 0
    # the node-side route went away with the veth
    assert pod.ip not in c.exec(c.nodes[0], ["ip", "route"]).stdout


@kernel
def test_hairpin_and_node_local_service_with_manual_nat(namespace_cluster: NamespaceCluster) -> None:
    """The topology supports what a proxy needs: hairpin and node-local DNAT."""
    c = namespace_cluster
    node = c.nodes[0]
    pod = c.add_pod(node, "web", tcp=[8080], udp=[])
    ruleset = f"""
table ip harness_test {{
    chain pre {{ type nat hook prerouting priority -100; ip daddr 198.19.0.10 tcp dport 80 dnat to {pod.ip}:8080; }}
    chain out {{ type nat hook output priority -100; ip daddr 198.19.0.10 tcp dport 80 dnat to {pod.ip}:8080; }}
    chain post {{ type nat hook postrouting priority 100; ip saddr {pod.ip} ip daddr {pod.ip} masquerade; }}
}}
"""
    c.exec(node, ["nft", "-f", "-"], input=ruleset)
    hairpin = c.probe(pod, "198.19.0.10", 80, count=3)
    assert summarize(hairpin) == {"web": 3}
    assert {r.client for r in hairpin} == {node.pod_gateway}  # masqueraded to the veth address
    local = c.probe(node, "198.19.0.10", 80, count=3)
    assert summarize(local) == {"web": 3}
    assert {r.client for r in local} == {node.ip}


@kernel
@pytest.mark.parametrize("namespace_cluster", [{"nodes": 2, "dual_stack": True}], indirect=True)
def test_dual_stack(namespace_cluster: NamespaceCluster) -> None:
    c = namespace_cluster
    assert [n.ip6 for n in c.nodes] == ["2001:db8::b", "2001:db8::c"]
    assert c.nodes[1].pod_cidr6 == "2001:db8:1:2::/64"
    assert c.service_cidr6 == "2001:db8:2::/112" and c.cluster_cidr6 == "2001:db8:1::/56"
    a = c.add_pod(c.nodes[0], "a", tcp=[], udp=[])
    b = c.add_pod(c.nodes[1], "b", tcp=[8080], udp=[5353])
    assert b.ip6 == "2001:db8:1:2::2"
    tcp = c.probe(a, b.ip6, 8080, count=3)
    udp = c.probe(a, b.ip6, 5353, proto="udp", count=3)
    assert summarize(tcp + udp) == {"b": 6}
    assert {r.client for r in tcp + udp} == {a.ip6}
    client = c.add_client("outside")
    assert client.ip6 == "2001:db8::65"
    c.start_server(c.nodes[0], "host", tcp=[80], udp=[53])
    assert summarize(c.probe(client, c.nodes[0].ip6, 80)) == {"host": 1}
    # pods reach their node on the link-local gateway too (scope id in the address)
    gw = f"{c.nodes[0].pod_gateway6}%eth0"
    assert summarize(c.probe(a, gw, 80) + c.probe(a, gw, 53, proto="udp")) == {"host": 2}
    assert summarize(c.probe(client, b.ip6, 8080)) == {"error:unreachable": 1}
    c.add_route(client, c.nodes[1].pod_cidr6, c.nodes[1].ip6)
    assert summarize(c.probe(client, b.ip6, 8080)) == {"b": 1}


@kernel
def test_sctp_is_reported_not_fatal(namespace_cluster: NamespaceCluster) -> None:
    """SCTP may be missing from the kernel: the server still starts, probes say why."""
    c = namespace_cluster
    b = c.add_pod(c.nodes[1], "b", tcp=[8080], udp=[], sctp=[9999])
    assert b.server is not None and b.server.alive
    results = c.probe(c.nodes[0], b.ip, 9999, proto="sctp")
    assert summarize(results) in ({"b": 1}, {"error:unsupported": 1})
    if summarize(results) == {"error:unsupported": 1}:
        assert "sctp" in b.server.log()


# --------------------------------------------------------------------------- #
# commands, teardown, hygiene
# --------------------------------------------------------------------------- #


@kernel
def test_exec_error_names_argv_netns_and_stderr(namespace_cluster: NamespaceCluster) -> None:
    c = namespace_cluster
    node = c.nodes[0]
    assert "198.18.0.11" in c.exec(node, ["ip", "-4", "addr", "show", "eth0"]).stdout
    assert c.exec(node, ["cat"], input="hello").stdout == "hello"
    assert c.exec(node, ["false"], check=False).returncode == 1
    with pytest.raises(CommandError) as info:
        c.exec(node, ["ip", "link", "del", "no-such-dev"])
    message = str(info.value)
    assert "no-such-dev" in message and node.netns in message and "Cannot find device" in message
    assert info.value.returncode != 0 and info.value.netns == node.netns


@kernel
def test_close_removes_everything_and_host_is_untouched() -> None:
    cluster_mod.require_root_and_netns()
    before = host_state()
    with NamespaceCluster(nodes=3, dual_stack=True) as c:
        prefix = c.prefix
        assert prefix.startswith("nfp-")
        for node in c.nodes:
            c.add_pod(node, f"p-{node.index}", tcp=[8080], udp=[5353])
        c.add_client("outside")
        c.start_server(c.nodes[0], "host", tcp=[80])
        conn = c.open_connection(c.nodes[1], c.pods["p-1"].ip, 8080)
        assert conn.exchange().ok
        names = [n for n in list_netns() if n.startswith(prefix + "-")]
        assert len(names) == 1 + 3 + 3 + 1  # lan, nodes, pods, client
        assert host_state() == before, "the host network namespace changed while the cluster was up"
        processes = [s.process for s in c.servers] + [conn.process]
    assert not [n for n in list_netns() if n.startswith(prefix)]
    assert all(p.poll() is not None for p in processes)
    assert host_state() == before
    with pytest.raises(HarnessError):
        c.add_client("late")
    c.close()  # idempotent


@kernel
def test_close_runs_when_the_body_raises() -> None:
    cluster_mod.require_root_and_netns()
    with pytest.raises(ZeroDivisionError):
        with NamespaceCluster(nodes=1) as c:
            prefix = c.prefix
            c.add_pod(c.nodes[0], "x")
            raise ZeroDivisionError("the body fails")
    assert not [n for n in list_netns() if n.startswith(prefix)]


@kernel
def test_parallel_clusters_do_not_collide(namespace_cluster_factory) -> None:  # noqa: F811
    a = namespace_cluster_factory(nodes=1)
    b = namespace_cluster_factory(nodes=1)
    assert a.prefix != b.prefix
    pa = a.add_pod(a.nodes[0], "web")
    pb = b.add_pod(b.nodes[0], "web")
    assert pa.ip == pb.ip  # same addresses, separate worlds
    assert summarize(a.probe(a.nodes[0], pa.ip, 8080)) == {"web": 1}
    assert summarize(b.probe(b.nodes[0], pb.ip, 8080)) == {"web": 1}


@kernel
def test_cleanup_stale_removes_only_dead_owners(namespace_cluster: NamespaceCluster) -> None:
    prefix = f"nfp-t{secrets.token_hex(2)}-"
    stale = prefix + "stale"
    dead = subprocess.Popen(["true"])
    dead.wait()
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        subprocess.run(
            ["ip", "-n", stale, "link", "set", "lo", "alias", f"nfp-owner:pid={dead.pid}:start=1"], check=True
        )
        sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"])
        time.sleep(0.1)
        # a live cluster (owned by this process) is left alone
        assert cleanup_stale(prefix=namespace_cluster.prefix) == []
        assert namespace_cluster.nodes[0].netns in list_netns()
        assert cleanup_stale(prefix=prefix) == [stale]
        assert stale not in list_netns()
        assert sleeper.wait(5) == -9
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def test_require_root_fails_loudly_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_mod, "_preflight_ok", False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(HarnessError, match="root"):
        cluster_mod.require_root_and_netns()
