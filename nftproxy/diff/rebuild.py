"""A full rebuild, planned in one streaming pass (pure).

A rebuild adds everything, so it needs none of the incremental diff's machinery: owners arrive in
priority order (configuration first, then older Services), the first claim of each element wins,
later claims are recorded as losers. Each winning element is handed on in a batch of its set at once
and dropped, so the whole desired state is never held: only the claims (key -> owner), which become
the committed state as they are. Keeping the short-lived objects short-lived also lets the allocator
reuse their memory instead of leaving it fragmented.

The pass hands out each set's elements in small batches (BATCH: the objects die young, as a
rebuild creates millions), and each chain when it is first claimed, so the script can go to nft while
it is being produced (transaction/block.py): nft parses while Python translates, and the rebuild is
never held whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..desired.elements import Chain, Element
from ..desired.sets import is_shared
from .plan import Claims, Conflict

Owned = Iterable[tuple[str, Iterable[Element], Iterable[Chain]]]
Batch = tuple[str, list[Element]]  # a set's name, and winning elements of it
BATCH = 256  # elements of a set handed on at once: few enough to stay in the CPU's caches


@dataclass(slots=True)
class Rebuilt:
    element_count: int = 0
    add_chains: list[Chain] = field(default_factory=list)
    claims: Claims = field(default_factory=dict)
    chains: dict[str, tuple[Chain, int]] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)


def rebuild_pass(owned: Owned, out: Rebuilt) -> Iterator[Chain | Batch]:
    """Claim everything into `out`; yield each new chain, and (set, elements) batches of winners.

    `owned` must come in owner order (sorted owner strings): the first claim of a key wins. A set's
    last batch comes once every owner has been seen.
    """
    claims = out.claims
    batches: dict[str, list[Element]] = {}
    for owner, elements, chains in owned:
        for chain in chains:
            known = out.chains.get(chain.name)
            if known is None:
                out.chains[chain.name] = (chain, 1)
                out.add_chains.append(chain)
                yield chain
            else:
                out.chains[chain.name] = (known[0], known[1] + 1)
        for el in elements:
            set_name, key = el[0], el[1]
            per_set = claims.get(set_name)
            if per_set is None:
                per_set = claims[set_name] = {}
                batches[set_name] = []
            held = per_set.get(key)
            if held is None:
                per_set[key] = owner
                batch = batches[set_name]
                batch.append(el)
                if len(batch) == BATCH:
                    out.element_count += len(batch)
                    yield set_name, batch
                    batches[set_name] = []
            else:
                per_set[key] = (held, owner) if isinstance(held, str) else (*held, owner)
                if not is_shared(set_name):
                    winner = held if isinstance(held, str) else held[0]
                    out.conflicts.append(Conflict(owner, winner, el))
    for set_name, batch in batches.items():
        if batch:
            out.element_count += len(batch)
            yield set_name, batch


def rebuild(owned: Owned) -> tuple[Rebuilt, list[Element]]:
    """The whole rebuild at once, with every winning element (dry runs, the in-memory kernel)."""
    out = Rebuilt()
    elements: list[Element] = []
    for item in rebuild_pass(owned, out):
        if isinstance(item, tuple):  # a batch of a set's elements (else a chain)
            elements.extend(item[1])
    return out, elements
