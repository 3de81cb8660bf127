"""Which endpoints serve a Service port on this node, as upstream kube-proxy chooses them.

- Ready endpoints serve; when none is ready, serving-and-terminating ones do (graceful termination).
  publishNotReadyAddresses makes every endpoint count as ready.
- Topology: with trafficDistribution PreferClose (or topology-mode Auto), zone hints are used only
  when every endpoint has hints and some endpoint hints for this node's zone.
- internalTrafficPolicy Local restricts the ClusterIP to this node's endpoints; externalTrafficPolicy
  Local gives outside traffic to external frontends only this node's endpoints.
- Weights (beyond kube-proxy) repeat an endpoint in the backends map as often as its weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..objects.model import Endpoint, EndpointSlice, Service, ServicePort


class Backend(NamedTuple):
    address: str
    port: int
    weight: int
    local: bool
    ready: bool
    node_unknown: bool = False

    @property
    def value(self) -> str:
        """The backends-map value: endpoint address . port."""
        return f"{self.address} . {self.port}"


@dataclass(frozen=True, slots=True)
class Selection:
    cluster: tuple[Backend, ...]  # for ClusterIP traffic (and externalTrafficPolicy Cluster)
    all: tuple[Backend, ...]  # every usable endpoint (short-circuited pod/node traffic, eTP Cluster)
    local: tuple[Backend, ...]  # this node's endpoints, for externalTrafficPolicy Local
    any_endpoints: bool  # False: reject rather than drop


def _usable(backends: Sequence[Backend], terminating: dict[tuple[str, int], bool]) -> tuple[Backend, ...]:
    ready = [b for b in backends if b.ready]
    if ready:
        return tuple(ready)
    return tuple(b for b in backends if terminating.get((b.address, b.port)))


def select(
    svc: Service, port: ServicePort, family: int, slices: Iterable[EndpointSlice],
    node_name: str, node_zone: str | None,
) -> Selection:
    found: dict[tuple[str, int], tuple[Endpoint, int]] = {}
    plain = True  # every endpoint ready with weight 1
    for sl in slices:
        if sl.family != family:
            continue
        target = next((p.port for p in sl.ports if p.name == port.name and p.protocol == port.protocol), None)
        if target is None:
            continue
        for ep in sl.endpoints:
            key = (ep.address, target)
            if key not in found or (ep.ready and not found[key][0].ready):
                found[key] = (ep, target)
            if not ep.ready or ep.weight != 1:
                plain = False
    if plain and not svc.weights and not svc.prefer_close and not svc.internal_traffic_local:
        # the common case: every endpoint ready, equal weights, no topology
        every = tuple(Backend(a, t, 1, ep.node_name == node_name, True, ep.node_name is None)
                      for (a, t), (ep, _) in sorted(found.items()))
        return Selection(cluster=every, all=every, local=tuple(b for b in every if b.local), any_endpoints=bool(every))
    weights = dict(svc.weights)
    candidates: list[Backend] = []
    serving_terminating: dict[tuple[str, int], bool] = {}
    hints_usable = svc.prefer_close and node_zone is not None and bool(found)
    for (address, target), (ep, _) in sorted(found.items()):
        ready = ep.ready or svc.publish_not_ready
        weight = weights.get(address, weights.get(ep.target_name or "", ep.weight))
        serving_terminating[(address, target)] = ep.serving and ep.terminating
        if ep.zone_hints is None:
            hints_usable = False
        if weight <= 0:
            continue
        candidates.append(Backend(address, target, weight, ep.node_name == node_name, ready, ep.node_name is None))
    if hints_usable:
        zoned = {(a, t) for (a, t), (ep, _) in found.items() if node_zone in (ep.zone_hints or ())}
        hinted = [b for b in candidates if (b.address, b.port) in zoned]
        if any(b.ready for b in hinted):
            topology = hinted
        else:
            topology = candidates
    else:
        topology = candidates
    all_usable = _usable(candidates, serving_terminating)
    local = _usable([b for b in candidates if b.local], serving_terminating)
    cluster = local if svc.internal_traffic_local else _usable(topology, serving_terminating)
    return Selection(cluster=cluster, all=all_usable, local=local, any_endpoints=bool(all_usable))


def expand(backends: Sequence[Backend]) -> list[str]:
    """Backends-map values by index: each endpoint as many times as its weight."""
    out: list[str] = []
    for b in backends:
        value = f"{b.address} . {b.port}"
        if b.weight == 1:
            out.append(value)
        else:
            out.extend([value] * b.weight)
    return out
