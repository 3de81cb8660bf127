"""A full rebuild, planned and rendered in one streaming pass (pure).

A rebuild adds everything, so it needs none of the incremental diff's machinery: owners arrive in
priority order (configuration first, then older Services), the first claim of each element wins,
later claims are recorded as losers. Each winning element is rendered into its map's text at once
and dropped, so the whole desired state is never held as objects: only the claims (key -> owner),
which become the committed state as they are, and the script text. Keeping the short-lived objects
short-lived also lets the allocator reuse their memory instead of leaving it fragmented.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..desired.elements import Chain, Element
from ..transaction.transaction import ELEMENTS_PER_STATEMENT, quote_comment
from .plan import Claims, Conflict


@dataclass(slots=True)
class Rebuilt:
    element_text: dict[str, str] = field(default_factory=dict)  # set -> items, statements split every N
    element_count: int = 0
    add_chains: list[Chain] = field(default_factory=list)
    claims: Claims = field(default_factory=dict)
    chains: dict[str, tuple[Chain, int]] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)


def rebuild(owned: Iterable[tuple[str, Iterable[Element], Iterable[Chain]]], target: str) -> Rebuilt:
    """`owned` must come in owner order (sorted owner strings): the first claim of a key wins."""
    out = Rebuilt()
    claims = out.claims
    writers: dict[str, list] = {}  # set -> [StringIO, count]
    for owner, elements, chains in owned:
        for el in elements:
            set_name, key, value, comment = el
            per_set = claims.get(set_name)
            if per_set is None:
                per_set = claims[set_name] = {}
                writers[set_name] = [io.StringIO(), 0]
            held = per_set.get(key)
            if held is None:
                per_set[key] = owner
                writer = writers[set_name]
                n = writer[1]
                if n:
                    sep = ",\n\t" if n % ELEMENTS_PER_STATEMENT else f"\n}}\nadd element {target} {set_name} {{\n\t"
                else:
                    sep = ""
                if comment:
                    if value is not None:
                        writer[0].write(f"{sep}{key} comment {quote_comment(comment)} : {value}")
                    else:
                        writer[0].write(f"{sep}{key} comment {quote_comment(comment)}")
                elif value is not None:
                    writer[0].write(f"{sep}{key} : {value}")
                else:
                    writer[0].write(f"{sep}{key}")
                writer[1] = n + 1
            else:
                per_set[key] = (held, owner) if isinstance(held, str) else (*held, owner)
                if not set_name.startswith("hairpin"):
                    winner = held if isinstance(held, str) else held[0]
                    out.conflicts.append(Conflict(owner, winner, el))
        for chain in chains:
            known = out.chains.get(chain.name)
            if known is None:
                out.chains[chain.name] = (chain, 1)
                out.add_chains.append(chain)
            else:
                out.chains[chain.name] = (known[0], known[1] + 1)
    out.element_text = {name: w[0].getvalue() for name, w in writers.items() if w[1]}
    out.element_count = sum(w[1] for w in writers.values())
    return out
