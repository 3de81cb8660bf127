"""LoadBalancer allocation throughput and latency against the API stand-in.

    python -m e2e.bench.lb --services 50000 [--rate 300] [--clients 4] [--output FILE]

Three processes, so no two of them share a GIL:

- the API server stand-in (`python -m e2e.apiserver`) on loopback;
- the allocator, wired as `nftproxy run` wires its LoadBalancer half: a `LoadBalancerAgent` with its
  own watchers (Nodes, Namespaces, IPAddressPools, L2Advertisements), Service and EndpointSlice
  watchers feeding its queue (the Tee of the real agent, without the proxier), the Lease election,
  the `StatusWriter` pool and an `EventRecorder`; the ARP/NDP responder and the heartbeats are stubs
  (this node alone is live), so the speaker still decides, but nothing touches an interface;
- this driver: client threads creating `type: LoadBalancer` Services at a steady pace (an open loop:
  a slot missed is sent at once, so a slow server shows as a lower creation rate) and a separate
  client watching every Service, which notes when `status.loadBalancer.ingress` first appears.

Latency is from the return of a Service's create call to the moment that watch delivers the status
(both on this process's monotonic clock); the sustained rate is Services allocated divided by the
time from the first create to the last status seen. `--standin inprocess` runs the stand-in inside
the allocator's process instead (one GIL for both), for comparison.

By job: e2e.bench.lb.allocator (the allocator process), e2e.bench.lb.driver (the stand-in, the clients,
the observer, the figures), e2e.bench.lb.result (the figures and their report), __main__ (the command).
"""

NODE = "bench-node"
NAMESPACE = "bench-lb"
POOL_NAMESPACE = "metallb-system"
POOL_CIDR = "10.200.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"  # room for far more ClusterIPs than any run creates
