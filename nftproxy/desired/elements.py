"""The unit of desired state: set/map elements and shared chains, grouped per owner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Element(NamedTuple):
    """One element of a named set or map, rendered as nft text so it can be compared and sent as is."""

    set: str
    key: str
    value: str | None = None
    comment: str | None = None

    @property
    def ident(self) -> tuple[str, str]:
        """What the kernel keys the element by: two owners with the same ident compete for it."""
        return (self.set, self.key)


@dataclass(frozen=True, slots=True)
class Chain:
    """A regular (non-base) chain, with the maps only it uses (created before it, deleted after it) and
    the verdict elements that lead to it (added right after it, deleted right before it).

    Its content is a pure function of its name and the configuration.
    """

    name: str
    rules: tuple[str, ...]
    comment: str | None = None
    maps: tuple[tuple[str, str], ...] = ()  # (map name, declaration body)
    entries: tuple[Element, ...] = ()  # e.g. its class in @classes: `4100:3 : goto lb-cluster-v4-3`


@dataclass(frozen=True, slots=True)
class Fragment:
    """Everything one owner (a Service, or the configuration) needs in the kernel."""

    elements: frozenset[Element] = frozenset()
    chains: frozenset[Chain] = frozenset()


EMPTY = Fragment()
