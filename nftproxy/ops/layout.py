"""How nftproxy's table reads: element bytes to text, map names to meaning. The one place `explain` and
`status` learn the layout, so a layout change is a change here (and the packet tests say when).

Decoding is driven by what the kernel declares for each set (its datatype ids and lengths), rendered
as `nft list` and the translator write them: `198.19.0.10 . tcp . 80`, CIDRs as `net/len`.
"""

from __future__ import annotations

import re
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from ipaddress import ip_address, ip_network, summarize_address_range

from ..desired.skeleton import TABLE
from ..desired import sets
from ..desired.sets import backends_map_name
from ..desired.chains import AFFINITY_IPS, AFFINITY_NODEPORTS, KINDS
from ..desired.translate import EXTERNAL_IPS, NODE_PORTS
from .netlink import ELEM_INTERVAL_END, SET_CONCAT, SET_INTERVAL, VERDICT_DATA, Expression, RawElement, SetInfo, Verdict

__all__ = ["TABLE", "AFFINITY_IPS", "AFFINITY_NODEPORTS", "EXTERNAL_IPS", "NODE_PORTS", "backends_map_name",
           "DISPATCH", "LOCAL_DISPATCH", "AFFINITY_DISPATCH"]

# nft's datatype ids (src/datatype.h) and the bytes each takes in a key
_VERDICT, _INTEGER, _IPADDR, _IP6ADDR, _INET_PROTOCOL, _INET_SERVICE, _MARK, _CLASSID = 1, 4, 7, 8, 12, 13, 19, 23
_SIZES = {_INTEGER: 4, _IPADDR: 4, _IP6ADDR: 16, _INET_PROTOCOL: 1, _INET_SERVICE: 2, _MARK: 4, _CLASSID: 4}

# A frontend's map value is a class (a tc handle, `4100:3`) that one of these small verdict maps turns
# into a chain (rules/nftproxy.nft): the services chain's, the externalTrafficPolicy Local chains', and
# the sessionAffinity record's. Maps that still hold verdicts are read as they are.
DISPATCH, LOCAL_DISPATCH, AFFINITY_DISPATCH = sets.CLASSES.name, sets.LOCAL_CLASSES.name, sets.AFFINITY_CLASSES.name
_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}
_PROTOCOL_NUMBERS = {name: number for number, name in _PROTOCOLS.items()}
_VERDICTS = {0: "drop", 1: "accept", -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}

_LB_CHAIN = re.compile(r"lb-(?P<kind>[a-z]+)-v(?P<family>[46])-(?P<count>\d+)")
_RECORD_CHAIN = re.compile(r".*-record-v[46]-(?P<timeout>\d+)")


def field_types(type_id: int) -> list[int]:
    """A concatenation's datatype id packs one 6-bit id per field (nft's TYPE_BITS)."""
    out: list[int] = []
    while type_id:
        out.insert(0, type_id & 0x3F)
        type_id >>= 6
    return out or [0]


def _render(kind: int, raw: bytes) -> str:
    if kind == _IPADDR:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if kind == _IP6ADDR:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    if kind == _INET_PROTOCOL:
        return _PROTOCOLS.get(raw[0], str(raw[0]))
    if kind == _INET_SERVICE:
        return str(int.from_bytes(raw[:2], "big"))
    if kind == _CLASSID:
        value = int.from_bytes(raw[:4], sys.byteorder)
        return f"{value >> 16:x}:{value & 0xFFFF:x}"
    return str(int.from_bytes(raw[:4], sys.byteorder))  # integers from numgen/jhash: host byte order


def _fields(types: list[int], raw: bytes, concat: bool) -> list[bytes]:
    """Split a key into its fields: in a concatenation each one starts on a 4-byte boundary."""
    if not concat:
        return [raw]
    out, offset = [], 0
    for kind in types:
        size = _SIZES.get(kind, 4)
        out.append(raw[offset:offset + size])
        offset += (size + 3) & ~3
    return out


def _range_text(kind: int, start: bytes, end: bytes) -> str:
    """An address range as `net/len` when it is one prefix (the translator's form), else `first-last`."""
    if start == end or kind not in (_IPADDR, _IP6ADDR):
        a, b = _render(kind, start), _render(kind, end)
        return a if a == b else f"{a}-{b}"
    first, last = ip_address(_render(kind, start)), ip_address(_render(kind, end))
    nets = list(summarize_address_range(first, last))
    return str(nets[0]) if len(nets) == 1 else f"{first}-{last}"


