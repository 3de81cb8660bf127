"""What a sync sends: a plan of the changed Services' difference, or the whole table rebuilt.

Every call that plans a sync (translation, diff, transaction) is here: a change of those APIs changes
this module, not the syncer. (The observers call desired's conntrack and health-check functions, and
the committed state keeps diff's claims.) Nothing here touches the kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache

from ..config import ProxyConfig
from ..desired.elements import EMPTY, Chain, Element, Fragment
from ..desired.skeleton import FAMILY, TABLE, skeleton_text
from ..desired.translate import config_fragment, service_elements, service_fragment
from ..diff.committed import Committed
from ..diff.plan import CONFIG_OWNER, Change, Conflict, Plan, plan, service_owner
from ..diff.rebuild import Rebuilt, rebuild
from ..objects.model import ObjectRef
from ..transaction.block import TableBlock, rebuild_script, table_block
from ..transaction.transaction import Transaction
from .committed import CommittedState, owner_of
from .store import ObjectStore, ServiceInputs


@dataclass(slots=True)
class PendingSync:
    """What a sync would send, and what it commits once the kernel accepted it."""

    transaction: Transaction
    new_inputs: dict[ObjectRef, ServiceInputs | None]
    rebuild: bool
    plan: Plan | None = None
    rebuilt: Rebuilt | None = None
    script: Iterator[str] | None = None  # a rebuild to stream: fills `rebuilt` as it is consumed


@cache
def _skeleton_block() -> TableBlock:
    return table_block(skeleton_text(), FAMILY, TABLE)


def fragment_of(inputs: ServiceInputs | None, config: ProxyConfig, zone: str | None) -> Fragment:
    """A Service's rules (none for None)."""
    if inputs is None:
        return EMPTY
    return service_fragment(inputs[0], inputs[1], config, zone)


def plan_change(store: ObjectStore, committed: CommittedState, config: ProxyConfig) -> PendingSync:
    """The difference the dirty Services make: each one's old fragment (from the inputs last
    committed) against its new one, planned against the committed claims."""
    zone, old_zone = store.zone, committed.zone  # old rules were made against the zone they were committed with
    new_inputs = {ref: store.inputs(ref) for ref in set(store.dirty)}
    changes: list[Change] = []
    for ref, inputs in new_inputs.items():
        old = committed.inputs.get(ref)
        if old == inputs and old_zone == zone:
            continue
        old_owner = owner_of(old) if old else None
        new_owner = owner_of(inputs) if inputs else None
        if old_owner == new_owner:
            changes.append(Change(old_owner or "", fragment_of(old, config, old_zone),
                                  fragment_of(inputs, config, zone)))
        else:
            if old is not None:
                changes.append(Change(old_owner or "", fragment_of(old, config, old_zone), EMPTY))
            if inputs is not None:
                changes.append(Change(new_owner or "", EMPTY, fragment_of(inputs, config, zone)))
    the_plan = plan(committed.claims.claims, committed.claims.chains, changes,
                    _committed_lookup(committed, config, old_zone))
    return PendingSync(Transaction.from_plan(the_plan), new_inputs, False, plan=the_plan)


def _committed_lookup(committed: CommittedState, config: ProxyConfig,
                      zone: str | None) -> Callable[[str, str, str], tuple[str | None, str | None]]:
    """An unchanged owner's value for an element, recomputed from the objects last committed."""
    by_owner = committed.owners
    cached: dict[str, dict[tuple[str, str], Element]] = {}

    def lookup(owner: str, set_name: str, key: str) -> tuple[str | None, str | None]:
        elements = cached.get(owner)
        if elements is None:
            ref = by_owner.get(owner)
            inputs = committed.inputs.get(ref) if ref is not None else None
            fragment = config_fragment(config) if owner == CONFIG_OWNER else fragment_of(inputs, config, zone)
            elements = cached[owner] = {(el.set, el.key): el for el in fragment.elements}
        el = elements.get((set_name, key))
        return (el.value, el.comment) if el is not None else (None, None)

    return lookup


def plan_rebuild(store: ObjectStore, committed: CommittedState, config: ProxyConfig, stream: bool) -> PendingSync:
    """The whole table, every Service in owner order.

    Deferred objects are parsed as their Service's turn comes, so `new_inputs` is complete only once
    the rebuild has been consumed. `stream`: the rebuild comes as a script to be consumed while it
    is produced (`PendingSync.script`).
    """
    creations, deferred_slices = store.services_to_come()
    owners = {ref: service_owner(creation, ref.namespace, ref.name) for ref, creation in creations.items()}
    new_inputs: dict[ObjectRef, ServiceInputs | None] = dict.fromkeys(set(owners) | set(committed.inputs))
    order = sorted((owner, ref) for ref, owner in owners.items())

    def owned() -> Iterator[tuple[str, Iterable[Element], Iterable[Chain]]]:
        config_rules = config_fragment(config)
        yield CONFIG_OWNER, config_rules.elements, config_rules.chains
        zone = store.zone
        for owner, ref in order:
            store.parse_deferred_of(ref, deferred_slices.get(ref, ()))
            inputs = new_inputs[ref] = store.inputs(ref)
            if inputs is not None:
                yield (owner, *service_elements(inputs[0], inputs[1], config, zone))
        store.parse_deferred()  # slices of no Service (yet)

    if stream:
        out = Rebuilt()
        script = rebuild_script(owned(), out, _skeleton_block(), f"{FAMILY} {TABLE}")
        return PendingSync(Transaction.streamed(out), new_inputs, True, rebuilt=out, script=script)
    rebuilt, elements = rebuild(owned())
    return PendingSync(Transaction.from_rebuild(rebuilt, elements), new_inputs, True, rebuilt=rebuilt)


def commit_claims(claims: Committed, pending: PendingSync) -> tuple[Committed, list[Conflict]]:
    """The claims once the kernel took `pending` (a rebuild's anew, a plan applied to `claims` in
    place), and the conflicts it resolved."""
    if pending.rebuild:
        assert pending.rebuilt is not None
        return Committed(pending.rebuilt), pending.rebuilt.conflicts
    assert pending.plan is not None
    claims.apply(pending.plan)
    return claims, pending.plan.conflicts


def stream_done(pending: PendingSync) -> None:
    """A streamed rebuild was consumed: its transaction now counts what the stream sent."""
    assert pending.rebuilt is not None
    pending.transaction = Transaction.streamed(pending.rebuilt)
