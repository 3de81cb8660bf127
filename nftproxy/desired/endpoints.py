"""Which endpoints serve a Service port: merged across EndpointSlices, deduplicated, in stable order."""

from __future__ import annotations

from collections.abc import Iterable

from ..objects.model import Endpoint, EndpointSlice, ServicePort

Backend = tuple[str, int]  # endpoint address, port


def usable_endpoints(port: ServicePort, family: int, slices: Iterable[EndpointSlice]) -> list[tuple[Endpoint, int]]:
    """Endpoints of one family for one Service port, matched by port name and protocol as upstream does.

    Ready endpoints are used; when none is ready, serving-and-terminating ones keep traffic flowing
    during a rollout (graceful termination), as kube-proxy does.
    """
    found: dict[Backend, tuple[Endpoint, int]] = {}
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
    ready = [v for v in found.values() if v[0].ready]
    chosen = ready or [v for v in found.values() if v[0].serving and v[0].terminating]
    chosen.sort(key=lambda v: (v[0].address, v[1]))
    return chosen
