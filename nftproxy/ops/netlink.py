"""Read nftables sets, elements and rules straight from the kernel over netlink, read-only.

Why not `nft`: at 10,000 Services `nft list map` costs ~35 us per element, and `nft get element` or
`nft list chain` build nft's whole cache first (2.7 s). The kernel answers a dump of one set, or a
lookup of one element, in microseconds; this module asks it directly and hands back raw bytes, which
`layout.py` decodes. Dumps of several sets are one consistent snapshot only if the ruleset generation
did not move meanwhile: `Snapshot` callers compare `generation()` before and after.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

NETLINK_NETFILTER = 12
_NFNL_SUBSYS_NFTABLES = 10
_GETTABLE, _GETCHAIN, _GETRULE, _GETSET, _GETSETELEM, _GETGEN = 1, 4, 7, 10, 13, 16
_NLM_F_REQUEST, _NLM_F_MULTI, _NLM_F_ACK, _NLM_F_DUMP_INTR, _NLM_F_DUMP = 0x1, 0x2, 0x4, 0x10, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
NFPROTO_INET = 1
_NLA_TYPE_MASK = 0x3FFF

# attribute numbers (linux/netfilter/nf_tables.h)
_TABLE_NAME = 1
_CHAIN_TABLE, _CHAIN_NAME = 1, 3
_SET_TABLE, _SET_NAME, _SET_FLAGS, _SET_KEY_TYPE, _SET_KEY_LEN, _SET_DATA_TYPE, _SET_DATA_LEN = 1, 2, 3, 4, 5, 6, 7
_SET_DESC, _SET_USERDATA = 9, 13
_SET_DESC_CONCAT, _SET_FIELD_LEN = 2, 1
_ELEM_LIST_TABLE, _ELEM_LIST_SET, _ELEM_LIST_ELEMENTS = 1, 2, 3
_LIST_ELEM = 1
_ELEM_KEY, _ELEM_DATA, _ELEM_FLAGS, _ELEM_TIMEOUT = 1, 2, 3, 4
_ELEM_EXPIRATION, _ELEM_USERDATA, _ELEM_KEY_END = 5, 6, 10
_DATA_VALUE, _DATA_VERDICT = 1, 2
_VERDICT_CODE, _VERDICT_CHAIN = 1, 2
_RULE_TABLE, _RULE_CHAIN, _RULE_EXPRESSIONS = 1, 2, 4
_EXPR_NAME, _EXPR_DATA = 1, 2
_GEN_ID = 1
_UDATA_COMMENT = 0

SET_ANONYMOUS, SET_INTERVAL, SET_MAP, SET_TIMEOUT, SET_CONCAT = 0x1, 0x4, 0x8, 0x10, 0x80
ELEM_INTERVAL_END = 0x1
VERDICT_DATA = 0xFFFFFF00  # NFT_DATA_VERDICT: a map's data type when its values are verdicts


class NetlinkError(OSError):
    """The kernel refused a request (errno), e.g. ENOENT for a table, set or element that is not there."""


@dataclass(frozen=True, slots=True)
class SetInfo:
    """A set or map as the kernel declares it: datatype ids and lengths, enough to decode its elements."""

    name: str
    flags: int
    key_type: int
    key_len: int
    data_type: int | None
    data_len: int
    field_lens: tuple[int, ...]  # concatenations with intervals: each field's length
    userdata: bytes


class Verdict(NamedTuple):
    code: int  # NF_DROP 0, NF_ACCEPT 1, NFT_JUMP -3, NFT_GOTO -4, NFT_RETURN -5
    chain: str | None


class RawElement(NamedTuple):
    key: bytes
    key_end: bytes | None
    data: bytes | Verdict | None
    flags: int
    comment: str | None
    expires_ms: int | None


class Expression(NamedTuple):
    name: str
    attrs: dict[int, bytes]  # NFTA_<name>_* -> raw payload (nested ones left raw)


def attributes(buf: bytes, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """Attributes of one level (nested ones as raw bytes); a repeated type keeps the last."""
    out: dict[int, bytes] = {}
    end = len(buf) if end is None else end
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", buf, start)
        if length < 4:
            break
        out[kind & _NLA_TYPE_MASK] = buf[start + 4:start + length]
        start += (length + 3) & ~3
    return out


def attribute_list(buf: bytes) -> list[tuple[int, bytes]]:
    """The same, keeping order and repeats (lists of NFTA_LIST_ELEM)."""
    out: list[tuple[int, bytes]] = []
    start, end = 0, len(buf)
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", buf, start)
        if length < 4:
            break
        out.append((kind & _NLA_TYPE_MASK, buf[start + 4:start + length]))
        start += (length + 3) & ~3
    return out


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _string(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _be32(raw: bytes) -> int:
    return int.from_bytes(raw[:4], "big")


def comment_of(userdata: bytes) -> str | None:
    """libnftnl's userdata TLVs (type u8, length u8, value): the comment's text, if any."""
    i = 0
    while i + 2 <= len(userdata):
        kind, length = userdata[i], userdata[i + 1]
        if kind == _UDATA_COMMENT:
            return _text(userdata[i + 2:i + 2 + length])
        i += 2 + length
    return None


def _data(raw: bytes) -> bytes | Verdict:
    nested = attributes(raw)
    if _DATA_VERDICT in nested:
        verdict = attributes(nested[_DATA_VERDICT])
        code = int.from_bytes(verdict.get(_VERDICT_CODE, b"\0\0\0\0")[:4], "big", signed=True)
        chain = verdict.get(_VERDICT_CHAIN)
        return Verdict(code, _text(chain) if chain is not None else None)
    return nested.get(_DATA_VALUE, b"")


def parse_elements(buf: bytes, comments: bool = True) -> list[RawElement]:
    """Every NFTA_LIST_ELEM of an element list. Written flat, without a dict per element: a status
    at 10,000 Services reads a few hundred thousand of them."""
    out: list[RawElement] = []
    unpack, append = struct.unpack_from, out.append
    pos, end = 0, len(buf)
    while pos + 4 <= end:
        length = unpack("=H", buf, pos)[0]
        if length < 4:
            break
        stop, p = pos + length, pos + 4
        key = b""
        key_end: bytes | None = None
        data: bytes | Verdict | None = None
        comment: str | None = None
        flags, expires = 0, None
        while p + 4 <= stop:
            alen, kind = unpack("=HH", buf, p)
            kind &= _NLA_TYPE_MASK
            if kind == _ELEM_KEY or kind == _ELEM_KEY_END:
                inner = unpack("=H", buf, p + 4)[0]
                value = buf[p + 8:p + 4 + inner]
                if kind == _ELEM_KEY:
                    key = value
                else:
                    key_end = value
            elif kind == _ELEM_DATA:
                inner, inner_kind = unpack("=HH", buf, p + 4)
                if inner_kind & _NLA_TYPE_MASK == _DATA_VALUE:
                    data = buf[p + 8:p + 4 + inner]
                else:
                    data = _data(buf[p + 4:p + alen])
            elif kind == _ELEM_USERDATA and comments:
                comment = comment_of(buf[p + 4:p + alen])
            elif kind == _ELEM_FLAGS:
                flags = int.from_bytes(buf[p + 4:p + 8], "big")
            elif kind == _ELEM_EXPIRATION:
                expires = int.from_bytes(buf[p + 4:p + 12], "big")
            p += (alen + 3) & ~3
        append(RawElement(key, key_end, data, flags, comment, expires))
        pos += (length + 3) & ~3
    return out


def parse_plain(buf: bytes, key_len: int) -> tuple[list[bytes], list[bytes | None]] | None:
    """Keys (and data values) of a set with plain keys and data, by position: the kernel writes each
    element as LIST_ELEM { KEY { VALUE }, [DATA { VALUE }], ... }, so the key sits 12 bytes in. None
    when an element is not laid out so (the caller then uses parse_elements)."""
    keys: list[bytes] = []
    values: list[bytes | None] = []
    add_key, add_value = keys.append, values.append
    header = struct.Struct("=H2xHH").unpack_from  # LIST_ELEM length, KEY length, KEY type
    data_header = struct.Struct("=HHHH").unpack_from  # DATA length, type, VALUE length, type
    key_attr = 4 + 4 + key_len
    data_at = 8 + ((key_attr - 4 + 3) & ~3)  # DATA follows the padded KEY attribute
    pos, end = 0, len(buf)
    while pos + 4 <= end:
        length, klen, ktype = header(buf, pos)
        if klen != key_attr or ktype & 0x3FFF != _ELEM_KEY:
            return None
        keys_end = pos + 12 + key_len
        add_key(buf[pos + 12:keys_end])
        d = pos + data_at
        if d + 12 <= pos + length:
            _dlen, dtype, vlen, vtype = data_header(buf, d)
            add_value(buf[d + 8:d + 4 + vlen] if dtype & 0x3FFF == _ELEM_DATA and vtype & 0x3FFF == _DATA_VALUE
                      else None)
        else:
            add_value(None)
        pos += (length + 3) & ~3
    return keys, values


class NetlinkReader:
    """One NETLINK_NETFILTER socket in the caller's network namespace; only GET requests."""

    def __init__(self, family: int = NFPROTO_INET) -> None:
        self.family = family
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        except OSError:
            pass
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NetlinkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ---------------------------------------------------------------------------------
    def _request(self, msg: int, payload: bytes, dump: bool) -> list[bytes]:
        """Send one request; returns each answer's attribute bytes (after nfgenmsg)."""
        self.seq += 1
        flags = _NLM_F_REQUEST | (_NLM_F_DUMP if dump else _NLM_F_ACK)
        body = struct.pack("=BBH", self.family, 0, 0) + payload
        header = struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_NFTABLES << 8) | msg, flags, self.seq, 0)
        self.sock.send(header + body)
        out: list[bytes] = []
        interrupted = False
        while True:
            chunk = self.sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(chunk):
                length, kind, mflags, seq, _pid = struct.unpack_from("=IHHII", chunk, offset)
                if length < 16:
                    raise NetlinkError("malformed netlink answer")
                if seq == self.seq:
                    if kind == _NLMSG_DONE:
                        if interrupted:
                            raise InterruptedError("ruleset changed during the dump")
                        return out
                    if kind == _NLMSG_ERROR:
                        errno = -struct.unpack_from("=i", chunk, offset + 16)[0]
                        if errno:
                            raise NetlinkError(errno, os.strerror(errno))
                        return out  # the ACK of a non-dump request
                    interrupted |= bool(mflags & _NLM_F_DUMP_INTR)
                    out.append(chunk[offset + 20:offset + length])
                offset += (length + 3) & ~3

    def generation(self) -> int:
        """The ruleset generation: it moves with every committed transaction, of any table."""
        for answer in self._request(_GETGEN, b"", dump=False):
            return _be32(attributes(answer)[_GEN_ID])
        raise NetlinkError("no generation in the kernel's answer")

    def has_table(self, table: str) -> bool:
        try:
            self._request(_GETTABLE, _string(_TABLE_NAME, table), dump=False)
        except NetlinkError as err:
            if err.errno == 2:  # ENOENT
                return False
            raise
        return True

    def sets(self, table: str) -> dict[str, SetInfo]:
        """Every set and map of `table` by name."""
        out: dict[str, SetInfo] = {}
        for answer in self._request(_GETSET, _string(_SET_TABLE, table), dump=True):
            a = attributes(answer)
            if _text(a.get(_SET_TABLE, b"")) != table:
                continue
            fields: tuple[int, ...] = ()
            if _SET_DESC in a:
                concat = attributes(a[_SET_DESC]).get(_SET_DESC_CONCAT)
                if concat:
                    fields = tuple(_be32(attributes(item).get(_SET_FIELD_LEN, b"\0\0\0\0"))
                                   for _kind, item in attribute_list(concat))
            info = SetInfo(
                name=_text(a[_SET_NAME]), flags=_be32(a.get(_SET_FLAGS, b"\0\0\0\0")),
                key_type=_be32(a.get(_SET_KEY_TYPE, b"\0\0\0\0")), key_len=_be32(a.get(_SET_KEY_LEN, b"\0\0\0\0")),
                data_type=_be32(a[_SET_DATA_TYPE]) if _SET_DATA_TYPE in a else None,
                data_len=_be32(a.get(_SET_DATA_LEN, b"\0\0\0\0")), field_lens=fields,
                userdata=a.get(_SET_USERDATA, b""))
            out[info.name] = info
        return out

    def elements(self, table: str, set_name: str, comments: bool = True) -> list[RawElement]:
        """Every element of one set (a dump: the kernel streams it, nothing else is read); without
        `comments` their text is not decoded (a third of the time of a big dump)."""
        request = _string(_ELEM_LIST_TABLE, table) + _string(_ELEM_LIST_SET, set_name)
        out: list[RawElement] = []
        for answer in self._request(_GETSETELEM, request, dump=True):
            listed = attributes(answer).get(_ELEM_LIST_ELEMENTS)
            if listed:
                out.extend(parse_elements(listed, comments))
        return out

    def plain_elements(self, table: str, set_name: str, key_len: int) -> tuple[list[bytes], list[bytes | None]]:
        """Keys and data values of a set without intervals or verdicts, read by position (`parse_plain`)."""
        request = _string(_ELEM_LIST_TABLE, table) + _string(_ELEM_LIST_SET, set_name)
        keys: list[bytes] = []
        values: list[bytes | None] = []
        for answer in self._request(_GETSETELEM, request, dump=True):
            listed = attributes(answer).get(_ELEM_LIST_ELEMENTS)
            if not listed:
                continue
            plain = parse_plain(listed, key_len)
            if plain is None:
                plain = ([el.key for el in parse_elements(listed, False)],
                         [el.data if isinstance(el.data, bytes) else None for el in parse_elements(listed, False)])
            keys += plain[0]
            values += plain[1]
        return keys, values

    def lookup(self, table: str, set_name: str, key: bytes) -> RawElement | None:
        """The element whose key is `key` (exact, as the kernel stores it), or None."""
        elem = _attr(_LIST_ELEM | 0x8000, _attr(_ELEM_KEY | 0x8000, _attr(_DATA_VALUE, key)))
        request = (_string(_ELEM_LIST_TABLE, table) + _string(_ELEM_LIST_SET, set_name)
                   + _attr(_ELEM_LIST_ELEMENTS | 0x8000, elem))
        try:
            answers = self._request(_GETSETELEM, request, dump=False)
        except NetlinkError as err:
            if err.errno == 2:  # ENOENT: no such element
                return None
            raise
        for answer in answers:
            listed = attributes(answer).get(_ELEM_LIST_ELEMENTS)
            if listed:
                return next(iter(parse_elements(listed)), None)
        return None

    def chains(self, table: str) -> list[str]:
        """The names of the table's chains."""
        out = []
        for answer in self._request(_GETCHAIN, _string(_CHAIN_TABLE, table), dump=True):
            a = attributes(answer)
            if _text(a.get(_CHAIN_TABLE, b"")) == table:
                out.append(_text(a.get(_CHAIN_NAME, b"")))
        return out

    def rules(self, table: str, chain: str) -> list[list[Expression]]:
        """Each rule of one chain as its list of expressions (name and raw attributes)."""
        request = _string(_RULE_TABLE, table) + _string(_RULE_CHAIN, chain)
        out: list[list[Expression]] = []
        for answer in self._request(_GETRULE, request, dump=True):
            a = attributes(answer)
            if _text(a.get(_RULE_CHAIN, b"")) != chain or _text(a.get(_RULE_TABLE, b"")) != table:
                continue
            exprs = []
            for _kind, item in attribute_list(a.get(_RULE_EXPRESSIONS, b"")):
                e = attributes(item)
                exprs.append(Expression(_text(e.get(_EXPR_NAME, b"")), attributes(e.get(_EXPR_DATA, b""))))
            out.append(exprs)
        return out


def local_addresses() -> frozenset[str]:
    """This namespace's own addresses (RTM_GETADDR dump): what `fib daddr type local` matches, bar the
    rest of 127.0.0.0/8, which the rules never treat as a NodePort address anyway."""
    rtm_getaddr, ifa_address, ifa_local = 22, 1, 2
    out: set[str] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(struct.pack("=IHHII", 16 + 8, rtm_getaddr, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
                  + struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0))
        while True:
            chunk = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(chunk):
                length, kind = struct.unpack_from("=IH", chunk, offset)
                if kind == _NLMSG_DONE:
                    return frozenset(out)
                if kind == _NLMSG_ERROR:
                    raise NetlinkError("cannot list this namespace's addresses")
                family = chunk[offset + 16]
                a = attributes(chunk, offset + 24, offset + length)
                raw = a.get(ifa_local) or a.get(ifa_address)
                if raw and family in (socket.AF_INET, socket.AF_INET6):
                    out.add(socket.inet_ntop(family, raw))
                offset += (length + 3) & ~3
