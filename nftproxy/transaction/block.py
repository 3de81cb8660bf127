"""A rebuild as one `table { ... }` block, so that a script cut short can never be committed.

`nft -f` commits whatever it has parsed when its input ends at a statement boundary. A rebuild that is
streamed to nft while it is being produced would therefore, if nftproxy died half way, commit a table
deleted and half rebuilt. Inside one table block that cannot happen: until the last `}` arrives, the
input ends inside the block and nft refuses all of it (a syntax error, nothing sent to the kernel).

Elements cannot be added with `add element` inside a table block; a set may be declared again instead,
with its elements: `map NAME { <its declaration> elements = { ... } }` (nft 1.0.6 merges the elements of
every declaration of a set in the block). So each set's declaration is taken from the skeleton, or from
the chain that owns the map. The header (`add table`, `delete table`, the opening of the block) is
written first and alone: less than PIPE_BUF, it reaches nft whole or not at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from ..desired.elements import ELEMENTS_PER_STATEMENT, Element, element_items
from ..diff.rebuild import Owned, Rebuilt, rebuild_pass

_SET_HEADER = re.compile(r"^(set|map)\s+([\w-]+)$")


class SkeletonError(ValueError):
    """The skeleton holds something that cannot go inside the rebuild's table block."""


@dataclass(frozen=True, slots=True)
class TableBlock:
    """The skeleton as the inside of one table block, and each of its sets' declarations."""

    body: str
    declarations: dict[str, str]  # set or map name -> "map NAME { <its declaration>" (left open)


def _skip(text: str, i: int) -> int:
    """Past the string or comment starting at text[i] (or i + 1 for any other character)."""
    if text[i] == '"':
        end = text.find('"', i + 1)
        return len(text) if end < 0 else end + 1
    if text[i] == "#":
        end = text.find("\n", i)
        return len(text) if end < 0 else end
    return i + 1


def _blocks(text: str, loose_ok: bool) -> Iterator[tuple[str, int, int]]:
    """Top-level `... {` blocks: (the text before the brace since the previous block, open, close).

    Strings and comments are skipped, so braces inside them do not count. `loose_ok`: statements may
    follow the last block (inside a table: `comment "..."`); else only comments may.
    """
    i, start, depth, opened = 0, 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == "{":
            if depth == 0:
                opened = i
            depth += 1
        elif c == "}":
            depth -= 1
            if depth < 0:
                raise SkeletonError(f"unbalanced '}}' at offset {i}")
            if depth == 0:
                yield text[start:opened], opened, i
                start = i + 1
        i = _skip(text, i)
    if depth:
        raise SkeletonError("unterminated block")
    if not loose_ok and _uncommented(text[start:]).strip():
        raise SkeletonError(f"statement outside a block: {_uncommented(text[start:]).strip()[:80]!r}")


def _uncommented(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        j = _skip(text, i)
        if text[i] != "#":
            out.append(text[i:j])
        i = j
    return "".join(out)


def _last_statement(text: str) -> str:
    return re.split(r"[;\n]", _uncommented(text).strip())[-1].strip()


def table_block(skeleton: str, family: str, table: str) -> TableBlock:
    """The inside of every `table FAMILY TABLE { }` block of the skeleton, and the declarations in them."""
    bodies: list[str] = []
    declarations: dict[str, str] = {}
    for before, opened, closed in _blocks(skeleton, loose_ok=False):
        header = " ".join(_uncommented(before).split())
        if header != f"table {family} {table}":
            raise SkeletonError(
                f"the skeleton may only hold `table {family} {table} {{ }}` blocks, not {header[:80]!r}")
        body = skeleton[opened + 1 : closed]
        bodies.append(body)
        for inner_before, inner_open, inner_close in _blocks(body, loose_ok=True):
            match = _SET_HEADER.match(_last_statement(inner_before))
            if match:
                kind, name = match.groups()
                # static elements in it are declared again too: harmless, nft merges duplicates
                declarations[name] = f"{kind} {name} {{ {body[inner_open + 1 : inner_close].strip()}"
    return TableBlock("\n".join(bodies), declarations)


HEADER_TEMPLATE = "add table {target}\ndelete table {target}\ntable {target} {{\n"
FOOTER = "}\n"


def elements_block(declaration: str, items: str) -> str:
    """A set's elements (rendered by element_items): the set declared again, with them."""
    return f"\t{declaration}\n\t\telements = {{\n\t{items}\n\t\t}}\n\t}}\n"


def rebuild_script(owned: Owned, out: Rebuilt, skeleton: TableBlock, target: str) -> Iterator[str]:
    """The rebuild as one table block, produced as it is planned (diff/rebuild.py).

    The first chunk is the header alone; `out` is complete once the last chunk has been taken.
    """
    declarations = dict(skeleton.declarations)
    rendered: dict[str, tuple[list[str], int]] = {}  # per set: batches rendered, not yet sent, and how many
    yield HEADER_TEMPLATE.format(target=target)
    yield skeleton.body
    for item in rebuild_pass(owned, out):
        if isinstance(item, tuple):
            set_name, elements = item
            if set_name not in declarations:
                raise KeyError(f"no declaration of set {set_name} in the skeleton or in a chain")
            parts, count = rendered.get(set_name) or ([], 0)
            parts.append(element_items(elements))
            count += len(elements)
            if count >= ELEMENTS_PER_STATEMENT:
                yield elements_block(declarations[set_name], ",\n\t".join(parts))
                parts, count = [], 0
            rendered[set_name] = (parts, count)
            continue
        declarations.update((m.name, f"{m.kind} {m.name} {{ {m.body()}") for m in item.maps)
        yield item.block()
        entries: dict[str, list[Element]] = {}  # the verdict elements that lead to it
        for el in item.entries:
            entries.setdefault(el.set, []).append(el)
        for set_name, elements in entries.items():
            yield elements_block(declarations[set_name], element_items(elements))
    for set_name, (parts, count) in rendered.items():
        if count:
            yield elements_block(declarations[set_name], ",\n\t".join(parts))
    yield FOOTER
