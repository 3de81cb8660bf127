"""The nftables objects nftproxy writes, typed, each validating and rendering itself.

Everything below the translation speaks these: the diff compares them, a transaction is a list of
(verb, object), the in-memory kernel stores them, and each object's nft text is rendered here (an
element's in exactly one place, `element_items`, which `Element.item` uses too); transaction/ only
frames them into statements or a table block. Rule bodies stay nft text (`Chain.rules`): nftproxy
never takes a rule apart. (A rebuild's table block declares the skeleton's sets again from the
skeleton's own text: rules/nftproxy.nft stays what the kernel loads.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from .skeleton import FAMILY, TABLE

TARGET = f"{FAMILY} {TABLE}"  # how every statement names the table

ELEMENTS_PER_STATEMENT = 4096  # keeps statements short without costing parse time
COMMENT_MAX_BYTES = 128  # nft refuses longer comments ("comment too long"), counted in bytes
# What a double-quoted nft string cannot carry: quotes, backslashes and control characters (a NUL is
# a syntax error that would fail the whole transaction, everyone's rules with it).
_UNQUOTABLE = {c: None for c in (*range(0x20), 0x7F, ord('"'), ord("\\"))}
_NAME = re.compile(r"^[A-Za-z][\w-]*$")
# what would end an element, a statement or a block early if a key or value held it
_BREAKS_ITEM = re.compile(r'[,{};\n"]')


class InvalidNftObject(ValueError):
    """An object nft would refuse, caught before it can fail a whole transaction."""


@lru_cache(maxsize=65536)
def quote_comment(text: str) -> str:
    """A comment nft accepts whatever a name holds: unquotable characters dropped, cut to 128 bytes on
    a character boundary (a multi-byte name cut by characters could exceed the limit)."""
    cleaned = text.translate(_UNQUOTABLE)
    if len(cleaned) > COMMENT_MAX_BYTES // 4 and len(cleaned.encode()) > COMMENT_MAX_BYTES:
        cleaned = cleaned.encode()[:COMMENT_MAX_BYTES].decode("utf-8", "ignore")
    return f'"{cleaned}"'


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise InvalidNftObject(f"{kind} name {name!r} is not an nft identifier")


class Element(NamedTuple):
    """One element of a named set or map. Key and value are nft text, so elements compare and hash
    as the kernel keys them and render without formatting (a NamedTuple: built millions of times)."""

    set: str
    key: str
    value: str | None = None
    comment: str | None = None

    @property
    def ident(self) -> tuple[str, str]:
        """What the kernel keys the element by: two owners with the same ident compete for it."""
        return (self.set, self.key)

    def item(self) -> str:
        """The element as it stands in `add element ... { <item>, ... }` and `elements = { }`."""
        return element_items((self,))

    def check(self) -> None:
        """Raise InvalidNftObject for an element whose text would break the statement it is in."""
        _check_name("set", self.set)
        if not self.key or _BREAKS_ITEM.search(self.key):
            raise InvalidNftObject(f"element key {self.key!r} of {self.set} cannot be written as nft text")
        if self.value is not None and (not self.value or _BREAKS_ITEM.search(self.value)):
            raise InvalidNftObject(
                f"element value {self.value!r} of {self.set} {self.key} cannot be written as nft text")

    @property
    def verdict_target(self) -> str | None:
        """The chain a verdict element leads to (`goto X`, `jump X`), else None."""
        if self.value is None:
            return None
        verb, _, target = self.value.partition(" ")
        return target if verb in ("goto", "jump") else None


def element_items(elements: Iterable[Element]) -> str:
    """Elements as the inside of one `{ }`, one per line: the one place an element's text is written.

    One loop rather than a method call per element: a rebuild renders every element of the table here.
    """
    parts: list[str] = []
    append = parts.append
    for _, key, value, comment in elements:
        if comment:
            quoted = quote_comment(comment)
            append(f"{key} comment {quoted} : {value}" if value is not None else f"{key} comment {quoted}")
        else:
            append(f"{key} : {value}" if value is not None else key)
    return ",\n\t".join(parts)


def key_items(elements: Iterable[Element]) -> str:
    """Only the keys, as a delete names elements."""
    return ",\n\t".join([el.key for el in elements])


@dataclass(frozen=True, slots=True)
class SetDecl:
    """A named set (`value` None) or map: its declaration, rendered inside `{ }`.

    `key` and `value` are nft type text (`ipv4_addr . inet_service`, `classid`); with `typeof` they are
    expressions instead (`ip daddr . th dport`), which nft needs for maps keyed by a numgen.
    """

    name: str
    key: str
    value: str | None = None
    typeof: bool = False
    flags: tuple[str, ...] = ()
    size: int | None = None
    comment: str | None = None

    def __post_init__(self) -> None:
        _check_name("set", self.name)

    @property
    def kind(self) -> str:
        return "set" if self.value is None else "map"

    def body(self) -> str:
        """The declaration between the braces."""
        word = "typeof" if self.typeof else "type"
        text = f"{word} {self.key}" + (f" : {self.value}" if self.value is not None else "") + " ;"
        if self.flags:
            text += f" flags {','.join(self.flags)} ;"
        if self.size is not None:
            text += f" size {self.size} ;"
        if self.comment:
            text += f" comment {quote_comment(self.comment)} ;"
        return text

    def add_statement(self) -> str:
        return f"add {self.kind} {TARGET} {self.name} {{ {self.body()} }}\n"

    def delete_statement(self) -> str:
        return f"delete {self.kind} {TARGET} {self.name}\n"

    def block(self) -> str:
        """As declared inside a `table { }` block."""
        return f"\t{self.kind} {self.name} {{ {self.body()} }}\n"


@dataclass(frozen=True, slots=True)
class Chain:
    """A regular (non-base) chain, with the maps only it uses (created before it, deleted after it) and
    the verdict elements that lead to it (added right after it, deleted right before it).

    Its content is a pure function of its name and the configuration.
    """

    name: str
    rules: tuple[str, ...]
    comment: str | None = None
    maps: tuple[SetDecl, ...] = ()
    entries: tuple[Element, ...] = ()  # e.g. its class in @classes: `4100:3 : goto lb-cluster-v4-3`

    def __post_init__(self) -> None:
        _check_name("chain", self.name)
        for rule in self.rules:
            if "\n" in rule or not rule.strip():
                raise InvalidNftObject(f"chain {self.name}: a rule must be one non-empty line, not {rule!r}")

    def add_statements(self) -> str:
        """The chain with its rules (not its maps or entries: a transaction orders those)."""
        comment = f" {{ comment {quote_comment(self.comment)} ; }}" if self.comment else ""
        head = f"add chain {TARGET} {self.name}{comment}\n"
        return head + "".join(f"add rule {TARGET} {self.name} {rule}\n" for rule in self.rules)

    def delete_statement(self) -> str:
        return f"delete chain {TARGET} {self.name}\n"

    def block(self) -> str:
        """The chain and the maps it owns, as declarations inside a `table { }` block."""
        out = [m.block() for m in self.maps]
        out.append(f"\tchain {self.name} {{\n")
        if self.comment:
            out.append(f"\t\tcomment {quote_comment(self.comment)}\n")
        out.extend(f"\t\t{rule}\n" for rule in self.rules)
        out.append("\t}\n")
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Table:
    """nftproxy's table: a rebuild adds it (so that a missing one is no error) and deletes it first."""

    family: str = FAMILY
    name: str = TABLE

    def add_statement(self) -> str:
        return f"add table {self.family} {self.name}\n"

    def delete_statement(self) -> str:
        return f"delete table {self.family} {self.name}\n"


@dataclass(frozen=True, slots=True)
class Skeleton:
    """The static part of the table (rules/*.nft, see skeleton.py), loaded as it is by every rebuild."""

    text: str


@dataclass(frozen=True, slots=True)
class Fragment:
    """Everything one owner (a Service, or the configuration) needs in the kernel."""

    elements: frozenset[Element] = frozenset()
    chains: frozenset[Chain] = frozenset()


EMPTY = Fragment()
