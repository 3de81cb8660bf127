"""Bare-metal LoadBalancer: MetalLB's address pools and L2 announcement, inside the node agent.

The flow mirrors the proxy's: objects in (`parse`), pure decisions (`allocator`: which address a
Service gets; `announce`: which node answers for it), and the shell at the edges (`controller`:
the leader-elected allocator writing Service status; `speaker`: this node's announcements through
`responder` (ARP/NDP on raw sockets), with peers' liveness from `membership` (UDP heartbeats)).
"""
