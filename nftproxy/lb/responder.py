"""The L2 announcement data plane: ARP and NDP answers for LoadBalancer addresses no interface holds.

nftables DNATs LoadBalancer addresses in prerouting, so no interface carries them and the kernel
never answers for them. The speaker decides which addresses this node announces on which
interface and hands them to `L2Responder.set_addresses`; on one AF_PACKET socket per interface in
use the responder then

* answers ARP requests and Neighbor Solicitations (solicited-node multicast and unicast NUD
  probes) for them, joining each address's solicited-node group so MLD-snooping switches deliver
  the solicitations;
* announces each newly held pair at once and again at the schedule's offsets (gratuitous ARP
  request and reply; unsolicited NA with Override), so neighbours switch to this node unasked;
* reports another MAC claiming a held address (split brain) through `on_conflict`.

What to send is decided by the pure `frames.react`; this module is the socket and thread shell.
Every interface socket has a receive thread; one announcer thread sends the scheduled
announcements and, every second, reopens sockets of interfaces that appeared, were recreated or
changed MAC. Nothing the caller does waits on the network.
"""

from __future__ import annotations

import ctypes
import heapq
import ipaddress
import itertools
import logging
import math
import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import AbstractSet

from .frames import (
    ETH_P_ARP,
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    ND_NEIGHBOR_ADVERT,
    ND_NEIGHBOR_SOLICIT,
    IPAddress,
    announcements,
    mac_text,
    react,
    solicited_node_group,
)

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20+: the kernel does not even clone our interface's sends for us
PACKET_OTHERHOST = 3  # pkttypes from here on: frames for other hosts, our own sends, loopback
SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE: BPF ancillary load of the pkttype
RECONCILE_PERIOD = 1.0  # seconds between checks of the interfaces in use
CONFLICT_INTERVAL = 1.0  # at most one report per (address, MAC) in this many seconds
_FRAMES_PER_WAKE = 64  # frames read per poll wake-up before looking at the stop pipe again


def filter_program() -> bytes:
    """Classic BPF: only ARP and ICMPv6 NS/NA (no extension headers) addressed to this host.

    Frames for other hosts (promiscuous mode) and our own sends never reach Python, nor does any
    other traffic, so the receive thread costs nothing under load.
    """
    ld_w, ld_h, ld_b, jeq, jgt, jge, ret = 0x20, 0x28, 0x30, 0x15, 0x25, 0x35, 0x06
    code: list[tuple[int, str | None, str | None, int]] = [
        (ld_w, None, None, SKF_AD_PKTTYPE),
        (jge, "drop", None, PACKET_OTHERHOST),
        (ld_h, None, None, 12),  # ethertype
        (jeq, "accept", None, ETH_P_ARP),
        (jeq, None, "drop", ETH_P_IPV6),
        (ld_b, None, None, 14 + 6),  # IPv6 next header
        (jeq, None, "drop", IPPROTO_ICMPV6),
        (ld_b, None, None, 14 + 40),  # ICMPv6 type
        (jge, None, "drop", ND_NEIGHBOR_SOLICIT),
        (jgt, "drop", "accept", ND_NEIGHBOR_ADVERT),
    ]
    labels = {"accept": len(code), "drop": len(code) + 1}
    code += [(ret, None, None, 0x40000), (ret, None, None, 0)]

    def jump(index: int, label: str | None) -> int:
        return 0 if label is None else labels[label] - index - 1

    return b"".join(struct.pack("=HBBI", op, jump(i, jt), jump(i, jf), k) for i, (op, jt, jf, k) in enumerate(code))


def _attach_filter(sock: socket.socket, program: bytes) -> None:
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _index_of(ifname: str) -> int | None:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


