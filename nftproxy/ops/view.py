"""The kernel's `inet nftproxy` table as `explain` and `status` read it: lookups and dumps over netlink,
decoded by `layout.Codec`. The shell around the pure code; nothing here writes to the kernel."""

from __future__ import annotations

from functools import cache
from typing import Protocol

from .layout import TABLE, Codec, Hash, Masquerade, hashes_of, masquerade_of
from .netlink import NetlinkError, NetlinkReader, SetInfo, local_addresses


class TableAbsent(RuntimeError):
    """No `inet nftproxy` table in this network namespace."""


class TableView(Protocol):
    """What explain reads: exact lookups, whole (small) sets, an lb chain's masquerade rule, local addresses."""

    def has(self, set_name: str) -> bool: ...

    def get(self, set_name: str, fields: list[str]) -> tuple[str | None, str | None] | None: ...

    def keys(self, set_name: str, prefix: list[str] | None = None) -> list[tuple[str, str | None]]: ...

    def masquerade(self, chain: str) -> Masquerade: ...

    def hashes(self, chain: str) -> tuple[Hash, ...]: ...

    def is_local(self, address: str) -> bool: ...


class LiveTable:
    """Reads the table of the current network namespace, one netlink request per question."""

    def __init__(self, reader: NetlinkReader | None = None, table: str = TABLE) -> None:
        self.reader = reader or NetlinkReader()
        self.table = table
        if not self.reader.has_table(table):
            raise TableAbsent(f"table inet {table} is absent")
        self.sets: dict[str, SetInfo] = self.reader.sets(table)
        self.codec = cache(self._codec)
        self.masquerade = cache(self._masquerade)
        self.hashes = cache(self._hashes)
        self._local: frozenset[str] | None = None

    def _codec(self, set_name: str) -> Codec:
        return Codec.of(self.sets[set_name])

    def has(self, set_name: str) -> bool:
        return set_name in self.sets

    def get(self, set_name: str, fields: list[str]) -> tuple[str | None, str | None] | None:
        if set_name not in self.sets:
            return None
        codec = self.codec(set_name)
        el = self.reader.lookup(self.table, set_name, codec.encode(fields))
        return None if el is None else (codec.value(el), el.comment)

    def keys(self, set_name: str, prefix: list[str] | None = None) -> list[tuple[str, str | None]]:
        """Every element's key (ranges merged), or those whose leading fields are `prefix`."""
        if set_name not in self.sets:
            return []
        codec = self.codec(set_name)
        elements = self.reader.elements(self.table, set_name)
        if prefix:
            raw = codec.encode(prefix, prefix=True)
            elements = [el for el in elements if el.key.startswith(raw)]
        return codec.intervals(elements)

    def _masquerade(self, chain: str) -> Masquerade:
        try:
            return masquerade_of(self.reader.rules(self.table, chain))
        except NetlinkError:
            return Masquerade(False)

    def _hashes(self, chain: str) -> tuple[Hash, ...]:
        try:
            return hashes_of(self.reader.rules(self.table, chain))
        except NetlinkError:
            return ()

    def is_local(self, address: str) -> bool:
        if self._local is None:
            self._local = local_addresses()
        return address in self._local or address.startswith("127.") or address == "::1"
