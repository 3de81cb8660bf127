"""Brings the kernel in step with the store, one transaction a sync.

A sync plans the difference the dirty Services make (planning.py) and applies it; the first sync
and any sync after a failure rebuild the table whole. What the kernel took becomes the committed
state, and the observers are told what changed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import ProxyConfig
from ..diff.plan import Conflict
from ..kernel import Applied, Kernel, KernelError, StreamingKernel
from ..objects.model import ObjectRef
from .committed import Commit, CommittedState
from .memory import collector_paused, settle_after_rebuild
from .observers import CommitObserver
from .planning import PendingSync, commit_claims, plan_change, plan_rebuild, stream_done
from .store import ObjectStore


@dataclass(slots=True)
class SyncResult:
    rebuild: bool
    operations: int
    services_synced: int
    seconds: float
    script_bytes: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    synced_refs: list[ObjectRef] = field(default_factory=list)


class Syncer:
    def __init__(self, config: ProxyConfig, kernel: Kernel, store: ObjectStore, committed: CommittedState,
                 observers: Sequence[CommitObserver] = ()) -> None:
        self.config = config
        self.kernel = kernel
        self.store = store
        self.committed = committed
        self.observers = tuple(observers)
        self.needs_rebuild = True

    def pending(self) -> bool:
        return self.needs_rebuild or self.store.has_changes()

    def compute(self, stream: bool = False) -> PendingSync:
        """Pure with respect to the kernel: what the next sync would send, and what it then commits.

        `stream`: a rebuild comes as a script to be consumed while it is produced (`PendingSync.script`).
        """
        if self.needs_rebuild:
            return plan_rebuild(self.store, self.committed, self.config, stream)
        self.store.parse_deferred()
        return plan_change(self.store, self.committed, self.config)

    def sync(self) -> SyncResult:
        """Bring the kernel in step; on failure the next sync rebuilds the whole table."""
        started = time.monotonic()
        with collector_paused():
            result = self._sync(started)
        if result.rebuild:
            settle_after_rebuild()
        return result

    def _sync(self, started: float) -> SyncResult:
        pending = self.compute(stream=isinstance(self.kernel, StreamingKernel))
        applied = self._apply(pending)
        commit = self._commit(pending)
        for observer in self.observers:
            observer.committed(commit)
        return SyncResult(
            rebuild=pending.rebuild,
            operations=pending.transaction.operation_count(),
            services_synced=len(pending.new_inputs),
            seconds=time.monotonic() - started,
            script_bytes=applied.script_bytes,
            conflicts=list(commit.conflicts),
            synced_refs=list(pending.new_inputs),
        )

    def _apply(self, pending: PendingSync) -> Applied:
        """Send the transaction; a kernel that refused it leaves the next sync to rebuild."""
        if pending.transaction.is_empty():
            return Applied()
        try:
            if pending.script is not None:
                assert isinstance(self.kernel, StreamingKernel)  # compute(stream=True) asked it
                applied = self.kernel.apply_stream(pending.script)
                stream_done(pending)
                return applied
            return self.kernel.apply(pending.transaction)
        except KernelError:
            self.needs_rebuild = True
            raise

    def _commit(self, pending: PendingSync) -> Commit:
        """The kernel took `pending`: record it as committed, and what it changed."""
        previous, previous_zone = self.committed.previous(pending.new_inputs), self.committed.zone
        claims, conflicts = commit_claims(self.committed.claims, pending)
        self.committed.record(claims, pending.new_inputs, pending.rebuild, self.store.zone)
        self.store.dirty.clear()
        self.needs_rebuild = False
        return Commit(pending.rebuild, pending.new_inputs, previous, conflicts, self.store.zone, previous_zone)
