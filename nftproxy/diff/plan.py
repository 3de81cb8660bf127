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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..desired.elements import Chain, Element, Fragment

CONFIG_OWNER = ""  # sorts before every Service owner

Claim = tuple[str, str | None, str | None]  # owner, value, comment
# One claim, or several ordered by owner (winner first); a str at [0] tells the single form apart.
Entry = Claim | tuple[Claim, ...]


def service_owner(creation: str, namespace: str, name: str) -> str:
    """Owner id of a Service: older Services sort first and win conflicts; then namespace/name."""
    return f"{creation or '~'} {namespace}/{name}"


def claims_of(entry: Entry | None) -> tuple[Claim, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry[0], str) else entry  # type: ignore[return-value]


def pack(claims: list[Claim]) -> Entry | None:
    if not claims:
        return None
    if len(claims) == 1:
        return claims[0]
    return tuple(sorted(claims))


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
    entry_updates: dict[tuple[str, str], Entry | None] = field(default_factory=dict)
    chain_updates: dict[str, tuple[Chain, int] | None] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)

    def operation_count(self) -> int:
        return len(self.add_chains) + len(self.delete_elements) + len(self.add_elements) + len(self.delete_chains)


ClaimsView = Mapping[str, Mapping[str, Entry]]  # set name -> key -> entry
ChainsView = Mapping[str, tuple[Chain, int]]  # chain name -> (chain, reference count)


def plan(claims: ClaimsView, chains: ChainsView, changes: Sequence[Change]) -> Plan:
    result = Plan()
    # Gather, per element key, the claims each changed owner drops and adds.
    touched: dict[tuple[str, str], list[Claim]] = {}
    chain_delta: dict[str, tuple[Chain, int]] = {}
    for change in changes:
        if change.old is change.new:
            continue
        owner = change.owner
        for el in change.old.elements - change.new.elements:
            ident = (el.set, el.key)
            current = touched.get(ident)
            if current is None:
                current = touched[ident] = list(claims_of(claims.get(el.set, {}).get(el.key)))
            current[:] = [c for c in current if c[0] != owner]
        for el in change.new.elements - change.old.elements:
            ident = (el.set, el.key)
            current = touched.get(ident)
            if current is None:
                current = touched[ident] = list(claims_of(claims.get(el.set, {}).get(el.key)))
            current[:] = [c for c in current if c[0] != owner]
            current.append((owner, el.value, el.comment))
        for ch in change.old.chains - change.new.chains:
            prev = chain_delta.get(ch.name, (ch, 0))
            chain_delta[ch.name] = (ch, prev[1] - 1)
        for ch in change.new.chains - change.old.chains:
            prev = chain_delta.get(ch.name, (ch, 0))
            chain_delta[ch.name] = (ch, prev[1] + 1)

    for (set_name, key), now in touched.items():
        before_entry = claims.get(set_name, {}).get(key)
        before = claims_of(before_entry)
        if len(now) > 1:
            now.sort()
        after = pack(now)
        result.entry_updates[(set_name, key)] = after
        for loser in now[1:]:
            if not set_name.startswith("hairpin"):  # shared by design, not a conflict
                result.conflicts.append(Conflict(loser[0], now[0][0], Element(set_name, key, loser[1], loser[2])))
        old_win = before[0][1:] if before else None
        new_win = now[0][1:] if now else None
        if old_win == new_win:
            continue
        if old_win is not None:
            result.delete_elements.append(Element(set_name, key, *old_win))
        if new_win is not None:
            result.add_elements.append(Element(set_name, key, *new_win))

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
