"""A full rebuild, planned in one streaming pass (pure).

A rebuild adds everything, so it needs none of the incremental diff's machinery: owners arrive in
priority order (configuration first, then older Services), the first claim of each element wins and
is sent, later claims are recorded as losers. Fragments are consumed one at a time, so the whole
desired state is never held at once, and the claims built here become the committed state as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..desired.elements import Chain, Element
from .plan import Claims, Conflict


@dataclass(slots=True)
class Rebuilt:
    add_elements: list[Element] = field(default_factory=list)
    add_chains: list[Chain] = field(default_factory=list)
    claims: Claims = field(default_factory=dict)
    chains: dict[str, tuple[Chain, int]] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)


def rebuild(owned: Iterable[tuple[str, Iterable[Element], Iterable[Chain]]]) -> Rebuilt:
    """`owned` must come in owner order (sorted owner strings): the first claim of a key wins."""
    out = Rebuilt()
    claims = out.claims
    add = out.add_elements.append
    per_set: dict[str, dict[str, str | tuple[str, ...]]] | None = None
    for owner, elements, chains in owned:
        for el in elements:
            per_set = claims.get(el.set)
            if per_set is None:
                per_set = claims[el.set] = {}
            held = per_set.get(el.key)
            if held is None:
                per_set[el.key] = owner
                add(el)
            else:
                per_set[el.key] = (held, owner) if isinstance(held, str) else (*held, owner)
                if not el.set.startswith("hairpin"):
                    winner = held if isinstance(held, str) else held[0]
                    out.conflicts.append(Conflict(owner, winner, el))
        for chain in chains:
            known = out.chains.get(chain.name)
            if known is None:
                out.chains[chain.name] = (chain, 1)
                out.add_chains.append(chain)
            else:
                out.chains[chain.name] = (known[0], known[1] + 1)
    return out
