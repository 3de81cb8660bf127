"""Which interface holds an address, and whether an interface has carrier: rtnetlink with the stdlib.

The speaker needs the interface of the node's InternalIP (where it announces) and must notice a
lost carrier within a fraction of a second (to stop claiming addresses it cannot serve). A query
here is one small netlink round trip (tens of microseconds; pyroute2 0.9 spends ~1 ms of CPU on
the same request), so `CarrierWatch` can afford a check every `period` as the backstop to the
link events that wake it at once. Message packing and parsing are pure functions; the sockets are
opened in the calling thread, hence in its network namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator

log = logging.getLogger(__name__)

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFLA_IFNAME = 3
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTMGRP_LINK = 0x1
IFF_LOWER_UP = 0x10000

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, device type, index, flags, change mask
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
_RTATTR = struct.Struct("=HH")  # length, type
_ERRNO = struct.Struct("=i")


# --------------------------------------------------------------------------- #
# messages (pure)
# --------------------------------------------------------------------------- #


def _align(n: int) -> int:
    return (n + 3) & ~3


def request(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """One netlink message: header + `body`."""
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def attribute(kind: int, value: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    raw = _RTATTR.pack(_RTATTR.size + len(value), kind) + value
    return raw + b"\x00" * (_align(len(raw)) - len(raw))


def messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence, payload) of each netlink message in one datagram."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _port = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            return
        yield kind, seq, data[offset + _NLMSGHDR.size : offset + length]
        offset += _align(length)


def attributes(data: bytes) -> dict[int, bytes]:
    """rtattr type -> value (the first of each type)."""
    found: dict[int, bytes] = {}
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > len(data):
            break
        found.setdefault(kind & 0x3FFF, data[offset + _RTATTR.size : offset + length])
        offset += _align(length)
    return found


def link_request(ifname: str, seq: int) -> bytes:
    """RTM_GETLINK for one interface by name."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attribute(IFLA_IFNAME, ifname.encode() + b"\x00")
    return request(RTM_GETLINK, NLM_F_REQUEST, seq, body)


def link_carrier(payload: bytes) -> tuple[str, bool]:
    """(name, carrier) of an RTM_NEWLINK payload: carrier means IFF_LOWER_UP (up and carrier on)."""
    _family, _type, _index, flags, _change = _IFINFOMSG.unpack_from(payload)
    name = attributes(payload[_IFINFOMSG.size :]).get(IFLA_IFNAME, b"").split(b"\x00")[0].decode()
    return name, bool(flags & IFF_LOWER_UP)


def address_request(family: int, seq: int) -> bytes:
    """RTM_GETADDR dump of one family."""
    return request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, _IFADDRMSG.pack(family, 0, 0, 0, 0))


