"""Prometheus metrics, with kube-proxy's names where they mean the same.

prometheus-client is the well-kept implementation of the exposition format (and brings the process
collector, so RSS and CPU come for free); writing our own would only add bugs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.sync_duration = Histogram("kubeproxy_sync_proxy_rules_duration_seconds",
                                       "SyncProxyRules latency in seconds", buckets=_LATENCY_BUCKETS, registry=r)
        self.full_sync_duration = Histogram("kubeproxy_sync_full_proxy_rules_duration_seconds",
                                            "Latency of full syncs (table rebuilt) in seconds",
                                            buckets=_LATENCY_BUCKETS, registry=r)
        self.partial_sync_duration = Histogram("kubeproxy_sync_partial_proxy_rules_duration_seconds",
                                               "Latency of partial syncs (diffs) in seconds",
                                               buckets=_LATENCY_BUCKETS, registry=r)
        self.last_sync = Gauge("kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                               "The last time proxy rules were successfully synced", registry=r)
        self.last_queued = Gauge("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                                 "The last time a sync of proxy rules was queued", registry=r)
        self.sync_failures = Counter("kubeproxy_sync_proxy_rules_nftables_sync_failures",
                                     "Transactions the kernel refused", registry=r)
        self.network_programming = Histogram("kubeproxy_network_programming_duration_seconds",
                                             "From an object's last change to the kernel commit, in seconds",
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.operations = Histogram("nftproxy_sync_operations", "nftables operations per transaction",
                                    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 1000, 10000, 100000, 1000000), registry=r)
        self.services = Gauge("nftproxy_services_programmed", "Services with rules in the kernel", registry=r)
        self.endpoints = Gauge("nftproxy_endpoints_programmed", "Endpoint addresses the rules send traffic to",
                               registry=r)
        self.map_elements = Gauge("nftproxy_map_elements", "Elements in each nftables set or map", ["map"], registry=r)
        self.invalid_objects = Gauge("nftproxy_objects_invalid", "Objects currently refused as invalid", ["kind"],
                                     registry=r)
        self.invalid_total = Counter("nftproxy_objects_rejected", "Times an object was refused as invalid", ["kind"],
                                     registry=r)
        self.api_connected = Gauge("nftproxy_api_connected", "1 while the watch of a resource is connected",
                                   ["resource"], registry=r)
        self.api_synced = Gauge("nftproxy_api_initial_list_done", "1 once a resource's first list completed",
                                ["resource"], registry=r)
        self.conflicts = Gauge("nftproxy_conflicting_elements", "Elements wanted by a Service but held by another",
                               registry=r)

        # bare-metal LoadBalancer (pools and L2 announcement)
        self.lb_leader = Gauge("nftproxy_lb_allocator_leader", "1 while this agent holds the allocator lease",
                               registry=r)
        self.lb_pool_addresses = Gauge("nftproxy_lb_pool_addresses", "Addresses of an IPAddressPool",
                                       ["pool", "state"], registry=r)
        self.lb_announced = Gauge("nftproxy_lb_announced", "1 for each address this node answers ARP/NDP for",
                                  ["ip", "interface"], registry=r)
        self.lb_peers = Gauge("nftproxy_lb_eligible_nodes", "Nodes the heartbeat membership counts as eligible",
                              registry=r)
        self.lb_conflicts = Counter("nftproxy_lb_announcement_conflicts",
                                    "Times another host answered for an address this node announces", registry=r)
        # BGP mode (one series per BGPPeer session of this node)
        self.lb_bgp_session_up = Gauge("nftproxy_lb_bgp_session_up", "1 while the BGP session is established",
                                       ["peer", "address"], registry=r)
        self.lb_bgp_session_state = Gauge("nftproxy_lb_bgp_session_state",
                                          "1 for the BGP session's current state (Established, Active, Connect, ...)",
                                          ["peer", "address", "state"], registry=r)
        self.lb_bgp_prefixes = Gauge("nftproxy_lb_bgp_prefixes_advertised",
                                     "Prefixes the BGP speaker advertises on the session", ["peer", "address"],
                                     registry=r)
        self.lb_bgp_advertised = Gauge("nftproxy_lb_bgp_advertised", "1 for each address advertised to a BGP peer",
                                       ["ip", "peer"], registry=r)
        self.lb_bgp_speaker_restarts = Counter("nftproxy_lb_bgp_speaker_restarts",
                                               "Times the BGP speaker (BIRD) died and was started again", registry=r)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
