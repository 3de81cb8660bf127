"""A transaction object rendered to one `nft -f` script: the kernel applies it whole or not at all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from ..desired.elements import Chain, Element
from ..desired.skeleton import FAMILY, TABLE, skeleton_text
from ..diff.plan import Plan

ELEMENTS_PER_STATEMENT = 4096  # keeps statements short without costing parse time
_BATCH = ELEMENTS_PER_STATEMENT


COMMENT_MAX_BYTES = 128  # nft refuses longer comments ("comment too long"), counted in bytes
# What a double-quoted nft string cannot carry: quotes, backslashes and control characters (a NUL is
# a syntax error that would fail the whole transaction, everyone's rules with it).
_UNQUOTABLE = {c: None for c in (*range(0x20), 0x7F, ord('"'), ord("\\"))}


@lru_cache(maxsize=65536)
def quote_comment(text: str) -> str:
    """A comment nft accepts whatever a name holds: unquotable characters dropped, cut to 128 bytes on
    a character boundary (a multi-byte name cut by characters could exceed the limit)."""
    cleaned = text.translate(_UNQUOTABLE)
    if len(cleaned) > COMMENT_MAX_BYTES // 4 and len(cleaned.encode()) > COMMENT_MAX_BYTES:
        cleaned = cleaned.encode()[:COMMENT_MAX_BYTES].decode("utf-8", "ignore")
    return f'"{cleaned}"'


@dataclass(slots=True)
class Transaction:
    """Operations in the order the kernel needs: new chains, element deletes, element adds, old chains.

    `rebuild` deletes and recreates the whole table first (from the skeleton): the first sync and any
    sync after a failure. Established connections survive it: their NAT lives in conntrack.
    """

    rebuild: bool = False
    add_chains: list[Chain] = field(default_factory=list)
    delete_elements: list[Element] = field(default_factory=list)
    add_elements: list[Element] = field(default_factory=list)
    delete_chains: list[Chain] = field(default_factory=list)
    # a rebuild's elements, already rendered per set (see diff/rebuild.py), and how many there are
    rendered_elements: dict[str, str] = field(default_factory=dict)
    rendered_count: int = 0

    @classmethod
    def from_plan(cls, plan: Plan, rebuild: bool = False) -> Transaction:
        return cls(rebuild, plan.add_chains, plan.delete_elements, plan.add_elements, plan.delete_chains)

    def is_empty(self) -> bool:
        return not (self.rebuild or self.add_chains or self.delete_elements or self.add_elements or self.delete_chains)

    def operation_count(self) -> int:
        return (len(self.add_chains) + len(self.delete_elements) + len(self.add_elements) + len(self.delete_chains)
                + self.rendered_count)

    def render(self) -> str:
        out: list[str] = []
        target = f"{FAMILY} {TABLE}"
        if self.rebuild:
            out.append(f"add table {target}\ndelete table {target}\n")
            out.append(skeleton_text())
        for chain in sorted(self.add_chains, key=lambda c: c.name):
            out.extend(f"add map {target} {name} {{ {body} }}\n" for name, body in chain.maps)
            comment = f" {{ comment {quote_comment(chain.comment)} ; }}" if chain.comment else ""
            out.append(f"add chain {target} {chain.name}{comment}\n")
            out.extend(f"add rule {target} {chain.name} {rule}\n" for rule in chain.rules)
            out.extend(_element_statements("add", target, chain.entries, with_values=True))
        out.extend(_element_statements("delete", target, self.delete_elements, with_values=False))
        out.extend(_element_statements("add", target, self.add_elements, with_values=True))
        out.extend(f"add element {target} {name} {{\n\t{text}\n}}\n" for name, text in sorted(self.rendered_elements.items()))
        for chain in sorted(self.delete_chains, key=lambda c: c.name):
            out.extend(_element_statements("delete", target, chain.entries, with_values=False))
            out.append(f"delete chain {target} {chain.name}\n")
            out.extend(f"delete map {target} {name}\n" for name, _ in chain.maps)
        return "".join(out)


def render_element(el: Element, with_values: bool) -> str:
    text = el.key
    if with_values:
        if el.comment:
            text += f" comment {quote_comment(el.comment)}"
        if el.value is not None:
            text += f" : {el.value}"
    return text


def _element_statements(verb: str, target: str, elements: Iterable[Element], with_values: bool) -> list[str]:
    by_set: dict[str, list[str]] = {}
    for set_name, key, value, comment in elements:
        items = by_set.get(set_name)
        if items is None:
            items = by_set[set_name] = []
        if not with_values:
            items.append(key)
        elif comment:
            items.append(f"{key} comment {quote_comment(comment)} : {value}" if value is not None
                         else f"{key} comment {quote_comment(comment)}")
        else:
            items.append(f"{key} : {value}" if value is not None else key)
    out: list[str] = []
    for set_name in sorted(by_set):
        items = by_set[set_name]
        for start in range(0, len(items), _BATCH):
            body = ",\n\t".join(items[start : start + _BATCH])
            out.append(f"{verb} element {target} {set_name} {{\n\t{body}\n}}\n")
    return out