_FAST_FORMATS = {_IPADDR: ("4s", 4), _IP6ADDR: ("16s", 16), _INET_PROTOCOL: ("B", 1), _INET_SERVICE: ("2s", 2),
                 _INTEGER: ("I", 4)}
_FAST: dict[int, Callable[[Any], str]] = {
    _IPADDR: socket.inet_ntoa,
    _IP6ADDR: lambda raw: socket.inet_ntop(socket.AF_INET6, raw),
    _INET_PROTOCOL: {n: _PROTOCOLS.get(n) or str(n) for n in range(256)}.__getitem__,
    _INET_SERVICE: lambda raw: str(raw[0] << 8 | raw[1]),
    _INTEGER: str,
}


@dataclass(frozen=True, slots=True)
class Codec:
    """Decodes and encodes the elements of one set, from the kernel's declaration of it."""

    info: SetInfo
    key_types: tuple[int, ...]
    data_types: tuple[int, ...]

    @classmethod
    def of(cls, info: SetInfo) -> Codec:
        data = () if info.data_type in (None, VERDICT_DATA) else tuple(field_types(info.data_type or 0))
        return cls(info, tuple(field_types(info.key_type)), data)

    @property
    def concat(self) -> bool:
        return len(self.key_types) > 1 or bool(self.info.flags & SET_CONCAT)

    def key(self, el: RawElement) -> str:
        starts = _fields(list(self.key_types), el.key, self.concat)
        if el.key_end is None or el.key_end == el.key:
            return " . ".join(_render(k, raw) for k, raw in zip(self.key_types, starts))
        ends = _fields(list(self.key_types), el.key_end, self.concat)
        return " . ".join(_range_text(k, a, b) for k, a, b in zip(self.key_types, starts, ends))

    def keys(self, elements: list[RawElement]) -> list[str]:
        """Every element's key as text."""
        if any(el.key_end is not None for el in elements):
            return [self.key(el) for el in elements]
        return self.raw_keys([el.key for el in elements])

    def raw_keys(self, keys: list[bytes]) -> list[str]:
        """Keys as text, one struct format for the whole set where the layout is fixed (a status reads a
        few hundred thousand keys: one comprehension per field count, no call per field)."""
        fmt = self._format()
        if fmt is None or any(len(k) != self.info.key_len for k in keys):
            return [self.key(RawElement(k, None, None, 0, None, None)) for k in keys]
        unpacked = struct.Struct(fmt).iter_unpack(b"".join(keys))
        r = [_FAST[kind] for kind in self.key_types]
        if len(r) == 1:
            return [r[0](a) for (a,) in unpacked]
        if len(r) == 2:
            return [f"{r[0](a)} . {r[1](b)}" for a, b in unpacked]
        if len(r) == 3:
            return [f"{r[0](a)} . {r[1](b)} . {r[2](c)}" for a, b, c in unpacked]
        if len(r) == 4:
            return [f"{r[0](a)} . {r[1](b)} . {r[2](c)} . {r[3](d)}" for a, b, c, d in unpacked]
        return [" . ".join([f(v) for f, v in zip(r, fields)]) for fields in unpacked]

    def _format(self) -> str | None:
        parts = []
        for kind in self.key_types:
            if kind not in _FAST_FORMATS:
                return None
            code, size = _FAST_FORMATS[kind]
            parts.append(code + ("x" * (-size % 4) if self.concat else ""))
        return "=" + "".join(parts)

    def value(self, el: RawElement) -> str | None:
        data = el.data
        if data is None:
            return None
        if isinstance(data, Verdict):
            word = _VERDICTS.get(data.code, str(data.code))
            return f"{word} {data.chain}" if data.chain else word
        multi = len(self.data_types) > 1
        fields = _fields(list(self.data_types), data, multi)
        return " . ".join(_render(k, raw) for k, raw in zip(self.data_types, fields))

    def encode(self, fields: list[str], prefix: bool = False) -> bytes:
        """A key for an exact lookup, from its fields as text (`["198.19.0.10", "tcp", "80"]`); with
        `prefix`, the leading fields only (to pick elements out of a dump)."""
        if not prefix and len(fields) != len(self.key_types):
            raise ValueError(f"{self.info.name}: {len(self.key_types)} key fields, got {len(fields)}")
        out = b""
        for kind, text in zip(self.key_types, fields):
            if kind == _IPADDR:
                raw = socket.inet_pton(socket.AF_INET, text)
            elif kind == _IP6ADDR:
                raw = socket.inet_pton(socket.AF_INET6, text)
            elif kind == _INET_PROTOCOL:
                raw = bytes([_PROTOCOL_NUMBERS.get(text, 0) or int(text)])
            elif kind == _INET_SERVICE:
                raw = int(text).to_bytes(2, "big")
            elif kind == _CLASSID:
                major, _, minor = text.partition(":")
                raw = (int(major, 16) << 16 | int(minor or "0", 16)).to_bytes(4, sys.byteorder)
            else:
                raw = int(text).to_bytes(4, sys.byteorder)
            out += raw + (b"\0" * (-len(raw) % 4) if self.concat else b"")
        return out

    def intervals(self, elements: list[RawElement]) -> list[tuple[str, str | None]]:
        """A one-field interval set's ranges as (text, comment): the kernel keeps starts and (exclusive)
        ends as separate elements; concatenated ones carry their end (`key`)."""
        if not self.info.flags & SET_INTERVAL or self.concat:
            return [(self.key(el), el.comment) for el in elements]
        kind, size = self.key_types[0], len(elements[0].key) if elements else 0
        out = []
        ordered = sorted(elements, key=lambda el: (el.key, not el.flags & ELEM_INTERVAL_END))
        for i, el in enumerate(ordered):
            if el.flags & ELEM_INTERVAL_END:
                continue
            end = next((e.key for e in ordered[i + 1:] if e.flags & ELEM_INTERVAL_END), None)
            last = ((int.from_bytes(end, "big") - 1) if end is not None else (1 << (8 * size)) - 1)
            out.append((_range_text(kind, el.key, last.to_bytes(size, "big")), el.comment))
        return out


