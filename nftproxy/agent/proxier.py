"""Holds the objects the node knows, marks Services dirty as they change, and syncs them to the kernel.

A sync recomputes the fragments of dirty Services only (the old fragment from the objects last
committed, the new from the current ones), plans the difference against the committed claims and
applies it as one transaction. The first sync and any sync after a failure rebuild the table whole.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from dataclasses import dataclass, field
from typing import Any

from ..config import ProxyConfig
from ..desired.conntrack import StaleFlows, stale_udp_flows
from ..desired.elements import EMPTY, Chain, Element, Fragment
from ..desired.healthcheck import HealthCheck, health_check_of
from ..desired.skeleton import FAMILY, TABLE, skeleton_text
from ..desired.translate import config_fragment, service_elements, service_fragment
from ..diff.committed import Committed
from ..diff.plan import CONFIG_OWNER, Change, Conflict, Plan, plan, service_owner
from ..diff.rebuild import Rebuilt, rebuild, rebuild_script
from ..kernel import Applied, Kernel, KernelError, StreamingKernel
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
from ..transaction.block import TableBlock, table_block
from ..transaction.transaction import Transaction

log = logging.getLogger("nftproxy.proxier")

ServiceInputs = tuple[Service, tuple[EndpointSlice, ...]]
DeferredKey = tuple[str, ObjectRef]  # ("Service" or "EndpointSlice", namespace/name)


@cache
def _skeleton_block() -> TableBlock:
    return table_block(skeleton_text(), FAMILY, TABLE)


def _return_free_memory() -> None:
    """Give the pages a rebuild freed back to the system (glibc; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass(slots=True)
class PendingSync:
    """What a sync would send, and what it commits once the kernel accepted it."""

    transaction: Transaction
    new_inputs: dict[ObjectRef, ServiceInputs | None]
    rebuild: bool
    plan: Plan | None = None
    rebuilt: Rebuilt | None = None
    script: Iterator[str] | None = None  # a rebuild to stream: fills `rebuilt` as it is consumed


@dataclass(slots=True)
class SyncResult:
    rebuild: bool
    operations: int
    services_synced: int
    seconds: float
    script_bytes: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    synced_refs: list[ObjectRef] = field(default_factory=list)


class Proxier:
    def __init__(
        self,
        config: ProxyConfig,
        kernel: Kernel,
        on_invalid: Callable[[InvalidObject], None] | None = None,
        on_stale_flows: Callable[[list[StaleFlows]], None] | None = None,
        on_health_checks: Callable[[dict[ObjectRef, HealthCheck | None]], None] | None = None,
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.on_invalid = on_invalid
        self.on_stale_flows = on_stale_flows
        self.on_health_checks = on_health_checks
        self.health_checks: dict[ObjectRef, HealthCheck] = {}
        self.services: dict[ObjectRef, Service] = {}
        self.slices: dict[ObjectRef, EndpointSlice] = {}
        self.slices_of: dict[ObjectRef, dict[ObjectRef, EndpointSlice]] = {}
        self.node: Node | None = None
        self.invalid: dict[tuple[str, ObjectRef], str] = {}  # what we already reported, to report once
        self.committed_inputs: dict[ObjectRef, ServiceInputs] = {}
        self.committed_owners: dict[str, ObjectRef] = {}  # owner id -> Service, for value lookups
        self.committed = Committed()
        self.dirty: set[ObjectRef] = set()
        self.needs_rebuild = True
        self._reported_conflicts: set[tuple[str, str, str]] = set()
        self._deferred: dict[DeferredKey, Mapping[str, Any]] = {}  # read, to be parsed by the next rebuild

    # --- object updates: parse, store, mark dirty ------------------------------------------------
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

    def _parse_deferred(self, keys: Iterable[DeferredKey] | None = None) -> None:
        for key in list(self._deferred) if keys is None else keys:
            obj = self._deferred.pop(key, None)
            if obj is None:
                continue
            if key[0] == "Service":
                self.upsert_service(obj)
            else:
                self.upsert_slice(obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        ref = ObjectRef(namespace, name)
        self._deferred.pop((kind, ref), None)
        if kind == "Service":
            self.delete_service(ref)
        elif kind == "EndpointSlice":
            self.delete_slice(ref)
        elif kind == "Node" and self.node is not None and self.node.name == name:
            self.node = None
            self.dirty.update(ref for ref, svc in self.services.items() if svc.prefer_close)

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
        if self.services.pop(ref, None) is not None or ref in self.committed_inputs:
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
        if node.name == self.config.node_name and node != self.node:
            zone_changed = (self.node.zone if self.node else None) != node.zone
            self.node = node
            if zone_changed:  # topology hints are read against this node's zone
                self.dirty.update(ref for ref, svc in self.services.items() if svc.prefer_close)

    def _report_invalid(self, err: InvalidObject) -> None:
        key = (err.kind, err.ref)
        if self.invalid.get(key) != str(err):
            self.invalid[key] = str(err)
            log.error("ignoring invalid object: %s", err)
            if self.on_invalid is not None:
                self.on_invalid(err)

    # --- sync ---------------------------------------------------------------------------------------
    def _inputs(self, ref: ObjectRef) -> ServiceInputs | None:
        svc = self.services.get(ref)
        if svc is None:
            return None
        return svc, tuple(sorted(self.slices_of.get(ref, {}).values(), key=lambda s: s.ref.name))

    def _fragment(self, inputs: ServiceInputs | None) -> Fragment:
        if inputs is None:
            return EMPTY
        return service_fragment(inputs[0], inputs[1], self.config, self.node.zone if self.node else None)

    @staticmethod
    def _owner(inputs: ServiceInputs) -> str:
        svc = inputs[0]
        return service_owner(svc.creation, svc.ref.namespace, svc.ref.name)

    def pending(self) -> bool:
        return self.needs_rebuild or bool(self.dirty) or bool(self._deferred)

    def compute(self, stream: bool = False) -> PendingSync:
        """Pure with respect to the kernel: what the next sync would send, and what it then commits.

        `stream`: a rebuild comes as a script to be consumed while it is produced (`PendingSync.script`).
        """
        if self.needs_rebuild:
            return self._compute_rebuild(stream)
        self._parse_deferred()
        refs = set(self.dirty)
        new_inputs = {ref: self._inputs(ref) for ref in refs}
        changes: list[Change] = []
        for ref, inputs in new_inputs.items():
            old = self.committed_inputs.get(ref)
            if old == inputs:
                continue
            old_owner = self._owner(old) if old else None
            new_owner = self._owner(inputs) if inputs else None
            if old_owner == new_owner:
                changes.append(Change(old_owner or "", self._fragment(old), self._fragment(inputs)))
            else:
                if old is not None:
                    changes.append(Change(old_owner or "", self._fragment(old), EMPTY))
                if inputs is not None:
                    changes.append(Change(new_owner or "", EMPTY, self._fragment(inputs)))
        the_plan = plan(self.committed.claims, self.committed.chains, changes, self._committed_lookup())
        return PendingSync(Transaction.from_plan(the_plan), new_inputs, False, plan=the_plan)

    def _compute_rebuild(self, stream: bool) -> PendingSync:
        """Deferred objects are parsed as their Service's turn comes, so `new_inputs` is complete only
        once the rebuild has been consumed."""
        # a deferred slice that replaces a parsed one may move it to another Service: parse it now
        self._parse_deferred([key for key in self._deferred if key[0] == "EndpointSlice" and key[1] in self.slices])
        deferred_slices: dict[ObjectRef, list[DeferredKey]] = {}
        owners = {ref: service_owner(svc.creation, ref.namespace, ref.name) for ref, svc in self.services.items()}
        for key, obj in self._deferred.items():
            if key[0] == "Service":
                owners[key[1]] = service_owner(creation_timestamp(obj), key[1].namespace, key[1].name)
            else:
                deferred_slices.setdefault(slice_service_ref(obj), []).append(key)
        new_inputs: dict[ObjectRef, ServiceInputs | None] = dict.fromkeys(set(owners) | set(self.committed_inputs))
        order = sorted((owner, ref) for ref, owner in owners.items())

        def owned() -> Iterator[tuple[str, Iterable[Element], Iterable[Chain]]]:
            config = config_fragment(self.config)
            yield CONFIG_OWNER, config.elements, config.chains
            zone = self.node.zone if self.node else None
            for owner, ref in order:
                if self._deferred:
                    self._parse_deferred([("Service", ref), *deferred_slices.get(ref, ())])
                inputs = new_inputs[ref] = self._inputs(ref)
                if inputs is not None:
                    yield (owner, *service_elements(inputs[0], inputs[1], self.config, zone))
            self._parse_deferred()  # slices of no Service (yet)

        if stream:
            out = Rebuilt()
            script = rebuild_script(owned(), out, _skeleton_block(), f"{FAMILY} {TABLE}")
            return PendingSync(Transaction(rebuild=True), new_inputs, True, rebuilt=out, script=script)
        rebuilt = rebuild(owned(), f"{FAMILY} {TABLE}")
        tx = Transaction(rebuild=True, add_chains=rebuilt.add_chains, rendered_elements=rebuilt.element_text,
                         rendered_count=rebuilt.element_count)
        return PendingSync(tx, new_inputs, True, rebuilt=rebuilt)

    def _committed_lookup(self) -> Callable[[str, str, str], tuple[str | None, str | None]]:
        """An unchanged owner's value for an element, recomputed from the objects last committed."""
        by_owner = self.committed_owners
        cache: dict[str, dict[tuple[str, str], Element]] = {}

        def lookup(owner: str, set_name: str, key: str) -> tuple[str | None, str | None]:
            elements = cache.get(owner)
            if elements is None:
                ref = by_owner.get(owner)
                inputs = self.committed_inputs.get(ref) if ref is not None else None
                fragment = config_fragment(self.config) if owner == CONFIG_OWNER else self._fragment(inputs)
                elements = cache[owner] = {(el.set, el.key): el for el in fragment.elements}
            el = elements.get((set_name, key))
            return (el.value, el.comment) if el is not None else (None, None)

        return lookup

    def sync(self) -> SyncResult:
        """Bring the kernel in step; on failure the next sync rebuilds the whole table.

        The cycle collector stays off while a sync allocates (a rebuild creates millions of small
        objects, and full collections over them cost as much as the work); after a rebuild the
        long-lived state is frozen out of future collections.
        """
        started = time.monotonic()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            result = self._sync(started)
        finally:
            if gc_was_enabled:
                gc.enable()
        if result.rebuild:
            gc.freeze()  # what the rebuild keeps lives long: keep it out of future collections
            _return_free_memory()
        return result

    def _sync(self, started: float) -> SyncResult:
        pending = self.compute(stream=isinstance(self.kernel, StreamingKernel))
        tx, new_inputs, rebuild_ = pending.transaction, pending.new_inputs, pending.rebuild
        applied = Applied()
        if not tx.is_empty():
            try:
                if pending.script is not None:
                    assert isinstance(self.kernel, StreamingKernel)  # compute(stream=True) asked it
                    applied = self.kernel.apply_stream(pending.script)
                    assert pending.rebuilt is not None
                    tx.add_chains, tx.rendered_count = pending.rebuilt.add_chains, pending.rebuilt.element_count
                else:
                    applied = self.kernel.apply(tx)
            except KernelError:
                self.needs_rebuild = True
                raise
        stale: list[StaleFlows] = []
        if self.on_stale_flows is not None:
            zone = self.node.zone if self.node else None
            for ref, inputs in new_inputs.items():
                old = self.committed_inputs.get(ref)
                if old != inputs:
                    stale += stale_udp_flows(old, inputs, self.config, zone)
        if rebuild_:
            assert pending.rebuilt is not None
            self.committed = Committed(pending.rebuilt)
            self.committed_inputs = {}
            self.committed_owners = {}
            conflicts = pending.rebuilt.conflicts
        else:
            assert pending.plan is not None
            self.committed.apply(pending.plan)
            conflicts = pending.plan.conflicts
        for ref, inputs in new_inputs.items():
            old = self.committed_inputs.get(ref)
            if old is not None and self.committed_owners.get(self._owner(old)) == ref:
                del self.committed_owners[self._owner(old)]
            if inputs is None:
                self.committed_inputs.pop(ref, None)
            else:
                self.committed_inputs[ref] = inputs
                self.committed_owners[self._owner(inputs)] = ref
        self.dirty.clear()
        self.needs_rebuild = False
        self._log_conflicts(conflicts)
        if stale and self.on_stale_flows is not None:
            self.on_stale_flows(stale)
        self._update_health_checks(new_inputs, rebuild_)
        return SyncResult(
            rebuild=rebuild_,
            operations=tx.operation_count(),
            services_synced=len(new_inputs),
            seconds=time.monotonic() - started,
            script_bytes=applied.script_bytes,
            conflicts=conflicts,
            synced_refs=list(new_inputs),
        )

    def _update_health_checks(self, synced: dict[ObjectRef, ServiceInputs | None], rebuild: bool) -> None:
        changes: dict[ObjectRef, HealthCheck | None] = {}
        for ref, inputs in synced.items():
            check = health_check_of(inputs[0], inputs[1], self.config.node_name) if inputs else None
            if self.health_checks.get(ref) != check:
                changes[ref] = check
                if check is None:
                    self.health_checks.pop(ref, None)
                else:
                    self.health_checks[ref] = check
        if rebuild:
            for ref in list(self.health_checks):
                if ref not in synced:
                    changes[ref] = None
                    del self.health_checks[ref]
        if changes and self.on_health_checks is not None:
            self.on_health_checks(changes)

    def _log_conflicts(self, conflicts: list[Conflict]) -> None:
        for c in conflicts:
            key = (c.loser, c.element.set, c.element.key)
            if key in self._reported_conflicts:
                continue
            self._reported_conflicts.add(key)
            log.warning(
                "Service %s wants %s %s, already held by Service %s: ignored for it",
                c.loser.split(" ", 1)[-1], c.element.set, c.element.key, c.winner.split(" ", 1)[-1] or "configuration",
            )
