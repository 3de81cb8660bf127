"""The objects the node knows, parsed, and which Services changed since they were last committed.

Parsing happens here, once per update, so a sync only ever sees valid objects; an object refused is
reported once per reason. Services and EndpointSlices read at a cold start may be kept raw
(deferred) and parsed only when the rebuild reaches their Service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..objects.model import EndpointSlice, Node, ObjectRef, Service
from ..objects.parse import (
    InvalidObject,
    creation_timestamp,
    object_ref,
    parse_endpoint_slice,
    parse_node,
    parse_service,
    slice_service_ref,
)

log = logging.getLogger("nftproxy.proxier")

ServiceInputs = tuple[Service, tuple[EndpointSlice, ...]]
"""What a Service's rules are made of: the Service and its slices, by slice name."""
DeferredKey = tuple[str, ObjectRef]  # ("Service" or "EndpointSlice", namespace/name)


class ObjectStore:
    """Parsed Services, EndpointSlices and this node's Node; `dirty` names the Services to sync again.

    `was_committed` says whether the kernel holds rules of a Service, so that deleting one it never
    held (refused, headless) leaves nothing to sync.
    """

    def __init__(
        self,
        node_name: str,
        was_committed: Callable[[ObjectRef], bool],
        on_invalid: Callable[[InvalidObject], None] | None = None,
    ) -> None:
        self.node_name = node_name
        self.was_committed = was_committed
        self.on_invalid = on_invalid
        self.services: dict[ObjectRef, Service] = {}
        self.slices: dict[ObjectRef, EndpointSlice] = {}
        self.slices_of: dict[ObjectRef, dict[ObjectRef, EndpointSlice]] = {}
        self.node: Node | None = None
        self.invalid: dict[tuple[str, ObjectRef], str] = {}  # what we already reported, to report once
        self.dirty: set[ObjectRef] = set()
        self._deferred: dict[DeferredKey, Mapping[str, Any]] = {}  # read, to be parsed by the next rebuild

    # --- updates ---------------------------------------------------------------------------------
    def upsert(self, obj: Mapping[str, Any]) -> None:
        """Any object by its kind; kinds the proxy does not use are ignored."""
        kind = obj.get("kind")
        if self._deferred:
            self._deferred.pop((str(kind), object_ref(obj)), None)  # this newer version wins
        if kind == "Service":
            self.upsert_service(obj)
        elif kind == "EndpointSlice":
            self.upsert_slice(obj)
        elif kind == "Node":
            self.upsert_node(obj)

    def defer(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """Upsert these, parsing Services and EndpointSlices only when the next rebuild reaches them.

        A cold start then parses while nft parses the stream it is sent, instead of before it.
        Until then the stores do not show them; a sync that is not a rebuild parses them first.
        """
        for obj in objects:
            kind = obj.get("kind")
            if kind in ("Service", "EndpointSlice"):
                self._deferred[(kind, object_ref(obj))] = obj
            else:
                self.upsert(obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        ref = ObjectRef(namespace, name)
        self._deferred.pop((kind, ref), None)
        if kind == "Service":
            self.delete_service(ref)
        elif kind == "EndpointSlice":
            self.delete_slice(ref)
        elif kind == "Node" and self.node is not None and self.node.name == name:
            self.node = None
            self._mark_zone_dependent_dirty()

    def upsert_service(self, obj: Mapping[str, Any]) -> None:
        ref = object_ref(obj)
        try:
            svc = parse_service(obj)
        except InvalidObject as err:
            self._report_invalid(err)
            svc = None
        else:
            self.invalid.pop(("Service", ref), None)
        if svc is None:
            self.delete_service(ref)
        elif self.services.get(ref) != svc:
            self.services[ref] = svc
            self.dirty.add(ref)

    def delete_service(self, ref: ObjectRef) -> None:
        if self.services.pop(ref, None) is not None or self.was_committed(ref):
            self.dirty.add(ref)

    def upsert_slice(self, obj: Mapping[str, Any]) -> None:
        ref = object_ref(obj)
        try:
            sl = parse_endpoint_slice(obj)
        except InvalidObject as err:
            self._report_invalid(err)
            sl = None
        else:
            if sl is not None and sl.skipped:
                self._report_invalid(InvalidObject(
                    "EndpointSlice", ref, ", ".join(f for f, _ in sl.skipped),
                    "; ".join(why for _, why in sl.skipped) + " (those endpoints skipped, the others used)"))
            else:
                self.invalid.pop(("EndpointSlice", ref), None)
        if sl is None:
            self.delete_slice(ref)
            return
        old = self.slices.get(ref)
        if old == sl:
            return
        if old is not None and old.service != sl.service:
            self._drop_slice(ref, old)
        self.slices[ref] = sl
        self.slices_of.setdefault(sl.service, {})[ref] = sl
        self.dirty.add(sl.service)

    def delete_slice(self, ref: ObjectRef) -> None:
        old = self.slices.pop(ref, None)
        if old is not None:
            self._drop_slice(ref, old)

    def _drop_slice(self, ref: ObjectRef, old: EndpointSlice) -> None:
        group = self.slices_of.get(old.service, {})
        group.pop(ref, None)
        if not group:
            self.slices_of.pop(old.service, None)
        self.dirty.add(old.service)

    def upsert_node(self, obj: Mapping[str, Any]) -> None:
        try:
            node = parse_node(obj)
        except InvalidObject as err:
            self._report_invalid(err)
            return
        if node.name == self.node_name and node != self.node:
            zone_changed = self.zone != node.zone
            self.node = node
            if zone_changed:
                self._mark_zone_dependent_dirty()

    def _mark_zone_dependent_dirty(self) -> None:
        """Topology hints are read against this node's zone: their Services change with it."""
        self.dirty.update(ref for ref, svc in self.services.items() if svc.prefer_close)

    def _report_invalid(self, err: InvalidObject) -> None:
        key = (err.kind, err.ref)
        if self.invalid.get(key) != str(err):
            self.invalid[key] = str(err)
            log.error("ignoring invalid object: %s", err)
            if self.on_invalid is not None:
                self.on_invalid(err)

    # --- deferred objects ------------------------------------------------------------------------
    def has_deferred(self) -> bool:
        return bool(self._deferred)

    def parse_deferred(self, keys: Iterable[DeferredKey] | None = None) -> None:
        """Parse these deferred objects (all of them by default) into the stores."""
        for key in list(self._deferred) if keys is None else keys:
            obj = self._deferred.pop(key, None)
            if obj is None:
                continue
            if key[0] == "Service":
                self.upsert_service(obj)
            else:
                self.upsert_slice(obj)

    def parse_deferred_of(self, ref: ObjectRef, slices: Iterable[DeferredKey]) -> None:
        """Parse a Service's deferred object and its deferred slices, as a rebuild reaches it."""
        if self._deferred:
            self.parse_deferred([("Service", ref), *slices])

    def services_to_come(self) -> tuple[dict[ObjectRef, str], dict[ObjectRef | None, list[DeferredKey]]]:
        """Before a rebuild: the Services there will be once the deferred objects are parsed (with the
        creationTimestamp that orders them) and the deferred slices of each (None: of no Service).

        A deferred slice that replaces a parsed one may move it to another Service: it is parsed now.
        """
        self.parse_deferred([key for key in self._deferred if key[0] == "EndpointSlice" and key[1] in self.slices])
        creations = {ref: svc.creation for ref, svc in self.services.items()}
        deferred_slices: dict[ObjectRef | None, list[DeferredKey]] = {}
        for key, obj in self._deferred.items():
            if key[0] == "Service":
                creations[key[1]] = creation_timestamp(obj)  # as parse_service has it
            else:
                deferred_slices.setdefault(slice_service_ref(obj), []).append(key)
        return creations, deferred_slices

    # --- what a sync reads -----------------------------------------------------------------------
    @property
    def zone(self) -> str | None:
        """This node's zone, against which topology hints are read."""
        return self.node.zone if self.node else None

    def has_changes(self) -> bool:
        """Whether a sync would have anything to look at besides a rebuild."""
        return bool(self.dirty) or bool(self._deferred)

    def inputs(self, ref: ObjectRef) -> ServiceInputs | None:
        """A Service's inputs now (None: it has no rules)."""
        svc = self.services.get(ref)
        if svc is None:
            return None
        return svc, tuple(sorted(self.slices_of.get(ref, {}).values(), key=lambda s: s.ref.name))
