"""An in-memory kernel with nftables' semantics, for fast tests of the sync logic.

It stores the typed objects a transaction carries and applies the operations in order, refusing what
the kernel refuses: adding an element or chain that exists, deleting one that does not, an element in
an undeclared set or that nft could not parse, a verdict to a missing chain, deleting a chain still
referenced. It is atomic like the kernel: a refused transaction leaves the previous state. `dump()`
gives a sorted listing to compare expected rulesets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..desired.elements import Chain, Element, InvalidNftObject, SetDecl, Skeleton, Table
from ..desired.sets import AFFINITY_CLASSES, CLASSES, LOCAL_CLASSES
from ..desired.skeleton import FAMILY, TABLE
from ..transaction.block import table_block
from ..transaction.transaction import NftObject, Transaction, Verb
from . import Applied, KernelError

_CHAIN_DECL = re.compile(r"^\s*chain\s+([\w-]+)\s*\{", re.M)
_STATIC_ELEMENTS = re.compile(r"^\s*map\s+([\w-]+)\s*\{[^}]*?elements = \{([^}]*)\}", re.M)
_CLASS = re.compile(r"^[0-9a-f]+:[0-9a-f]+$")
_DISPATCH = (CLASSES.name, LOCAL_CLASSES.name, AFFINITY_CLASSES.name)


def _static_elements(text: str) -> list[Element]:
    """Elements the skeleton declares inline (`elements = { k : v, ... }`)."""
    found = []
    for name, items in _STATIC_ELEMENTS.findall(text):
        for item in items.split(","):
            key, _, value = item.strip().partition(" : ")
            found.append(Element(name, key, value or None))
    return found


@dataclass(slots=True)
class _State:
    """What the table holds; copied before a transaction, kept only if all of it applies."""

    exists: bool = False
    sets: dict[str, dict[str, Element]] = field(default_factory=dict)
    chains: dict[str, Chain | None] = field(default_factory=dict)  # None: a skeleton chain
    skeleton_elements: frozenset[tuple[str, str]] = frozenset()  # (set, key) the skeleton declares inline

    def copy(self) -> _State:
        return _State(self.exists, {name: dict(elements) for name, elements in self.sets.items()}, dict(self.chains),
                      self.skeleton_elements)


class FakeKernel:
    def __init__(self) -> None:
        self._state = _State()
        self.transactions: list[Transaction] = []
        self.fail_next: str | None = None

    # --- views tests read ---------------------------------------------------------------------------
    @property
    def table_exists(self) -> bool:
        return self._state.exists

    @property
    def skeleton_elements(self) -> frozenset[tuple[str, str]]:
        return self._state.skeleton_elements

    @property
    def sets(self) -> dict[str, dict[str, tuple[str | None, str | None]]]:
        """set or map name -> element key -> (value, comment), as nft text."""
        return {name: {key: (el.value, el.comment) for key, el in elements.items()}
                for name, elements in self._state.sets.items()}

    @property
    def chains(self) -> dict[str, tuple[str, ...]]:
        """chain name -> its rules (skeleton chains: empty, their rules are the skeleton's text)."""
        return {name: chain.rules if chain is not None else () for name, chain in self._state.chains.items()}

    @property
    def skeleton_chains(self) -> frozenset[str]:
        return frozenset(name for name, chain in self._state.chains.items() if chain is None)

    # --- the kernel ---------------------------------------------------------------------------------
    def apply(self, tx: Transaction) -> Applied:
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            raise KernelError(message)
        if tx.record_only:
            raise ValueError("a streamed rebuild's record is not a transaction to apply")
        state = self._state.copy()
        for verb, obj in tx.operations:
            self._apply(state, verb, obj)
        # what the packet path needs: every class a map holds leads somewhere (see skeleton.class_id)
        dispatch = {key for name in _DISPATCH for key in state.sets.get(name, {})}
        for set_name, elements in state.sets.items():
            for key, el in elements.items():
                if el.value and _CLASS.match(el.value) and el.value not in dispatch:
                    raise AssertionError(f"{set_name} {key} : {el.value}: no chain for this class")
        self._state = state
        self.transactions.append(tx)
        return Applied()

    def _apply(self, state: _State, verb: Verb, obj: NftObject) -> None:
        if isinstance(obj, Table):
            if verb == "add":
                state.exists = True
            elif not state.exists:
                raise KernelError(f"No such file or directory: table {FAMILY} {TABLE}")
            else:
                state.exists, state.sets, state.chains = False, {}, {}
            return
        if isinstance(obj, Skeleton):  # `table inet nftproxy { ... }`: creates the table if missing
            if verb != "add":
                raise ValueError("a skeleton is only ever added (a rebuild deletes the table to remove it)")
            state.exists = True
            self._load_skeleton(state, obj)
        elif not state.exists:
            raise KernelError(f"No such file or directory: table {FAMILY} {TABLE} does not exist")
        elif isinstance(obj, SetDecl) and verb == "add":
            self._add_set(state, obj)
        elif isinstance(obj, SetDecl):
            self._delete_set(state, obj.name)
        elif isinstance(obj, Chain) and verb == "add":
            self._add_chain(state, obj)
        elif isinstance(obj, Chain):
            self._delete_chain(state, obj)
        elif verb == "add":
            self._add_element(state, obj)
        else:
            self._delete_element(state, obj)

    @classmethod
    def _load_skeleton(cls, state: _State, skeleton: Skeleton) -> None:
        for name in table_block(skeleton.text, FAMILY, TABLE).declarations:
            if name in state.sets:
                raise KernelError(f"File exists: set {name}")
            state.sets[name] = {}
        for name in _CHAIN_DECL.findall(skeleton.text):
            state.chains[name] = None
        static = _static_elements(skeleton.text)
        for el in static:
            cls._add_element(state, el)
        state.skeleton_elements = frozenset(el.ident for el in static)

    @staticmethod
    def _add_set(state: _State, decl: SetDecl) -> None:
        if decl.name in state.sets:
            raise KernelError(f"File exists: {decl.kind} {decl.name}")
        state.sets[decl.name] = {}

    @staticmethod
    def _delete_set(state: _State, name: str) -> None:
        if name not in state.sets:
            raise KernelError(f"No such file or directory: map {name}")
        del state.sets[name]

    def _add_chain(self, state: _State, chain: Chain) -> None:
        for decl in chain.maps:
            self._add_set(state, decl)
        if chain.name in state.chains:
            raise KernelError(f"File exists: chain {chain.name}")
        state.chains[chain.name] = chain
        for el in chain.entries:
            self._add_element(state, el)

    def _delete_chain(self, state: _State, chain: Chain) -> None:
        if chain.name not in state.chains:
            raise KernelError(f"No such file or directory: chain {chain.name}")
        for el in chain.entries:
            self._delete_element(state, el)
        if any(el.verdict_target == chain.name for elements in state.sets.values() for el in elements.values()):
            raise KernelError(f"Device or resource busy: chain {chain.name} is referenced")
        del state.chains[chain.name]
        for decl in chain.maps:
            self._delete_set(state, decl.name)

    @staticmethod
    def _add_element(state: _State, el: Element) -> None:
        try:
            el.check()
        except InvalidNftObject as err:
            raise KernelError(f"syntax error: {err}") from None
        elements = state.sets.get(el.set)
        if elements is None:
            raise KernelError(f"No such file or directory: set {el.set}")
        if el.key in elements:
            raise KernelError(f"File exists: element {el.key} in {el.set}")
        target = el.verdict_target
        if target is not None and target not in state.chains:
            raise KernelError(f"No such file or directory: chain {target}")
        elements[el.key] = el

    @staticmethod
    def _delete_element(state: _State, el: Element) -> None:
        if state.sets.get(el.set, {}).pop(el.key, None) is None:
            raise KernelError(f"No such file or directory: element {el.key} in {el.set}")

    def delete_table(self) -> None:
        self._state = _State()

    def dump(self) -> list[str]:
        """Sorted lines: dynamic chains with their rules, and every element with its value and comment."""
        lines: list[str] = []
        for name, chain in self._state.chains.items():
            if chain is not None:
                lines += [f"chain {name} {rule}" for rule in chain.rules] or [f"chain {name}"]
        for set_name, elements in self._state.sets.items():
            lines += [f"element {set_name} {el.item()}" for el in elements.values()
                      if (set_name, el.key) not in self.skeleton_elements]
        return sorted(lines)