# --- what the names mean --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LbChain:
    """lb-<kind>-v<family>-<count>: balances a frontend over `count` slots of backends-<kind>-..."""

    kind: str
    family: int
    count: int

    @property
    def by_address(self) -> bool:
        return KINDS[self.kind][0]

    @property
    def backends(self) -> str:
        return backends_map_name(self.kind, self.family, self.count)


def is_verdict(value: str) -> bool:
    return value.split(" ", 1)[0] in _VERDICTS.values()


def lb_chain(verdict: str | None) -> LbChain | None:
    """The lb chain a frontend's verdict (`goto lb-cluster-v4-3`) sends it to, if any."""
    if not verdict or not verdict.startswith("goto "):
        return None
    match = _LB_CHAIN.fullmatch(verdict[5:])
    if match is None or match["kind"] not in KINDS:
        return None
    return LbChain(match["kind"], int(match["family"]), int(match["count"]))


def affinity_timeout(verdict: str | None) -> int | None:
    """From a frontend's record verdict (`jump affinity-record-v4-10800`): its timeout in seconds."""
    match = _RECORD_CHAIN.fullmatch(verdict.split(" ", 1)[1]) if verdict and " " in verdict else None
    return int(match["timeout"]) if match else None


# --- rules: only what explain needs to know of the lb chains ---------------------------------------------
_META_KEY, _META_SREG, _META_MARK = 2, 3, 3
_PAYLOAD_BASE, _PAYLOAD_OFFSET, _PAYLOAD_LEN, _NETWORK_HEADER = 2, 3, 4, 1
_CMP_OP, _CMP_DATA, _CMP_NEQ = 2, 3, 1
_BITWISE_MASK = 4
_SADDR = {12: (socket.AF_INET, 4), 8: (socket.AF_INET6, 16)}  # header offset -> family, address length


@dataclass(frozen=True, slots=True)
class Masquerade:
    """What an lb chain's mark rule says: always, never, or unless the source is in `unless_from`."""

    always: bool
    unless_from: str | None = None

    def applies(self, source_in_range: bool | None) -> bool | None:
        if self.unless_from is None:
            return self.always
        return None if source_in_range is None else not source_in_range


def _data_value(raw: bytes) -> bytes:
    length, _kind = struct.unpack_from("=HH", raw, 0)
    return raw[4:length]


