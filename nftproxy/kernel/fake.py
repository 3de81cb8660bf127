"""An in-memory kernel with nftables' semantics, for fast tests of the sync logic.

It applies transactions structurally and refuses what the kernel refuses: adding an element or chain
that exists, deleting one that does not, an element in an undeclared set, a verdict to a missing
chain, deleting a chain still referenced. It is atomic like the kernel: a refused transaction leaves
the previous state. `dump()` gives a sorted listing to compare expected rulesets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..desired.elements import Element
from ..desired.skeleton import skeleton_text
from ..transaction.transaction import Transaction, render_element
from . import Applied, KernelError

_SET_DECL = re.compile(r"^\s*(?:set|map)\s+([\w-]+)\s*\{", re.M)
_ITEM = re.compile(r'^(?P<key>.*?)(?: comment "(?P<comment>[^"]*)")?(?: : (?P<value>.*))?$')
_STATEMENT_BREAK = re.compile(r"\n\}\nadd element \S+ \S+ \S+ \{\n\t")


def parse_rendered(set_name: str, text: str) -> list[Element]:
    """The items of a rebuild's pre-rendered `add element` text, back as Elements."""
    items = _STATEMENT_BREAK.sub(",\n\t", text).split(",\n\t")
    out = []
    for item in items:
        m = _ITEM.match(item)
        assert m is not None, item
        out.append(Element(set_name, m["key"], m["value"], m["comment"]))
    return out
_CHAIN_DECL = re.compile(r"^\s*chain\s+([\w-]+)\s*\{", re.M)
_STATIC_ELEMENTS = re.compile(r"^\s*map\s+([\w-]+)\s*\{[^}]*?elements = \{([^}]*)\}", re.M)
_CLASS = re.compile(r"^[0-9a-f]+:[0-9a-f]+$")


def _static_elements(text: str) -> dict[str, dict[str, tuple[str | None, str | None]]]:
    """Elements the skeleton declares inline (`elements = { k : v, ... }`), per map."""
    found: dict[str, dict[str, tuple[str | None, str | None]]] = {}
    for name, items in _STATIC_ELEMENTS.findall(text):
        for item in items.split(","):
            key, _, value = item.strip().partition(" : ")
            found.setdefault(name, {})[key] = (value, None)
    return found


class FakeKernel:
    def __init__(self) -> None:
        self.table_exists = False
        self.sets: dict[str, dict[str, tuple[str | None, str | None]]] = {}
        self.chains: dict[str, tuple[str, ...]] = {}
        self.skeleton_chains: frozenset[str] = frozenset()
        self.skeleton_elements: frozenset[tuple[str, str]] = frozenset()
        self.transactions: list[Transaction] = []
        self.fail_next: str | None = None

    def apply(self, tx: Transaction) -> Applied:
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            raise KernelError(message)
        sets = {name: dict(elements) for name, elements in self.sets.items()}
        chains = dict(self.chains)
        if tx.rebuild:
            text = skeleton_text()
            sets = {name: {} for name in _SET_DECL.findall(text)}
            sets.update(_static_elements(text))
            chains = {name: () for name in _CHAIN_DECL.findall(text)}
            self.skeleton_chains = frozenset(chains)
            self.skeleton_elements = frozenset((n, k) for n, items in _static_elements(text).items() for k in items)
        elif not self.table_exists:
            raise KernelError("No such file or directory: table inet nftproxy does not exist")
        for chain in tx.add_chains:
            for name, _ in chain.maps:
                if name in sets:
                    raise KernelError(f"File exists: map {name}")
                sets[name] = {}
            if chain.name in chains:
                raise KernelError(f"File exists: chain {chain.name}")
            chains[chain.name] = chain.rules
            self._add(sets, chains, chain.entries)
        for el in tx.delete_elements:
            if el.key not in sets.get(el.set, {}):
                raise KernelError(f"No such file or directory: element {el.key} in {el.set}")
            del sets[el.set][el.key]
        rendered = [el for name, text in tx.rendered_elements.items() for el in parse_rendered(name, text)]
        self._add(sets, chains, [*tx.add_elements, *rendered])
        for chain in tx.delete_chains:
            name = chain.name
            if name not in chains:
                raise KernelError(f"No such file or directory: chain {name}")
            for el in chain.entries:
                if sets.get(el.set, {}).pop(el.key, None) is None:
                    raise KernelError(f"No such file or directory: element {el.key} in {el.set}")
            if any(v and v.split()[-1] == name for elements in sets.values() for v, _ in elements.values()):
                raise KernelError(f"Device or resource busy: chain {name} is referenced")
            del chains[name]
            for map_name, _ in chain.maps:
                if map_name not in sets:
                    raise KernelError(f"No such file or directory: map {map_name}")
                del sets[map_name]
        # what the packet path needs: every class a map holds leads somewhere (see skeleton.class_id)
        dispatch = {key for name in ("classes", "local-classes", "affinity-classes") for key in sets.get(name, {})}
        for set_name, elements in sets.items():
            for key, (value, _) in elements.items():
                if value and _CLASS.match(value) and value not in dispatch:
                    raise AssertionError(f"{set_name} {key} : {value}: no chain for this class")
        self.sets, self.chains, self.table_exists = sets, chains, True
        self.transactions.append(tx)
        return Applied()

    @staticmethod
    def _add(sets: dict[str, dict[str, tuple[str | None, str | None]]], chains: dict[str, tuple[str, ...]],
             elements: Iterable[Element]) -> None:
        for el in elements:
            if el.set not in sets:
                raise KernelError(f"No such file or directory: set {el.set}")
            if el.key in sets[el.set]:
                raise KernelError(f"File exists: element {el.key} in {el.set}")
            if el.value and el.value.split()[0] in ("goto", "jump") and el.value.split()[1] not in chains:
                raise KernelError(f"No such file or directory: chain {el.value.split()[1]}")
            sets[el.set][el.key] = (el.value, el.comment)

    def delete_table(self) -> None:
        self.sets, self.chains, self.table_exists = {}, {}, False

    def dump(self) -> list[str]:
        """Sorted lines: dynamic chains with their rules, and every element with its value and comment."""
        lines = [f"chain {name} {rule}" for name, rules in self.chains.items() if name not in self.skeleton_chains for rule in rules]
        lines += [f"chain {name}" for name, rules in self.chains.items() if name not in self.skeleton_chains and not rules]
        for set_name, elements in self.sets.items():
            lines += [f"element {set_name} {render_element(Element(set_name, k, v, c), True)}" for k, (v, c) in elements.items()
                      if (set_name, k) not in self.skeleton_elements]
        return sorted(lines)
