"""What the LoadBalancer side knows of the cluster: the objects it watches, parsed, with what changed.

Fed by the same Upsert/Delete updates as the proxier (through its own queue); read by the allocator
controller and the speaker. A bad object is reported once by name and otherwise left out: one broken
pool never costs the other pools their addresses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..objects.model import ObjectRef
from ..objects.addresses import parse_ip
from ..objects.parse import SERVICE_NAME_LABEL, InvalidObject, object_ref
from .announce import AnnouncedService, NodeInfo
from .bgp_objects import (
    BFD_PROFILE_KIND,
    BGP_ADVERTISEMENT_KIND,
    PEER_KIND,
    BFDProfile,
    BGPAdvertisement,
    BGPPeer,
    parse_bfd_profile,
    parse_bgp_advertisement,
    parse_bgp_peer,
)
from .model import AddressPool, L2Advertisement
from .parse import (
    L2_KIND,
    POOL_KIND,
    handles,
    parse_l2_advertisement,
    parse_pool,
    unsupported_fields,
)

log = logging.getLogger("nftproxy.lb")


def status_addresses(obj: Mapping[str, Any]) -> tuple[str, ...]:
    """status.loadBalancer.ingress[].ip, canonical, in order (hostnames and garbage left out)."""
    status = obj.get("status")
    lb = status.get("loadBalancer") if isinstance(status, Mapping) else None
    ingress = lb.get("ingress") if isinstance(lb, Mapping) else None
    out: list[str] = []
    for item in ingress if isinstance(ingress, list) else ():
        if isinstance(item, Mapping) and isinstance(item.get("ip"), str):
            try:
                out.append(str(parse_ip(item["ip"])))
            except ValueError:
                continue
    return tuple(dict.fromkeys(out))


@dataclass
class Changes:
    """What moved since the last look: Services by name, or everything."""

    services: set[ObjectRef] = field(default_factory=set)
    everything: bool = False
    bgp: bool = False  # a BGPPeer, BGPAdvertisement or BFDProfile (only BGP mode looks again)

    def clear(self) -> None:
        self.services.clear()
        self.everything = False
        self.bgp = False


class ClusterView:
    def __init__(self, load_balancer_class: str | None = None,
                 on_invalid: Callable[[InvalidObject], None] | None = None) -> None:
        self.load_balancer_class = load_balancer_class
        self.on_invalid = on_invalid
        self.services: dict[ObjectRef, Mapping[str, Any]] = {}  # ours only (type LoadBalancer, our class)
        self.pools: dict[ObjectRef, AddressPool] = {}
        self.advertisements: dict[ObjectRef, L2Advertisement] = {}
        self.bgp_peers: dict[ObjectRef, BGPPeer] = {}
        self.bgp_advertisements: dict[ObjectRef, BGPAdvertisement] = {}
        self.bfd_profiles: dict[ObjectRef, BFDProfile] = {}
        # kind -> (where the parsed objects live, the parser)
        self._bgp: dict[str, tuple[dict[ObjectRef, Any], Callable[[Mapping[str, Any]], Any]]] = {
            PEER_KIND: (self.bgp_peers, parse_bgp_peer),
            BGP_ADVERTISEMENT_KIND: (self.bgp_advertisements, parse_bgp_advertisement),
            BFD_PROFILE_KIND: (self.bfd_profiles, parse_bfd_profile),
        }
        self.nodes: dict[str, NodeInfo] = {}
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self.ready_nodes: dict[ObjectRef, dict[ObjectRef, frozenset[str]]] = {}  # service -> slice -> nodes
        self._slice_service: dict[ObjectRef, ObjectRef] = {}  # slice -> its Service
        # Services that stopped being ours: free their addresses; the object when it still exists
        # (its type changed), so a status we wrote can be cleared
        self.released: dict[ObjectRef, Mapping[str, Any] | None] = {}
        self.changes = Changes()
        self._reported: dict[tuple[str, ObjectRef], str] = {}

    # --- feeding ----------------------------------------------------------------------------------
    def upsert(self, obj: Mapping[str, Any]) -> None:
        kind = obj.get("kind")
        if kind == "Service":
            self._upsert_service(obj)
        elif kind == "EndpointSlice":
            self._upsert_slice(obj)
        elif kind == "Node":
            self._upsert_node(obj)
        elif kind == "Namespace":
            ref = object_ref(obj)
            labels = _labels(obj)
            if self.namespace_labels.get(ref.name) != labels:
                self.namespace_labels[ref.name] = labels
                self.changes.everything = True
        elif kind == POOL_KIND:
            self._upsert_config(obj, self.pools, parse_pool)
        elif kind == L2_KIND:
            self._upsert_config(obj, self.advertisements, parse_l2_advertisement)
        elif kind in self._bgp:
            self._upsert_config(obj, *self._bgp[kind], bgp=True)
        elif isinstance(kind, str):
            self._report_unsupported(kind, obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        ref = ObjectRef(namespace or "default", name)
        if kind == "Service":
            if self.services.pop(ref, None) is not None:
                self.released[ref] = None
                self.changes.services.add(ref)
            self.ready_nodes.pop(ref, None)
        elif kind == "EndpointSlice":
            slice_ref = ObjectRef(namespace or "default", name)
            service = self._slice_service.pop(slice_ref, None)
            if service is not None and self.ready_nodes.get(service, {}).pop(slice_ref, None) is not None:
                self.changes.services.add(service)
        elif kind == "Node":
            if self.nodes.pop(name, None) is not None:
                self.changes.everything = True
        elif kind == "Namespace":
            self.namespace_labels.pop(name, None)
        elif kind == POOL_KIND:
            if self.pools.pop(ObjectRef(namespace, name), None) is not None:
                self.changes.everything = True
        elif kind == L2_KIND:
            if self.advertisements.pop(ObjectRef(namespace, name), None) is not None:
                self.changes.everything = True
        elif kind in self._bgp:
            if self._bgp[kind][0].pop(ObjectRef(namespace, name), None) is not None:
                self.changes.bgp = True

    def _upsert_service(self, obj: Mapping[str, Any]) -> None:
        ref = object_ref(obj)
        if handles(obj, self.load_balancer_class):
            self.services[ref] = obj
            self.released.pop(ref, None)
            self.changes.services.add(ref)
        elif self.services.pop(ref, None) is not None or status_addresses(obj):
            self.released[ref] = obj
            self.changes.services.add(ref)

    def _upsert_slice(self, obj: Mapping[str, Any]) -> None:
        """Only which nodes hold a ready endpoint (eTP Local): read directly, not through the full parse
        the proxier already does for every slice. A slice the proxier refuses is its to report."""
        meta = obj.get("metadata")
        labels = meta.get("labels") if isinstance(meta, Mapping) else None
        service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, Mapping) else None
        if not isinstance(service, str) or not service:
            return
        ref = object_ref(obj)
        nodes: set[str] = set()
        endpoints = obj.get("endpoints")
        for endpoint in endpoints if isinstance(endpoints, list) else ():
            if not isinstance(endpoint, Mapping):
                continue
            conditions = endpoint.get("conditions")
            ready = conditions.get("ready") if isinstance(conditions, Mapping) else None
            node = endpoint.get("nodeName")
            if ready is not False and isinstance(node, str) and node:  # nil ready means ready (API docs)
                nodes.add(node)
        owner = ObjectRef(ref.namespace, service)
        self._slice_service[ref] = owner
        slices = self.ready_nodes.setdefault(owner, {})
        if slices.get(ref) != nodes:
            slices[ref] = frozenset(nodes)
            self.changes.services.add(owner)

    def _upsert_node(self, obj: Mapping[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "")
        if not name:
            return
        address = None
        status = obj.get("status")
        addresses = status.get("addresses") if isinstance(status, Mapping) else None
        internal = [a.get("address") for a in addresses or ()
                    if isinstance(a, Mapping) and a.get("type") == "InternalIP"]
        for text in internal:
            try:
                address = str(parse_ip(text))
                break
            except ValueError:
                continue
        info = NodeInfo(name, tuple(sorted(_labels(obj).items())), address)
        if self.nodes.get(name) != info:
            self.nodes[name] = info
            self.changes.everything = True

    def _upsert_config(self, obj: Mapping[str, Any], into: dict[ObjectRef, Any],
                       parse: Callable[[Mapping[str, Any]], Any], bgp: bool = False) -> None:
        ref = object_ref(obj)
        kind = str(obj.get("kind"))
        self._report_unsupported(kind, obj)
        try:
            parsed = parse(obj)
        except InvalidObject as err:
            self._report(err)
            if into.pop(ref, None) is not None:
                self._changed(bgp)
            return
        self._reported.pop((kind, ref), None)
        if into.get(ref) != parsed:
            into[ref] = parsed
            self._changed(bgp)

    def _changed(self, bgp: bool) -> None:
        if bgp:
            self.changes.bgp = True
        else:
            self.changes.everything = True

    def _report(self, err: InvalidObject) -> None:
        key = (err.kind, err.ref)
        if self._reported.get(key) == str(err):
            return
        self._reported[key] = str(err)
        log.warning("ignoring %s", err)
        if self.on_invalid is not None:
            self.on_invalid(err)

    def _report_unsupported(self, kind: str, obj: Mapping[str, Any]) -> None:
        fields = unsupported_fields(kind, obj)
        if fields:
            ref = object_ref(obj)
            self._report(InvalidObject(kind, ref, ", ".join(fields), "not supported by nftproxy (ignored)"))

    # --- reading --------------------------------------------------------------------------------
    def pool_list(self) -> list[AddressPool]:
        """Pools by name; a name used in two namespaces counts once (the first by namespace), as pools are
        referred to by name alone."""
        by_name: dict[str, AddressPool] = {}
        for ref in sorted(self.pools, key=lambda r: (r.name, r.namespace)):
            by_name.setdefault(ref.name, self.pools[ref])
        return list(by_name.values())

    def announced(self, ref: ObjectRef) -> AnnouncedService | None:
        obj = self.services.get(ref)
        if obj is None:
            return None
        addresses = status_addresses(obj)
        if not addresses:
            return None
        spec = obj.get("spec") or {}
        local = spec.get("externalTrafficPolicy") == "Local"
        nodes = frozenset().union(*self.ready_nodes.get(ref, {}).values()) if local else frozenset()
        return AnnouncedService(ref, addresses, local, nodes)


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    if not isinstance(labels, Mapping):
        return {}
    return {str(k): str(v) for k, v in labels.items()}

