"""The sync loop: drains updates from the sources into the proxier and syncs, at a bounded rate.

- Never programs a partial view: no sync until every source finished its first list.
- Bursts coalesce: at most one sync per min_sync_period; a full rebuild every sync_period and after
  a failed transaction (retried with capped backoff).
- Health and metrics are updated here, with the times the loop itself observed.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from ..desired.sets import FAMILIES, HAIRPIN
from ..kernel import KernelError
from ..objects.model import ObjectRef
from ..objects.parse import slice_service_ref
from .health import HealthState
from .metrics import Metrics
from .proxier import Proxier
from .syncer import SyncResult
from .updates import Delete, Resync, SourceState, Update, Upsert

log = logging.getLogger("nftproxy.loop")
TRIGGER_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


def parse_rfc3339(text: str) -> float | None:
    """RFC 3339 as the API writes it (Go's RFC3339Nano: up to 9 fractional digits) as a timestamp."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if not match:
        return None
    base, fraction, zone = match.groups()
    try:
        stamp = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone)).timestamp()
    except ValueError:
        return None
    return stamp + (float("0." + fraction) if fraction else 0.0)


class SyncLoop:
    def __init__(
        self,
        proxier: Proxier,
        updates: queue.Queue[Update],
        sources: Iterable[str],
        min_sync_period: float = 1.0,
        sync_period: float = 3600.0,
        health: HealthState | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        after_sync: Callable[[SyncResult], None] | None = None,
    ) -> None:
        self.proxier = proxier
        self.updates = updates
        self.waiting_for = set(sources)  # sources whose first list is not complete yet
        self.min_sync_period = min_sync_period
        self.sync_period = sync_period
        self.health = health
        self.metrics = metrics
        self.clock = clock
        self.wall_clock = wall_clock
        self.after_sync = after_sync  # observers of a commit (the LB speaker: which addresses are live here)
        self.last_sync_start: float | None = None
        self.last_full_sync: float | None = None
        self.retry_at: float | None = None
        self.failures = 0
        self.trigger_times: dict[ObjectRef, float] = {}
        self.sync_count = 0
        self.last_result: SyncResult | None = None

    # --- feeding ---------------------------------------------------------------------------------
    def feed(self, update: Update) -> None:
        if isinstance(update, SourceState):
            if update.listed and update.source in self.waiting_for:
                self.waiting_for.discard(update.source)
                if not self.waiting_for:
                    log.info("every initial list is complete: syncing")
            if self.metrics is not None:
                self.metrics.api_connected.labels(update.source).set(1 if update.connected else 0)
                self.metrics.api_synced.labels(update.source).set(1 if update.listed else 0)
            return
        was_pending = self.proxier.pending()
        if isinstance(update, Upsert):
            self.proxier.upsert(update.obj)
            self._note_trigger_time(update.obj)
        elif isinstance(update, Delete):
            self.proxier.delete(update.kind, update.namespace, update.name)
        elif isinstance(update, Resync):  # set here, on the loop's thread: a sync in flight cannot undo it
            self.proxier.needs_rebuild = True
        if not was_pending and self.proxier.pending():
            now = self.wall_clock()
            if self.health is not None:
                self.health.queued(now)
            if self.metrics is not None:
                self.metrics.last_queued.set(now)

    def _note_trigger_time(self, obj: Any) -> None:
        if obj.get("kind") != "EndpointSlice":
            return
        # the object is not parsed yet (the proxier refuses it by name): read it without trusting its shape
        meta = obj.get("metadata")
        annotations = meta.get("annotations") if isinstance(meta, dict) else None
        text = annotations.get(TRIGGER_ANNOTATION) if isinstance(annotations, dict) else None
        ref = slice_service_ref(obj)  # as the proxier reads it, so the sync finds this Service
        if not isinstance(text, str) or ref is None:
            return
        when = parse_rfc3339(text)
        if when is None:
            return
        self.trigger_times[ref] = min(when, self.trigger_times.get(ref, when))

    # --- syncing ---------------------------------------------------------------------------------
    def ready(self) -> bool:
        return not self.waiting_for

    def due(self, now: float) -> float | None:
        """Seconds until the next sync should run (0: now), or None if nothing is due."""
        if not self.ready():
            return None
        if self.retry_at is not None:
            return max(0.0, self.retry_at - now)
        if self.last_full_sync is not None and now - self.last_full_sync >= self.sync_period:
            self.proxier.needs_rebuild = True
        if not self.proxier.pending():
            if self.last_full_sync is None:
                return None
            return max(0.0, self.last_full_sync + self.sync_period - now)
        if self.last_sync_start is None:
            return 0.0
        return max(0.0, self.last_sync_start + self.min_sync_period - now)

    def sync_now(self) -> SyncResult | None:
        now = self.clock()
        self.last_sync_start = now
        rebuild = self.proxier.needs_rebuild
        try:
            result = self.proxier.sync()
        except KernelError as err:
            self.failures += 1
            backoff = min(30.0, max(self.min_sync_period, 0.5) * 2 ** (self.failures - 1))
            self.retry_at = now + backoff
            log.error("sync failed (%d in a row), rebuilding in %.1fs: %s", self.failures, backoff, err)
            if self.health is not None:
                # What the failed sync carried is still pending. Changes fed while a rebuild was already
                # due never call queued() (the proxier was pending already): without this, a sync that
                # keeps failing left /healthz at 200 for good.
                self.health.queued(self.wall_clock())
            if self.metrics is not None:
                self.metrics.sync_failures.inc()
            return None
        self.failures = 0
        self.retry_at = None
        if rebuild:
            self.last_full_sync = now
        self.sync_count += 1
        self.last_result = result
        wall = self.wall_clock()
        if result.operations or result.rebuild or result.services_synced:
            log.info("synced %d Service(s): %s, %d operation(s) in %.1f ms", result.services_synced,
                     "full rebuild" if result.rebuild else "diff" if result.operations else "no change",
                     result.operations, result.seconds * 1000)
        if self.health is not None:
            self.health.updated(wall)
        if self.metrics is not None:
            self._record(result, wall)
        if self.after_sync is not None:
            self.after_sync(result)
        return result

    def _record(self, result: SyncResult, wall: float) -> None:
        m = self.metrics
        assert m is not None
        m.sync_duration.observe(result.seconds)
        (m.full_sync_duration if result.rebuild else m.partial_sync_duration).observe(result.seconds)
        m.last_sync.set(wall)
        m.operations.observe(result.operations)
        for ref in result.synced_refs:
            when = self.trigger_times.pop(ref, None)
            if when is not None:
                m.network_programming.observe(max(0.0, wall - when))
        counts = self.proxier.committed.element_counts()
        for name, count in counts.items():
            m.map_elements.labels(name).set(count)
        m.services.set(len(self.proxier.committed_inputs))
        # one hairpin element per endpoint address the rules send to (see translate: hairpin)
        m.endpoints.set(sum(counts.get(HAIRPIN.name(family), 0) for family in FAMILIES))
        for kind in ("Service", "EndpointSlice"):
            m.invalid_objects.labels(kind).set(sum(1 for k, _ in self.proxier.invalid if k == kind))
        m.conflicts.set(len(result.conflicts))

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set; the rules stay in the kernel when it returns."""
        while not stop.is_set():
            wait = self.due(self.clock())
            timeout = 0.5 if wait is None else min(wait, 0.5)
            try:
                update = self.updates.get(timeout=timeout) if timeout > 0 else self.updates.get_nowait()
            except queue.Empty:
                update = None
            if update is not None:
                self.feed(update)
                while True:  # drain what is queued: a burst becomes one sync
                    try:
                        self.feed(self.updates.get_nowait())
                    except queue.Empty:
                        break
            wait = self.due(self.clock())
            if wait is not None and wait <= 0 and not stop.is_set():
                self.sync_now()
