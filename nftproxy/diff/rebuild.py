"""A full rebuild, planned and rendered in one streaming pass (pure).

A rebuild adds everything, so it needs none of the incremental diff's machinery: owners arrive in
priority order (configuration first, then older Services), the first claim of each element wins,
later claims are recorded as losers. Each winning element is rendered into its set's text at once
and dropped, so the whole desired state is never held as objects: only the claims (key -> owner),
which become the committed state as they are, and the script text. Keeping the short-lived objects
short-lived also lets the allocator reuse their memory instead of leaving it fragmented.

The pass hands out each set's text every ELEMENTS_PER_STATEMENT elements, and each chain when it is
first claimed, so the script can go to nft while it is being produced (`rebuild_script`): nft parses
while Python translates, and the rebuild's text is never held whole.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..desired.elements import Chain, Element
from ..transaction.block import FOOTER, HEADER_TEMPLATE, TableBlock, chain_block, elements_block
from ..transaction.transaction import ELEMENTS_PER_STATEMENT, quote_comment, render_element
from .plan import Claims, Conflict

Owned = Iterable[tuple[str, Iterable[Element], Iterable[Chain]]]


@dataclass(slots=True)
class Rebuilt:
    element_text: dict[str, str] = field(default_factory=dict)  # set -> items, statements split every N
    element_count: int = 0
    add_chains: list[Chain] = field(default_factory=list)
    claims: Claims = field(default_factory=dict)
    chains: dict[str, tuple[Chain, int]] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)


def rebuild_pass(owned: Owned, out: Rebuilt) -> Iterator[Chain | tuple[str, str]]:  # a chain is no tuple
    """Claim and render everything into `out`; yield each new chain, and (set, items) batches.

    `owned` must come in owner order (sorted owner strings): the first claim of a key wins. Items of
    a batch are joined by ",\\n\\t"; a set's last batch comes once every owner has been seen.
    """
    claims = out.claims
    writers: dict[str, list] = {}  # set -> [StringIO, elements in it]
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
                sep = ",\n\t" if n else ""
                if comment:
                    if value is not None:
                        writer[0].write(f"{sep}{key} comment {quote_comment(comment)} : {value}")
                    else:
                        writer[0].write(f"{sep}{key} comment {quote_comment(comment)}")
                elif value is not None:
                    writer[0].write(f"{sep}{key} : {value}")
                else:
                    writer[0].write(f"{sep}{key}")
                n += 1
                if n == ELEMENTS_PER_STATEMENT:
                    out.element_count += n
                    yield set_name, writer[0].getvalue()
                    writer[0] = io.StringIO()
                    n = 0
                writer[1] = n
            else:
                per_set[key] = (held, owner) if isinstance(held, str) else (*held, owner)
                if not set_name.startswith("hairpin"):
                    winner = held if isinstance(held, str) else held[0]
                    out.conflicts.append(Conflict(owner, winner, el))
    for set_name, (text, n) in writers.items():
        if n:
            out.element_count += n
            yield set_name, text.getvalue()


def rebuild(owned: Owned, target: str) -> Rebuilt:
    """The whole rebuild at once, each set's elements as `add element` statement text (dry runs, tests)."""
    out = Rebuilt()
    batches: dict[str, list[str]] = {}
    for item in rebuild_pass(owned, out):
        if isinstance(item, tuple):  # a batch of a set's elements (else a chain)
            batches.setdefault(item[0], []).append(item[1])
    out.element_text = {name: f"\n}}\nadd element {target} {name} {{\n\t".join(parts) for name, parts in batches.items()}
    return out


def rebuild_script(owned: Owned, out: Rebuilt, skeleton: TableBlock, target: str) -> Iterator[str]:
    """The rebuild as one table block, produced as it is planned (see transaction/block.py).

    The first chunk is the header alone; `out` is complete once the last chunk has been taken.
    """
    declarations = dict(skeleton.declarations)
    yield HEADER_TEMPLATE.format(target=target)
    yield skeleton.body
    for item in rebuild_pass(owned, out):
        if not isinstance(item, tuple):  # a chain
            declarations.update((name, f"map {name} {{ {body}") for name, body in item.maps)
            yield chain_block(item)
            entries: dict[str, list[str]] = {}  # the verdict elements that lead to it, if chains carry them
            for el in getattr(item, "entries", ()):
                entries.setdefault(el.set, []).append(render_element(el, with_values=True))
            for set_name, items in entries.items():
                yield elements_block(declarations[set_name], ",\n\t".join(items))
        else:
            set_name, items = item
            if set_name not in declarations:
                raise KeyError(f"no declaration of set {set_name} in the skeleton or in a chain")
            yield elements_block(declarations[set_name], items)
    yield FOOTER
