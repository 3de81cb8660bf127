"""Namespace-cluster test harness: a fake Kubernetes network built from netns.

Quick start::

    from e2e.netns import NamespaceCluster

    with NamespaceCluster(nodes=2) as cluster:
        web = cluster.add_pod(cluster.nodes[1], "web-1", tcp=[8080], udp=[5353])
        results = cluster.probe(cluster.nodes[0], web.ip, 8080, count=10)
        assert all(r.ok for r in results)

See :mod:`e2e.netns.cluster` for the topology, :mod:`e2e.netns.echo` for the
workload server, :mod:`e2e.netns.probe` for the client and
:mod:`e2e.netns.fixtures` for pytest fixtures.
"""

from e2e.netns.cluster import (
    Client,
    CommandError,
    Connection,
    HarnessError,
    NamespaceCluster,
    Node,
    Pod,
    ProbeResult,
    Router,
    Server,
    cleanup_stale,
    list_netns,
    require_root_and_netns,
    summarize,
)

__all__ = [
    "Client",
    "CommandError",
    "Connection",
    "HarnessError",
    "NamespaceCluster",
    "Node",
    "Pod",
    "ProbeResult",
    "Router",
    "Server",
    "cleanup_stale",
    "list_netns",
    "require_root_and_netns",
    "summarize",
]
