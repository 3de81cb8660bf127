"""What the kernel holds: the claims it took, and the objects each Service's rules were made from.

A diff needs the old inputs of a changed Service (to compute the fragment it replaces), and an owner
id's Service (to recompute an unchanged owner's element value); a `Commit` tells the observers what
one sync changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..diff.committed import Committed
from ..diff.plan import Conflict, service_owner
from ..objects.model import ObjectRef
from .store import ServiceInputs


def owner_of(inputs: ServiceInputs) -> str:
    """The owner id of a Service's rules (its age first: the oldest wins a conflict)."""
    svc = inputs[0]
    return service_owner(svc.creation, svc.ref.namespace, svc.ref.name)


@dataclass(slots=True)
class CommittedState:
    claims: Committed = field(default_factory=Committed)
    inputs: dict[ObjectRef, ServiceInputs] = field(default_factory=dict)
    owners: dict[str, ObjectRef] = field(default_factory=dict)  # owner id -> Service, for value lookups
    zone: str | None = None  # the node's zone the committed rules read topology hints against

    def holds(self, ref: ObjectRef) -> bool:
        """Whether the kernel holds rules of this Service."""
        return ref in self.inputs

    def previous(self, refs: Iterable[ObjectRef]) -> dict[ObjectRef, ServiceInputs | None]:
        """The inputs committed for these Services (None: no rules), read before they are replaced."""
        return {ref: self.inputs.get(ref) for ref in refs}

    def record(self, claims: Committed, new_inputs: Mapping[ObjectRef, ServiceInputs | None], rebuild: bool,
               zone: str | None) -> None:
        """The kernel took a sync: these are its claims, and these Services' inputs are now committed.
        A rebuild replaces everything (its `new_inputs` name every Service that was committed).

        `zone`: the one the sync read. A zone change marks every Service that reads it dirty, so after
        any sync all committed rules were made against the same zone."""
        self.claims = claims
        self.zone = zone
        if rebuild:
            self.inputs = {}
            self.owners = {}
        for ref, inputs in new_inputs.items():
            old = self.inputs.get(ref)
            if old is not None and self.owners.get(owner_of(old)) == ref:
                del self.owners[owner_of(old)]
            if inputs is None:
                self.inputs.pop(ref, None)
            else:
                self.inputs[ref] = inputs
                self.owners[owner_of(inputs)] = ref


@dataclass(frozen=True, slots=True)
class Commit:
    """What one sync committed: the observers' input."""

    rebuild: bool
    inputs: Mapping[ObjectRef, ServiceInputs | None]  # every Service synced, as now committed
    previous: Mapping[ObjectRef, ServiceInputs | None]  # the same Services, as committed before
    conflicts: Sequence[Conflict]
    zone: str | None  # this node's zone, against which topology hints were read
    previous_zone: str | None  # the zone `previous` was committed with
