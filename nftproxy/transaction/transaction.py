"""A transaction: a list of (verb, object), rendered to one `nft -f` script that the kernel applies
whole or not at all.

The order of the list is the order the kernel needs: the table and skeleton of a rebuild, then new
chains (each with the maps it owns and the verdict elements leading to it), element deletes, element
adds, old chains. Consecutive element operations on one set render as one statement per
ELEMENTS_PER_STATEMENT elements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import groupby
from typing import Literal

from ..desired.elements import (
    ELEMENTS_PER_STATEMENT,
    TARGET,
    Chain,
    Element,
    SetDecl,
    Skeleton,
    Table,
    element_items,
    key_items,
)
from ..desired.skeleton import skeleton_text
from ..diff.plan import Plan
from ..diff.rebuild import Rebuilt

Verb = Literal["add", "delete"]
NftObject = Table | Skeleton | SetDecl | Chain | Element
Operation = tuple[Verb, NftObject]
TABLE = Table()


def rebuild_head() -> list[Operation]:
    """What every rebuild starts with: the table created if missing, deleted, and the skeleton loaded."""
    return [("add", TABLE), ("delete", TABLE), ("add", Skeleton(skeleton_text()))]


def _by_set(elements: Iterable[Element]) -> list[Element]:
    """Elements grouped by set, sets in name order, each set's in the order given (a stable sort)."""
    return sorted(elements, key=lambda el: el.set)


@dataclass(slots=True)
class Transaction:
    operations: list[Operation] = field(default_factory=list)
    # elements of a rebuild that went to the kernel as a stream, not held here (see transaction/block.py)
    streamed_elements: int = 0
    # a streamed rebuild's record: it counts what the stream sent, but lacks its elements, so applying or
    # rendering it would load a table without a single Service
    record_only: bool = False

    @classmethod
    def from_plan(cls, plan: Plan) -> Transaction:
        ops: list[Operation] = [("add", ch) for ch in sorted(plan.add_chains, key=lambda c: c.name)]
        ops += [("delete", el) for el in _by_set(plan.delete_elements)]
        ops += [("add", el) for el in _by_set(plan.add_elements)]
        ops += [("delete", ch) for ch in sorted(plan.delete_chains, key=lambda c: c.name)]
        return cls(ops)

    @classmethod
    def from_rebuild(cls, rebuilt: Rebuilt, elements: Iterable[Element]) -> Transaction:
        """A whole rebuild as statements (dry runs and the in-memory kernel; the agent streams one)."""
        ops = rebuild_head()
        ops += [("add", ch) for ch in sorted(rebuilt.add_chains, key=lambda c: c.name)]
        ops += [("add", el) for el in _by_set(elements)]
        return cls(ops)

    @classmethod
    def streamed(cls, rebuilt: Rebuilt) -> Transaction:
        """What a streamed rebuild sent, for counting: its head and chains, and how many elements."""
        ops = rebuild_head() + [("add", ch) for ch in rebuilt.add_chains]
        return cls(ops, rebuilt.element_count, record_only=True)

    @property
    def rebuild(self) -> bool:
        return any(isinstance(obj, Skeleton) for _, obj in self.operations[:3])

    def is_empty(self) -> bool:
        return not self.operations

    def operation_count(self) -> int:
        """Chain and element operations (a chain counts once, with its rules, maps and entries)."""
        return sum(isinstance(obj, (Chain, Element)) for _, obj in self.operations) + self.streamed_elements

    def render(self) -> str:
        if self.record_only:
            raise ValueError("a streamed rebuild's record cannot be rendered: its elements went by the stream")
        out: list[str] = []
        for (verb, kind), group in groupby(self.operations, key=lambda op: (op[0], type(op[1]))):
            if kind is Element:
                out.extend(element_statements(verb, [obj for _, obj in group if isinstance(obj, Element)]))
            else:
                out.extend(render_operation(verb, obj) for _, obj in group)
        return "".join(out)


def render_operation(verb: Verb, obj: NftObject) -> str:
    """One operation that is not an element (elements go in batches: `element_statements`)."""
    if isinstance(obj, Skeleton):
        return obj.text
    if isinstance(obj, Table):
        return obj.add_statement() if verb == "add" else obj.delete_statement()
    if isinstance(obj, SetDecl):
        return obj.add_statement() if verb == "add" else obj.delete_statement()
    if isinstance(obj, Chain):
        if verb == "add":
            return ("".join(m.add_statement() for m in obj.maps) + obj.add_statements()
                    + "".join(element_statements("add", obj.entries)))
        return ("".join(element_statements("delete", obj.entries)) + obj.delete_statement()
                + "".join(m.delete_statement() for m in obj.maps))
    raise TypeError(f"cannot render {obj!r} alone")


def element_statements(verb: Verb, elements: Iterable[Element]) -> list[str]:
    """`add element` (with values and comments) or `delete element` (keys only) statements, one per set
    and per ELEMENTS_PER_STATEMENT elements, sets in the order they come."""
    items = element_items if verb == "add" else key_items
    out: list[str] = []
    for set_name, group in groupby(elements, key=lambda el: el.set):
        batch = list(group)
        for start in range(0, len(batch), ELEMENTS_PER_STATEMENT):
            body = items(batch[start : start + ELEMENTS_PER_STATEMENT])
            out.append(f"{verb} element {TARGET} {set_name} {{\n\t{body}\n}}\n")
    return out
