"""The allocator's shell: while this agent holds the lease, keep every LoadBalancer Service's
status.loadBalancer.ingress in step with the allocator's decisions.

- On taking the lease it first rebuilds the allocator from the Services' status (oldest first), so a
  restart or a new leader never moves an address in use; then it allocates what is pending.
- Status goes out with the resourceVersion it was computed from (optimistic concurrency): a 409 just
  waits for the watch to bring the newer object, which is reconciled again.
- One write per decision. Status and annotation are two requests, so the watch shows each Service
  half-written first (status set, annotation not yet); that object must not send the same write again.
  While a write of some addresses is in flight, an object asking for the same addresses sends nothing
  (if it turns out to be neither the write's own result nor older than it, it is decided again when the
  write is done); after the write, its own intermediate object is recognised by resourceVersion.
- Writes run on a small pool of threads so that thousands of new Services are not serialised on
  round trips; the loop that decides never blocks on the API.
- A Service that cannot be served stays pending with a Warning Event saying why, and gets its address
  as soon as one is freed (a Service deleted, its type changed, or a pool grown).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from ..objects.model import ObjectRef
from ..objects.parse import InvalidObject
from .allocator import Allocator, Assigned, Refused
from .parse import ALLOCATED_FROM_ANNOTATION, parse_request
from .view import ClusterView, status_addresses

log = logging.getLogger("nftproxy.lb.allocator")
MERGE_PATCH = "application/merge-patch+json"


class EventSink(Protocol):
    def record(self, kind: str, ref: ObjectRef, reason: str, message: str, type_: str = "Warning",
               api_version: str | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class StatusWrite:
    ref: ObjectRef
    resource_version: str
    ips: tuple[str, ...]
    pool: str | None  # the annotation's value; None removes it
    annotate: bool  # whether the annotation differs from what the object carries


@dataclass(frozen=True, slots=True)
class WriteDone:
    """A status write finished: `retry` after a failure that is not a conflict."""

    ref: ObjectRef
    write: StatusWrite
    retry: bool
    produced: tuple[str, ...] = ()  # resourceVersions the write's requests left the Service at


class StatusWriter:
    """Patches Services' status (and the pool annotation) on worker threads; reports back through `done`."""

    def __init__(self, core_api: Any, done: Callable[[WriteDone], None], workers: int = 8) -> None:
        self.core_api = core_api
        self.done = done
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lb-status")

    def submit(self, write: StatusWrite) -> None:
        self.pool.submit(self._write, write)

    def _write(self, write: StatusWrite) -> None:
        ref = write.ref
        ingress = [{"ip": ip, "ipMode": "VIP"} for ip in write.ips]
        body = {"metadata": {"resourceVersion": write.resource_version},
                "status": {"loadBalancer": {"ingress": ingress or None}}}  # None: merge-patch removes it
        retry = False
        produced: list[str] = []
        try:
            resp = self.core_api.patch_namespaced_service_status(ref.name, ref.namespace, body,
                                                                 _content_type=MERGE_PATCH, _preload_content=False)
            produced.append(_resource_version(resp.data))
            if write.annotate:
                meta = {"metadata": {"annotations": {ALLOCATED_FROM_ANNOTATION: write.pool}}}
                resp = self.core_api.patch_namespaced_service(ref.name, ref.namespace, meta,
                                                              _content_type=MERGE_PATCH, _preload_content=False)
                produced.append(_resource_version(resp.data))
        except ApiException as err:
            if err.status not in (404, 409):
                log.warning("could not write the status of Service %s: HTTP %s %s", ref, err.status, err.reason)
                retry = True
        except Exception as err:  # noqa: BLE001 - the API unreachable: retried by the loop
            log.warning("could not write the status of Service %s: %s", ref, err)
            retry = True
        self.done(WriteDone(ref, write, retry, tuple(produced)))

    def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class AllocatorController:
    USAGE_INTERVAL = 1.0  # seconds between pool usage reports (counting costs a walk over every address)

    def __init__(self, view: ClusterView, writer: StatusWriter | None, events: EventSink | None = None,
                 on_usage: Callable[[dict[str, tuple[int, int]]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.writer = writer
        self.events = events
        self.on_usage = on_usage
        self.clock = clock
        self._usage_due = False
        self._usage_at = float("-inf")
        self.allocator: Allocator | None = None
        self.pending: dict[ObjectRef, str] = {}  # refused Services -> why (the last Event said so)
        self.foreign: set[ObjectRef] = set()  # Services whose status another controller writes
        self.inflight: dict[ObjectRef, StatusWrite] = {}
        self.skipped: dict[ObjectRef, str] = {}  # resourceVersion of an object not written for: same write in flight
        self.landed: dict[ObjectRef, tuple[tuple[str, ...], str | None, tuple[str, ...]]] = {}  # see _write
        self.decided: dict[ObjectRef, tuple[tuple[Any, ...], Assigned]] = {}  # see _decide
        self._pools_seen: list[Any] = []
        self.writes = 0

    @property
    def leading(self) -> bool:
        return self.allocator is not None

    # --- leadership -----------------------------------------------------------------------------
    def start_leading(self) -> None:
        """Rebuild from the Services' status, oldest first, then allocate everything else."""
        pools = self.view.pool_list()
        self.allocator = Allocator(pools)
        self._pools_seen = pools
        self.pending.clear()
        self.decided.clear()
        order = sorted(self.view.services, key=self._age)
        fresh = []
        for ref in order:
            ips = status_addresses(self.view.services[ref])
            if ips:
                self._decide(ref, restore=ips)
            else:
                fresh.append(ref)
        for ref in fresh:
            self._decide(ref)
        for ref, obj in list(self.view.released.items()):
            self._release(ref, obj)
        self.view.released.clear()
        self._report_usage()
        log.info("allocator active: %d LoadBalancer Service(s), %d pending", len(order), len(self.pending))
        if not pools:
            log.info("no IPAddressPool (metallb.io/v1beta1) yet: LoadBalancer Services are left to other "
                     "controllers until one appears")

    def stop_leading(self) -> None:
        self.allocator = None
        self.pending.clear()
        self.skipped.clear()
        self.landed.clear()
        self.decided.clear()

    # --- reconciling ----------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Act on what the view says changed; cheap when nothing did."""
        changes = self.view.changes
        if self.allocator is None:
            self.view.released.clear()
            return
        freed = bool(self.view.released)
        for ref, obj in list(self.view.released.items()):
            self._release(ref, obj)
        self.view.released.clear()
        pools = self.view.pool_list()
        if changes.everything or pools != self._pools_seen:
            self.decided.clear()  # pools or namespaces changed: every decision is made afresh
        if pools != self._pools_seen:
            moved = self.allocator.set_pools(pools)
            self._pools_seen = pools
            for ref in moved:
                log.info("Service %s: its address left every pool: allocating anew", ref)
                self.allocator.release(ref)
            freed = True
        refs = set(self.view.services) if changes.everything else {
            r for r in changes.services if r in self.view.services}
        for ref in sorted(refs, key=self._age):
            self._decide(ref)
        if freed or changes.everything:
            for ref in sorted(self.pending, key=self._age):
                if ref in self.view.services and ref not in refs:
                    self._decide(ref)
        if refs or freed:
            self._usage_due = True
        if self._usage_due and self.clock() - self._usage_at >= self.USAGE_INTERVAL:
            self._report_usage()

    def write_done(self, done: WriteDone) -> bool:
        """Forget a finished write; True when the Service should be tried again later."""
        if self.inflight.get(done.ref) == done.write:
            del self.inflight[done.ref]
            skipped = self.skipped.pop(done.ref, None)
            obj = self.view.services.get(done.ref)
            if len(done.produced) > 1 and obj is not None and _rv(obj) != done.produced[-1]:
                # the watch has not shown the last request's result yet: the objects the earlier
                # requests left behind are this write's own, and need no write of their own
                self.landed[done.ref] = (done.write.ips, done.write.pool, done.produced[:-1])
            if (skipped is not None and skipped not in done.produced and self.allocator is not None
                    and obj is not None and _rv(obj) == skipped):
                self._decide(done.ref)  # an object the write neither made nor superseded: look at it now
        return done.retry and self.allocator is not None and done.ref in self.view.services

    def retry(self, ref: ObjectRef) -> None:
        if self.allocator is not None and ref in self.view.services:
            self._decide(ref)

    def _age(self, ref: ObjectRef) -> tuple[str, str, str]:
        obj = self.view.services.get(ref) or {}
        return (str((obj.get("metadata") or {}).get("creationTimestamp") or ""), ref.namespace, ref.name)

    def _foreign(self, obj: Mapping[str, Any], status: tuple[str, ...]) -> bool:
        assert self.allocator is not None
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if ALLOCATED_FROM_ANNOTATION in annotations:
            return False  # ours, or MetalLB's before a migration
        return not any(pool.contains(ip) for ip in status for pool in self.allocator.pools.values())

    def _release(self, ref: ObjectRef, obj: Mapping[str, Any] | None) -> None:
        assert self.allocator is not None
        self.allocator.release(ref)
        self.pending.pop(ref, None)
        self.skipped.pop(ref, None)
        self.landed.pop(ref, None)
        self.decided.pop(ref, None)
        if obj is not None and (obj.get("spec") or {}).get("type") != "LoadBalancer" and status_addresses(obj) \
                and not self._foreign(obj, status_addresses(obj)):
            self._write(ref, obj, (), None)

    def _decide(self, ref: ObjectRef, restore: tuple[str, ...] = ()) -> None:
        assert self.allocator is not None
        obj = self.view.services[ref]
        status = status_addresses(obj)
        if not self.allocator.pools:
            return  # no IPAddressPool at all: LoadBalancers are left to whoever serves them (a cloud)
        if status and self._foreign(obj, status):
            # Addresses in none of our pools and no sign that we wrote them: another controller (a cloud
            # controller, a test acting as one) manages this Service. Its status is not ours to clear.
            if ref not in self.foreign:
                self.foreign.add(ref)
                log.info("Service %s: status %s was set by another controller and is in no IPAddressPool: "
                         "left alone", ref, ", ".join(status))
            self.pending.pop(ref, None)
            return
        self.foreign.discard(ref)
        # Most events of a Service change nothing the decision reads (our own status and annotation
        # writes come back through the watch): then the answer is the one the allocator holds.
        inputs = _request_inputs(obj)
        memo = self.decided.pop(ref, None)
        if not restore and memo is not None and memo[0] == inputs and self.allocator.assigned(ref) == memo[1]:
            outcome: Assigned | Refused = memo[1]
        else:
            try:
                request = parse_request(obj)
            except InvalidObject as err:
                self._refuse(ref, f"{err.field}: {err.message}", "InvalidLoadBalancerRequest")
                return
            ns_labels = self.view.namespace_labels.get(ref.namespace, {})
            outcome = (self.allocator.restore(request, restore, ns_labels) if restore
                       else self.allocator.allocate(request, ns_labels))
        if isinstance(outcome, Refused):
            self._refuse(ref, outcome.reason, "AllocationFailed")
            if status and not restore:
                self._write(ref, obj, (), None, status)  # it held an address it may no longer have
            return
        assert isinstance(outcome, Assigned)
        self.decided[ref] = (inputs, outcome)
        was_pending = self.pending.pop(ref, None) is not None
        if status != outcome.ips:
            if self.events is not None and (was_pending or not status):
                self.events.record("Service", ref, "IPAllocated",
                                   f"Assigned IP {list(outcome.ips)} from pool {outcome.pool!r}", "Normal")
            log.info("Service %s: assigned %s from pool %s", ref, ", ".join(outcome.ips), outcome.pool)
        self._write(ref, obj, outcome.ips, outcome.pool, status)

    def _refuse(self, ref: ObjectRef, why: str, reason: str) -> None:
        if self.pending.get(ref) == why:
            return
        self.pending[ref] = why
        log.warning("Service %s stays pending: %s", ref, why)
        if self.events is not None:
            self.events.record("Service", ref, reason, why)

    def _write(self, ref: ObjectRef, obj: Mapping[str, Any], ips: tuple[str, ...], pool: str | None,
               status: tuple[str, ...] | None = None) -> None:
        if status is None:
            status = status_addresses(obj)
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        annotate = annotations.get(ALLOCATED_FROM_ANNOTATION) != pool and (pool is not None or
                                                                         ALLOCATED_FROM_ANNOTATION in annotations)
        rv = _rv(obj)
        landed = self.landed.pop(ref, None)
        if status == ips and not annotate:
            self.inflight.pop(ref, None)
            self.skipped.pop(ref, None)
            return
        if landed is not None and (ips, pool) == landed[:2] and rv in landed[2]:
            self.landed[ref] = landed  # the first half of a write that is done: its second half is on its way
            return
        write = StatusWrite(ref, rv, ips, pool, annotate)
        current = self.inflight.get(ref)
        if current is not None and (current.ips, current.pool) == (ips, pool):
            if current != write:
                self.skipped[ref] = rv  # decided again when `current` is done, unless it made this object
            return
        if self.writer is None:
            return
        self.skipped.pop(ref, None)
        self.inflight[ref] = write
        self.writes += 1
        self.writer.submit(write)

    def _report_usage(self) -> None:
        """Report now; `reconcile` reports what changed since at most USAGE_INTERVAL later."""
        self._usage_due = False
        self._usage_at = self.clock()
        if self.on_usage is not None and self.allocator is not None:
            self.on_usage(self.allocator.pool_usage())


def _request_inputs(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    """What `parse_request` reads of a Service (the pool annotation we write aside), for comparing."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if ALLOCATED_FROM_ANNOTATION in annotations:
        annotations = {k: v for k, v in annotations.items() if k != ALLOCATED_FROM_ANNOTATION}
    return obj.get("spec"), meta.get("labels"), annotations


def _rv(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _resource_version(data: bytes) -> str:
    """metadata.resourceVersion of a response body ("" when it has none)."""
    try:
        return str((json.loads(data).get("metadata") or {}).get("resourceVersion") or "")
    except (ValueError, AttributeError):
        return ""
