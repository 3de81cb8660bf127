"""Health-check node ports (pure): what each eTP Local LoadBalancer Service's port must answer.

External load balancers and L2 announcers probe healthCheckNodePort on every node and send traffic
only to nodes that answer 200, i.e. nodes with ready local endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..objects.model import EndpointSlice, ObjectRef, Service


@dataclass(frozen=True, slots=True)
class HealthCheck:
    port: int
    service: ObjectRef
    local_endpoints: int


def health_check_of(svc: Service | None, slices: tuple[EndpointSlice, ...], node_name: str) -> HealthCheck | None:
    if svc is None or svc.type != "LoadBalancer" or not svc.external_traffic_local or not svc.health_check_node_port:
        return None
    local = {ep.address for sl in slices for ep in sl.endpoints
             if ep.node_name == node_name and (ep.ready or svc.publish_not_ready)}
    return HealthCheck(svc.health_check_node_port, svc.ref, len(local))
