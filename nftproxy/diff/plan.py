"""Plan the kernel operations for a set of fragment changes, given what was committed.

Several owners may claim the same element (two Services with the same externalIP and port, or the
hairpin entry of an endpoint shared by two Services). The kernel holds one value per key, so each
key keeps its claims ordered by owner and the first claim wins: owners are strings that sort the
configuration first, then older Services (creationTimestamp), then namespace/name. A conflicting
Service therefore never breaks a transaction, and who wins does not depend on event order.

`plan` is pure: it reads the committed state and returns the operations plus the state updates to
make once the kernel accepted them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..desired.elements import Chain, Element, Fragment
from ..desired.sets import is_shared

CONFIG_OWNER = ""  # sorts before every Service owner

# Who claims each element: set name -> key -> owner, or owners in priority order (winner first).
# Values are not stored: they are a pure function of the owner's committed objects, recomputed
# (`ValueLookup`) on the rare occasions a conflict needs them. That keeps the committed state small.
Owners = str | tuple[str, ...]
Claims = dict[str, dict[str, Owners]]
ValueLookup = Callable[[str, str, str], tuple[str | None, str | None]]  # owner, set, key -> (value, comment)


def service_owner(creation: str, namespace: str, name: str) -> str:
    """Owner id of a Service: older Services sort first and win conflicts; then namespace/name."""
    return f"{creation or '~'} {namespace}/{name}"


def owners_of(entry: Owners | None) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else entry


def pack(owners: list[str]) -> Owners | None:
    if not owners:
        return None
    if len(owners) == 1:
        return owners[0]
    return tuple(sorted(owners))


@dataclass(frozen=True, slots=True)
class Change:
    """One owner's fragment before and after."""

    owner: str
    old: Fragment
    new: Fragment


@dataclass(frozen=True, slots=True)
class Conflict:
    """An element an owner wanted but another owner holds."""

    loser: str
    winner: str
    element: Element


@dataclass(slots=True)
class Plan:
    add_chains: list[Chain] = field(default_factory=list)
    delete_elements: list[Element] = field(default_factory=list)
    add_elements: list[Element] = field(default_factory=list)
    delete_chains: list[Chain] = field(default_factory=list)
    entry_updates: dict[tuple[str, str], Owners | None] = field(default_factory=dict)
    chain_updates: dict[str, tuple[Chain, int] | None] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)

    def operation_count(self) -> int:
        return len(self.add_chains) + len(self.delete_elements) + len(self.add_elements) + len(self.delete_chains)


ClaimsView = Mapping[str, Mapping[str, Owners]]
ChainsView = Mapping[str, tuple[Chain, int]]  # chain name -> (chain, reference count)


def plan(claims: ClaimsView, chains: ChainsView, changes: Sequence[Change], lookup: ValueLookup) -> Plan:
    """Kernel operations for the changed owners; `lookup` gives an unchanged owner's value for a key."""
    result = Plan()
    old_values: dict[tuple[str, str, str], tuple[str | None, str | None]] = {}
    new_values: dict[tuple[str, str, str], tuple[str | None, str | None]] = {}
    touched: dict[tuple[str, str], list[str]] = {}
    chain_delta: dict[str, tuple[Chain, int]] = {}

    def current(el: Element) -> list[str]:
        ident = (el.set, el.key)
        owners = touched.get(ident)
        if owners is None:
            owners = touched[ident] = list(owners_of(claims.get(el.set, {}).get(el.key)))
        return owners

    for change in changes:
        if change.old is change.new:
            continue
        owner = change.owner
        for el in change.old.elements - change.new.elements:
            old_values[(owner, el.set, el.key)] = (el.value, el.comment)
            owners = current(el)
            if owner in owners:
                owners.remove(owner)
        for el in change.new.elements - change.old.elements:
            new_values[(owner, el.set, el.key)] = (el.value, el.comment)
            owners = current(el)
            if owner not in owners:
                owners.append(owner)
        for ch in change.old.chains - change.new.chains:
            prev = chain_delta.get(ch.name, (ch, 0))
            chain_delta[ch.name] = (ch, prev[1] - 1)
        for ch in change.new.chains - change.old.chains:
            prev = chain_delta.get(ch.name, (ch, 0))
            chain_delta[ch.name] = (ch, prev[1] + 1)

    changed = {c.owner for c in changes}

    def value(owner: str, set_name: str, key: str,
              values: dict[tuple[str, str, str], tuple[str | None, str | None]]) -> tuple[str | None, str | None]:
        if is_shared(set_name):
            return (None, None)
        found = values.get((owner, set_name, key))
        if found is not None:
            return found
        return lookup(owner, set_name, key)

    for (set_name, key), now in touched.items():
        before = owners_of(claims.get(set_name, {}).get(key))
        if len(now) > 1:
            now.sort()
        result.entry_updates[(set_name, key)] = pack(now)
        shared = is_shared(set_name)  # shared by design, never a conflict, never a value
        if not shared:
            for loser in now[1:]:
                lost = Element(set_name, key, *value(loser, set_name, key, new_values))
                result.conflicts.append(Conflict(loser, now[0], lost))
        old_winner = before[0] if before else None
        new_winner = now[0] if now else None
        if old_winner is None and new_winner is None:
            continue
        old_val = (value(old_winner, set_name, key, old_values)
                   if old_winner is not None and old_winner in changed else None)
        if old_winner is not None and old_winner not in changed:
            if old_winner == new_winner:
                continue  # an unchanged owner still holds it
            old_val = (None, None) if shared else lookup(old_winner, set_name, key)
        new_val = None
        if new_winner is not None:
            if new_winner in changed:
                new_val = value(new_winner, set_name, key, new_values)
            else:
                new_val = (None, None) if shared else lookup(new_winner, set_name, key)
        if old_winner is not None and new_winner is not None and old_val == new_val:
            continue
        if old_winner is not None:
            result.delete_elements.append(Element(set_name, key, *(old_val or (None, None))))
        if new_winner is not None:
            result.add_elements.append(Element(set_name, key, *(new_val or (None, None))))

    for name, (chain, delta) in chain_delta.items():
        if delta == 0:
            continue
        before_count = chains[name][1] if name in chains else 0
        after_count = before_count + delta
        if after_count < 0:
            raise AssertionError(f"chain {name} released more often than claimed")
        result.chain_updates[name] = (chain, after_count) if after_count else None
        if before_count == 0 and after_count > 0:
            result.add_chains.append(chain)
        elif before_count > 0 and after_count == 0:
            result.delete_chains.append(chain)
    return result
