"""The proxier callers use: the object store, the syncer and the observers of a commit, put together.

- store.py: parsed objects, deferred raw ones, invalid-object reports, which Services are dirty;
- planning.py: what a sync sends (a plan of the dirty Services' difference, or a rebuild);
- syncer.py: applies it to the kernel and records what was committed (committed.py);
- observers.py: what follows a commit (stale UDP flows, health-check ports, conflict warnings);
- memory.py: the garbage collector around a sync.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..config import ProxyConfig
from ..desired.conntrack import StaleFlows
from ..desired.healthcheck import HealthCheck
from ..diff.committed import Committed
from ..kernel import Kernel
from ..objects.model import EndpointSlice, Node, ObjectRef, Service
from ..objects.parse import InvalidObject
from .committed import CommittedState
from .observers import CommitObserver, ConflictLog, HealthCheckDiff, StaleFlowCleanup
from .planning import PendingSync
from .store import ObjectStore, ServiceInputs
from .syncer import Syncer, SyncResult

__all__ = ["PendingSync", "Proxier", "SyncResult"]


class Proxier:
    """Callers feed it objects and call `sync`; the parts it delegates to do the work."""

    def __init__(
        self,
        config: ProxyConfig,
        kernel: Kernel,
        on_invalid: Callable[[InvalidObject], None] | None = None,
        on_stale_flows: Callable[[list[StaleFlows]], object] | None = None,
        on_health_checks: Callable[[dict[ObjectRef, HealthCheck | None]], None] | None = None,
    ) -> None:
        self.config = config
        self.state = CommittedState()
        self.store = ObjectStore(config.node_name, self.state.holds, on_invalid)
        self.health = HealthCheckDiff(config.node_name, on_health_checks)
        observers: list[CommitObserver] = [ConflictLog()]
        if on_stale_flows is not None:
            observers.append(StaleFlowCleanup(config, on_stale_flows))
        observers.append(self.health)
        self.syncer = Syncer(config, kernel, self.store, self.state, observers)

    # --- object updates: parse, store, mark dirty (store.py) -------------------------------------
    def upsert(self, obj: Mapping[str, Any]) -> None:
        """Any object by its kind; kinds the proxy does not use are ignored."""
        self.store.upsert(obj)

    def defer(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """Upsert these, parsing Services and EndpointSlices only when the next rebuild reaches them."""
        self.store.defer(objects)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.store.delete(kind, namespace, name)

    def upsert_service(self, obj: Mapping[str, Any]) -> None:
        self.store.upsert_service(obj)

    def delete_service(self, ref: ObjectRef) -> None:
        self.store.delete_service(ref)

    def upsert_slice(self, obj: Mapping[str, Any]) -> None:
        self.store.upsert_slice(obj)

    def delete_slice(self, ref: ObjectRef) -> None:
        self.store.delete_slice(ref)

    def upsert_node(self, obj: Mapping[str, Any]) -> None:
        self.store.upsert_node(obj)

    # --- sync (syncer.py) --------------------------------------------------------------------------
    def pending(self) -> bool:
        return self.syncer.pending()

    def compute(self, stream: bool = False) -> PendingSync:
        """What the next sync would send, and what it then commits; the kernel is not touched."""
        return self.syncer.compute(stream)

    def sync(self) -> SyncResult:
        """Bring the kernel in step; on failure the next sync rebuilds the whole table."""
        return self.syncer.sync()

    @property
    def needs_rebuild(self) -> bool:
        return self.syncer.needs_rebuild

    @needs_rebuild.setter
    def needs_rebuild(self, value: bool) -> None:
        self.syncer.needs_rebuild = value

    @property
    def kernel(self) -> Kernel:
        return self.syncer.kernel

    # --- what callers read -------------------------------------------------------------------------
    @property
    def services(self) -> dict[ObjectRef, Service]:
        return self.store.services

    @property
    def slices(self) -> dict[ObjectRef, EndpointSlice]:
        return self.store.slices

    @property
    def slices_of(self) -> dict[ObjectRef, dict[ObjectRef, EndpointSlice]]:
        return self.store.slices_of

    @property
    def node(self) -> Node | None:
        return self.store.node

    @property
    def invalid(self) -> dict[tuple[str, ObjectRef], str]:
        return self.store.invalid

    @property
    def dirty(self) -> set[ObjectRef]:
        return self.store.dirty

    @property
    def committed(self) -> Committed:
        return self.state.claims

    @property
    def committed_inputs(self) -> dict[ObjectRef, ServiceInputs]:
        return self.state.inputs

    @property
    def committed_owners(self) -> dict[str, ObjectRef]:
        return self.state.owners

    @property
    def health_checks(self) -> dict[ObjectRef, HealthCheck]:
        return self.health.health_checks