def masquerade_of(rules: list[list[Expression]]) -> Masquerade:
    """The chain's rule that sets the masquerade mark, read back from its expressions."""
    for rule in rules:
        sets_mark = any(e.name == "meta" and _META_SREG in e.attrs
                        and int.from_bytes(e.attrs.get(_META_KEY, b"")[:4], "big") == _META_MARK for e in rule)
        if not sets_mark:
            continue
        for i, e in enumerate(rule):
            if e.name != "payload" or int.from_bytes(e.attrs.get(_PAYLOAD_BASE, b"")[:4], "big") != _NETWORK_HEADER:
                continue
            offset = int.from_bytes(e.attrs.get(_PAYLOAD_OFFSET, b"")[:4], "big")
            loaded = int.from_bytes(e.attrs.get(_PAYLOAD_LEN, b"")[:4], "big")
            if offset not in _SADDR or loaded > _SADDR[offset][1]:
                continue
            family, size = _SADDR[offset]
            mask = b"\xff" * loaded  # nft loads only the prefix's bytes when it ends on a byte boundary
            for follow in rule[i + 1:]:
                if follow.name == "bitwise" and _BITWISE_MASK in follow.attrs:
                    mask = _data_value(follow.attrs[_BITWISE_MASK])
                elif follow.name == "cmp":
                    if int.from_bytes(follow.attrs.get(_CMP_OP, b"")[:4], "big") != _CMP_NEQ:
                        break
                    value = _data_value(follow.attrs[_CMP_DATA])
                    network = socket.inet_ntop(family, value[:size] + b"\0" * (size - len(value)))
                    prefix = bin(int.from_bytes(mask, "big")).count("1")
                    return Masquerade(False, str(ip_network(f"{network}/{prefix}", strict=False)))
        return Masquerade(True)
    return Masquerade(False)


# --- IPv6 sessionAffinity keys: the kernel's jhash, with the seeds read back from the lb chain's rule ----
_HASH_LEN, _HASH_MODULUS, _HASH_SEED, _HASH_OFFSET = 3, 4, 5, 6
_M32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Hash:
    """One `jhash ... mod M seed S [offset O]` of a rule: `length` bytes of registers hashed."""

    length: int
    modulus: int
    seed: int
    offset: int = 0

    def __call__(self, data: bytes) -> int:
        return ((jhash(data[:self.length], self.seed) * self.modulus) >> 32) + self.offset  # reciprocal_scale


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M32; a ^= _rol(c, 4); c = (c + b) & _M32  # noqa: E702 - lookup3's own layout
    b = (b - a) & _M32; b ^= _rol(a, 6); a = (a + c) & _M32  # noqa: E702
    c = (c - b) & _M32; c ^= _rol(b, 8); b = (b + a) & _M32  # noqa: E702
    a = (a - c) & _M32; a ^= _rol(c, 16); c = (c + b) & _M32  # noqa: E702
    b = (b - a) & _M32; b ^= _rol(a, 19); a = (a + c) & _M32  # noqa: E702
    c = (c - b) & _M32; c ^= _rol(b, 4); b = (b + a) & _M32  # noqa: E702
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b; c = (c - _rol(b, 14)) & _M32  # noqa: E702
    a ^= c; a = (a - _rol(c, 11)) & _M32  # noqa: E702
    b ^= a; b = (b - _rol(a, 25)) & _M32  # noqa: E702
    c ^= b; c = (c - _rol(b, 16)) & _M32  # noqa: E702
    a ^= c; a = (a - _rol(c, 4)) & _M32  # noqa: E702
    b ^= a; b = (b - _rol(a, 14)) & _M32  # noqa: E702
    c ^= b; c = (c - _rol(b, 24)) & _M32  # noqa: E702
    return c


def jhash(key: bytes, seed: int) -> int:
    """Linux's jhash() (Bob Jenkins' lookup3, include/linux/jhash.h), words read in host byte order."""
    length = len(key)
    a = b = c = (0xDEADBEEF + length + seed) & _M32
    k = 0
    while length > 12:
        a = (a + int.from_bytes(key[k:k + 4], sys.byteorder)) & _M32
        b = (b + int.from_bytes(key[k + 4:k + 8], sys.byteorder)) & _M32
        c = (c + int.from_bytes(key[k + 8:k + 12], sys.byteorder)) & _M32
        a, b, c = _mix(a, b, c)
        length -= 12
        k += 12
    if length == 0:
        return c
    tail = key[k:] + b"\0" * (12 - length)  # the switch's fall-through adds the bytes that are there
    a = (a + int.from_bytes(tail[0:4], "little")) & _M32
    b = (b + int.from_bytes(tail[4:8], "little")) & _M32
    c = (c + int.from_bytes(tail[8:12], "little")) & _M32
    return _final(a, b, c)


def hashes_of(rules: list[list[Expression]]) -> tuple[Hash, ...]:
    """The jhash expressions of the first rule that has any (an lb chain's sessionAffinity steer)."""
    for rule in rules:
        found = tuple(Hash(*(int.from_bytes(e.attrs.get(a, b"\0\0\0\0")[:4], "big")
                             for a in (_HASH_LEN, _HASH_MODULUS, _HASH_SEED, _HASH_OFFSET)))
                      for e in rule if e.name == "hash" and _HASH_SEED in e.attrs)
        if found:
            return found
    return ()