def address_entry(payload: bytes) -> tuple[int, set[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """(interface index, local addresses) of an RTM_NEWADDR payload (IFA_LOCAL and IFA_ADDRESS)."""
    family, _plen, _flags, _scope, index = _IFADDRMSG.unpack_from(payload)
    size = 4 if family == socket.AF_INET else 16
    attrs = attributes(payload[_IFADDRMSG.size :])
    found = {ipaddress.ip_address(attrs[k]) for k in (IFA_LOCAL, IFA_ADDRESS) if len(attrs.get(k, b"")) == size}
    return index, found


# --------------------------------------------------------------------------- #
# queries (sockets in the caller's network namespace)
# --------------------------------------------------------------------------- #


def _rtnl_socket(groups: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


def _exchange(sock: socket.socket, message: bytes, seq: int, dump: bool) -> list[tuple[int, bytes]]:
    """Send `message`, collect the answer's (type, payload) up to NLMSG_DONE (dump) or the first one."""
    sock.send(message)
    found: list[tuple[int, bytes]] = []
    while True:
        for kind, got_seq, payload in messages(sock.recv(65536)):
            if got_seq != seq:
                continue
            if kind == NLMSG_ERROR:
                code = -_ERRNO.unpack_from(payload)[0]
                if code:
                    raise OSError(code, os.strerror(code))
                return found
            if kind == NLMSG_DONE:
                return found
            found.append((kind, payload))
            if not dump:
                return found


def _carrier(sock: socket.socket, ifname: str, seq: int) -> bool:
    try:
        answer = _exchange(sock, link_request(ifname, seq), seq, dump=False)
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.EINVAL, errno.ERANGE):  # no such interface / bad name
            return False
        raise
    return any(link_carrier(payload)[1] for kind, payload in answer if kind == RTM_NEWLINK)


def has_carrier(ifname: str) -> bool:
    """Whether `ifname` exists, is up and has carrier (false for a veth whose peer is down or gone)."""
    with _rtnl_socket() as sock:
        return _carrier(sock, ifname, 1)


def interface_of_address(ip: str) -> str | None:
    """Name of the interface holding local address `ip` (e.g. the node's InternalIP), or None."""
    wanted = ipaddress.ip_address(ip)
    family = socket.AF_INET if wanted.version == 4 else socket.AF_INET6
    with _rtnl_socket() as sock:
        answer = _exchange(sock, address_request(family, 1), 1, dump=True)
    for kind, payload in answer:
        if kind != RTM_NEWADDR:
            continue
        index, found = address_entry(payload)
        if wanted in found:
            try:
                return socket.if_indextoname(index)
            except OSError:
                return None  # removed meanwhile
    return None


# --------------------------------------------------------------------------- #
# watching
# --------------------------------------------------------------------------- #


class CarrierWatch(threading.Thread):
    """Calls `on_change(ifname, carrier)` when a watched interface gains or loses carrier.

    Link events (RTNLGRP_LINK) wake it at once; it also checks every `period` seconds in case an
    event was lost (the multicast queue overflows under link churn). The first state seen of each
    interface is reported too, so the caller needs no separate initial query. A missing interface
    counts as no carrier. Callbacks run in this thread; exceptions are logged.
    """

    def __init__(
        self, interfaces: Iterable[str], on_change: Callable[[str, bool], None], period: float = 0.1
    ) -> None:
        super().__init__(name="carrier-watch", daemon=True)
        self._on_change = on_change
        self._period = period
        self._lock = threading.Lock()
        self._watched = frozenset(interfaces)
        self._known: dict[str, bool] = {}
        self._stopping = threading.Event()

    def set_interfaces(self, interfaces: Iterable[str]) -> None:
        """Watch these instead; new ones are reported at the next check (within `period`)."""
        with self._lock:
            self._watched = frozenset(interfaces)
            self._known = {name: up for name, up in self._known.items() if name in self._watched}

    def state(self) -> dict[str, bool]:
        """The last reported carrier of each watched interface."""
        with self._lock:
            return {name: self._known[name] for name in self._watched if name in self._known}

    def stop(self) -> None:
        """End the thread (within `period`) and wait for it; idempotent."""
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()

    def run(self) -> None:
        """Check, then sleep until a link event or until `period` has passed."""
        try:
            with _rtnl_socket(RTMGRP_LINK) as events, _rtnl_socket() as query:
                poller = select.poll()
                poller.register(events, select.POLLIN)
                seq = 0
                while not self._stopping.is_set():
                    seq = self._check(query, seq)
                    if poller.poll(self._period * 1000):
                        self._drain(events)
        except Exception:  # noqa: BLE001 - a dead watch must be loud
            log.exception("carrier watch failed; carrier changes are no longer reported")

    @staticmethod
    def _drain(events: socket.socket) -> None:
        """Empty the event queue: events are only a trigger, the check that follows reads the truth."""
        try:
            while events.recv(65536, socket.MSG_DONTWAIT):
                pass
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:  # overflow: the check that follows catches up
                raise

    def _check(self, query: socket.socket, seq: int) -> int:
        with self._lock:
            watched = sorted(self._watched)
        changes = []
        for name in watched:
            seq += 1
            carrier = _carrier(query, name, seq)
            with self._lock:
                if self._known.get(name) != carrier:
                    self._known[name] = carrier
                    changes.append((name, carrier))
        for name, carrier in changes:
            try:
                self._on_change(name, carrier)
            except Exception:  # noqa: BLE001 - the caller's bug must not end the watch
                log.exception("carrier callback failed for %s", name)
        return seq