class _Port:
    """One interface in use: its packet socket, its solicited-node memberships, its receive thread.

    The socket is created with protocol 0 (receiving nothing), filtered, then bound to the
    interface, so no frame of another interface is ever queued on it. It ignores outgoing frames,
    so a tap on the interface costs the node's transmit path nothing.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.ifindex = socket.if_nametoindex(name)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            _attach_filter(self.sock, filter_program())
            try:
                self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass  # older kernel: the filter drops our own sends, after a clone of each
            self.sock.bind((name, ETH_P_ALL))
            self.mac = self.current_mac()
        except OSError:
            self.sock.close()
            raise
        self._groups: Counter[ipaddress.IPv6Address] = Counter()
        self._multicast: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe()
        self.thread: threading.Thread | None = None

    def current_mac(self) -> bytes:
        """The interface's MAC now (AF_PACKET getsockname reads the device)."""
        return bytes(self.sock.getsockname()[4])

    def send(self, frame: bytes) -> bool:
        """Send without ever blocking; a full queue or a down link drops the frame."""
        try:
            self.sock.send(frame, socket.MSG_DONTWAIT)
            return True
        except OSError as exc:
            log.debug("sending on %s failed: %s", self.name, exc)
            return False

    def join(self, ip: ipaddress.IPv6Address) -> None:
        """Join `ip`'s solicited-node group (kernel sends MLD reports; refcounted per group)."""
        group = solicited_node_group(ip)
        self._groups[group] += 1
        if self._groups[group] == 1:
            self._membership(socket.IPV6_JOIN_GROUP, group)

    def leave(self, ip: ipaddress.IPv6Address) -> None:
        """Leave `ip`'s solicited-node group once no held address needs it."""
        group = solicited_node_group(ip)
        self._groups[group] -= 1
        if self._groups[group] <= 0:
            del self._groups[group]
            self._membership(socket.IPV6_LEAVE_GROUP, group)

    def _membership(self, option: int, group: ipaddress.IPv6Address) -> None:
        try:
            if self._multicast is None:
                self._multicast = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            mreq = group.packed + struct.pack("@I", self.ifindex)
            self._multicast.setsockopt(socket.IPPROTO_IPV6, option, mreq)
        except OSError as exc:
            verb = "join" if option == socket.IPV6_JOIN_GROUP else "leave"
            log.warning("cannot %s %s on %s: %s (switches with MLD snooping may not deliver NS)",
                        verb, group, self.name, exc)

    def serve(self, handle: Callable[["_Port", bytes], None]) -> None:
        """Receive thread: hand every frame to `handle` until `close` is called, then close the sockets."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while all(fd != self._wake_r for fd, _ in poller.poll()):
                for _ in range(_FRAMES_PER_WAKE):
                    try:
                        frame = self.sock.recv(4096, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    except OSError as exc:  # ENETDOWN when the link goes down: keep listening
                        log.debug("receiving on %s: %s", self.name, exc)
                        break
                    try:
                        handle(self, frame)
                    except Exception:  # noqa: BLE001 - one bad frame must not end answering
                        log.exception("handling a frame on %s failed", self.name)
        finally:
            self.sock.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def close(self) -> None:
        """Leave every group now and ask the receive thread to close the rest (once; never blocks)."""
        if self._multicast is not None:
            self._multicast.close()  # the kernel leaves its groups (MLD done) at once
            self._multicast = None
        self._groups.clear()
        os.write(self._wake_w, b"x")


@dataclass(frozen=True, slots=True)
class PairStats:
    """Counters of one (interface, address) pair for metrics; kept after withdrawal (they only grow)."""

    answered: int = 0  # ARP requests and Neighbor Solicitations answered
    announcements: int = 0  # gratuitous frames sent: request + reply per IPv4 round, one NA per IPv6 round
    conflicts: int = 0  # conflicts reported through on_conflict (after rate limiting)


_Due = tuple[float, int, str, IPAddress, int]  # when, tie-breaker, interface, address, series


class L2Responder:
    """Answers ARP/NDP for the addresses it is given, per interface; see the module docstring.

    `on_conflict(interface, ip, other_mac)` runs in a receive thread, at most once per (ip, MAC)
    per second; it must not block for long. `schedule` holds the offsets in seconds, from the
    moment a pair is added, at which it is announced (0 = at once).
    """

    def __init__(
        self,
        on_conflict: Callable[[str, str, str], None] | None = None,
        schedule: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    ) -> None:
        offsets = sorted(float(s) for s in schedule)
        if any(o < 0 or not math.isfinite(o) for o in offsets):
            raise ValueError(f"announcement offsets must be finite and >= 0: {schedule!r}")
        self._on_conflict = on_conflict
        self._schedule = tuple(offsets)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._state = "new"
        self._held: dict[str, frozenset[IPAddress]] = {}
        self._ports: dict[str, _Port] = {}
        self._retired: list[_Port] = []
        self._due: list[_Due] = []
        self._series: dict[tuple[str, IPAddress], int] = {}  # the pair's current announcement series
        self._ids = itertools.count()
        self._stats: dict[tuple[str, str], list[int]] = {}
        self._received: Counter[str] = Counter()
        self._last_conflict: dict[tuple[IPAddress, bytes], float] = {}
        self._unavailable: set[str] = set()  # interfaces whose socket failed to open (logged once)
        self._announcer: threading.Thread | None = None

    # -- the controller's API ---------------------------------------------- #

    def set_addresses(self, wanted: Mapping[str, AbstractSet[str]]) -> None:
        """interface name -> IP addresses (IPv4 and IPv6 text) this node answers for there, replacing the previous set.

        Newly added (interface, ip) pairs are announced at once and again at the schedule's
        offsets; removed pairs are not answered from the moment this returns. An interface that
        does not exist (yet) is retried every second. ValueError for an invalid address, before
        anything changes.
        """
        new = {name: frozenset(ipaddress.ip_address(a) for a in addrs) for name, addrs in wanted.items()}
        new = {name: addrs for name, addrs in new.items() if addrs}
        with self._lock:
            old, self._held = self._held, new
            for name in old.keys() | new.keys():
                before, after = old.get(name, frozenset()), new.get(name, frozenset())
                for ip in before - after:
                    self._series.pop((name, ip), None)
                if self._state == "running" and before != after:
                    self._update_port(name, before, after)
            self._wake.notify()

    def announced(self) -> dict[str, frozenset[str]]:
        """The addresses answered for now, per interface (those of interfaces with an open socket)."""
        with self._lock:
            return {name: frozenset(map(str, held)) for name, held in self._held.items() if name in self._ports}

    def reannounce(self, interface: str | None = None) -> None:
        """Announce every held pair (of `interface`) again on the schedule, e.g. after the carrier came back."""
        with self._lock:
            for name, held in self._held.items():
                if (interface is None or name == interface) and name in self._ports:
                    for ip in held:
                        self._announce_series(name, ip)
            self._wake.notify()

    def stats(self) -> dict[tuple[str, str], PairStats]:
        """(interface, address) -> counters, for every pair ever answered or announced."""
        with self._lock:
            return {pair: PairStats(*counts) for pair, counts in self._stats.items()}

    def frames_received(self) -> dict[str, int]:
        """ARP/NDP frames that reached the responder, per interface (everything else is filtered in the kernel)."""
        with self._lock:
            return dict(self._received)

    def start(self) -> None:
        """Open the sockets of the interfaces in use and start announcing; once only."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError("an L2Responder can be started once")
            self._state = "running"
            for name in self._held:
                self._open(name)
            self._announcer = threading.Thread(target=self._announce_loop, name="l2-announcer", daemon=True)
            self._announcer.start()

    def stop(self) -> None:
        """Stop answering and announcing, close every socket and join every thread (idempotent)."""
        with self._lock:
            self._state = "stopped"
            for port in list(self._ports.values()):
                self._retire(port)
            self._wake.notify_all()
            retired, self._retired = self._retired, []
        if self._announcer is not None:
            self._announcer.join()
        for port in retired:
            if port.thread is not None:
                port.thread.join()

    def __enter__(self) -> "L2Responder":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- sockets (all under self._lock) ---------------------------------- #

    def _open(self, name: str) -> _Port | None:
        """Open `name`'s socket, join its groups, announce everything held there; None if it cannot be opened."""
        try:
            port = _Port(name)
        except OSError as exc:
            if name not in self._unavailable:
                log.warning("cannot answer ARP/NDP on %s: %s (retrying every %.0f s)", name, exc, RECONCILE_PERIOD)
            self._unavailable.add(name)
            return None
        self._unavailable.discard(name)
        self._ports[name] = port
        for ip in self._held.get(name, ()):
            if ip.version == 6:
                port.join(ip)
            self._announce_series(name, ip)
        port.thread = threading.Thread(target=port.serve, args=(self._handle,), name=f"l2-{name}", daemon=True)
        port.thread.start()
        log.info("answering ARP/NDP on %s as %s", name, mac_text(port.mac))
        return port

    def _retire(self, port: _Port) -> None:
        del self._ports[port.name]
        port.close()
        self._retired.append(port)

    def _update_port(self, name: str, before: frozenset[IPAddress], after: frozenset[IPAddress]) -> None:
        port = self._ports.get(name)
        if port is None:
            if after:
                self._open(name)
            return
        if not after:
            self._retire(port)
            log.info("no address left on %s: stopped answering there", name)
            return
        for ip in before - after:
            if ip.version == 6:
                port.leave(ip)
        for ip in after - before:
            if ip.version == 6:
                port.join(ip)
            self._announce_series(name, ip)

    def _reconcile(self) -> None:
        """Reopen sockets of interfaces that appeared or were recreated; re-announce after a MAC change."""
        for name, held in self._held.items():
            port = self._ports.get(name)
            index = _index_of(name)
            if port is not None and port.ifindex != index:
                log.info("%s is gone or was recreated (index %s -> %s): reopening", name, port.ifindex, index)
                self._retire(port)
                port = None
            if port is None:
                if index is not None:
                    self._open(name)
                continue
            try:
                mac = port.current_mac()
            except OSError:
                continue
            if mac != port.mac:
                log.info("%s changed MAC %s -> %s: announcing again", name, mac_text(port.mac), mac_text(mac))
                port.mac = mac
                for ip in held:
                    self._announce_series(name, ip)
        self._retired = [p for p in self._retired if p.thread is not None and p.thread.is_alive()]

    # -- announcing -------------------------------------------------------- #

    def _announce_series(self, name: str, ip: IPAddress) -> None:
        """Schedule the pair's announcements from now on; an older series of it is dropped."""
        series = next(self._ids)
        self._series[(name, ip)] = series
        now = time.monotonic()
        for offset in self._schedule:
            heapq.heappush(self._due, (now + offset, next(self._ids), name, ip, series))

    def _announce_loop(self) -> None:
        """Send each due announcement (the lock is released between two), reconcile every second."""
        next_check = time.monotonic() + RECONCILE_PERIOD
        while True:
            with self._lock:
                if self._state != "running":
                    return
                now = time.monotonic()
                if now >= next_check:
                    self._reconcile()
                    next_check = now + RECONCILE_PERIOD
                if self._due and self._due[0][0] <= now:
                    _, _, name, ip, series = heapq.heappop(self._due)
                    port = self._ports.get(name)
                    if port is not None and self._series.get((name, ip)) == series:
                        sent = sum(port.send(frame) for frame in announcements(port.mac, ip))
                        self._count(name, ip, 1, sent)
                    continue
                until = min(next_check, self._due[0][0]) if self._due else next_check
                self._wake.wait(until - now)

    # -- receiving --------------------------------------------------------- #

    def _handle(self, port: _Port, frame: bytes) -> None:
        """Answer or report one received frame (receive thread)."""
        report: tuple[str, str, str] | None = None
        with self._lock:
            if self._ports.get(port.name) is not port:
                return  # retired, or replaced by a newer socket on the same interface
            self._received[port.name] += 1
            held = self._held.get(port.name)
            reaction = react(frame, port.mac, held) if held else None
            if reaction is None:
                return
            if reaction.reply is not None and reaction.answered is not None and port.send(reaction.reply):
                self._count(port.name, reaction.answered, 0, 1)
            if reaction.conflict is not None and self._conflict_due(*reaction.conflict):
                ip, other = reaction.conflict
                self._count(port.name, ip, 2, 1)
                report = (port.name, str(ip), mac_text(other))
        if report is not None:
            log.warning("conflict on %s: %s is also claimed by %s", *report)
            if self._on_conflict is not None:
                try:
                    self._on_conflict(*report)
                except Exception:  # noqa: BLE001 - the controller's bug must not end answering
                    log.exception("on_conflict failed for %s %s %s", *report)

    def _conflict_due(self, ip: IPAddress, other: bytes) -> bool:
        now = time.monotonic()
        last = self._last_conflict.get((ip, other))
        if last is not None and now - last < CONFLICT_INTERVAL:
            return False
        if len(self._last_conflict) > 4096:
            self._last_conflict = {k: t for k, t in self._last_conflict.items() if now - t < CONFLICT_INTERVAL}
        self._last_conflict[(ip, other)] = now
        return True

    def _count(self, name: str, ip: IPAddress, field: int, n: int) -> None:
        counts = self._stats.setdefault((name, str(ip)), [0, 0, 0])
        counts[field] += n
