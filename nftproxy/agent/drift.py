"""Drift: the agent restores its table as soon as another program changes it (issue 13, 9).

Someone runs `nft delete element inet nftproxy ...` or `nft flush ruleset`, and without this the
table stays wrong until the next change of that Service or the hourly rebuild. The kernel tells every
listener of the NFNLGRP_NFTABLES netlink group about each committed change (what `nft monitor` shows),
so the monitor listens there, notices a change to table inet nftproxy, and has the sync loop rebuild.

The agent's own commits must neither trigger it nor cost anything: around each commit the monitor
leaves the group (the kernel then builds no notifications for it at all: a rebuild at 10,000
Services would otherwise make it encode ~25 MB of them), and rejoins after. A commit by another
program that lands inside that window is not seen; the ruleset generation, read before and after,
says one happened (it moves once per commit, ours included), and the table is then rebuilt too, since
what that commit touched cannot be known. Cost per sync: two generation reads and two setsockopt
calls, a few tens of microseconds.

The packet path's own updates of the sessionAffinity maps send no notifications; element changes in
those maps are ignored anyway, as nothing but packets writes them.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..desired.skeleton import FAMILY, TABLE
from ..kernel import Applied, Kernel, StreamingKernel
from ..transaction.transaction import Transaction

log = logging.getLogger("nftproxy.drift")

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP, NETLINK_DROP_MEMBERSHIP = 1, 2
SO_RCVBUFFORCE = 33
NFNL_SUBSYS_NFTABLES = 10
NFPROTO = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}
# linux/netfilter/nf_tables.h: message types, and the attribute that names the table (1 in each of them)
NFT_MSG_NAMES = {0: "new table", 2: "deleted table", 3: "new chain", 5: "deleted chain", 6: "new rule",
                 8: "deleted rule", 9: "new set", 11: "deleted set", 12: "new element", 14: "deleted element",
                 18: "new object", 20: "deleted object", 22: "new flowtable", 24: "deleted flowtable"}
NFT_MSG_NEWGEN = 15
SETELEM_MSGS = (12, 14)
TABLE_ATTR, SETELEM_SET_ATTR = 1, 2
DYNAMIC_SETS = frozenset({"affinity-v4", "affinity-v6"})  # written by packets only (flags dynamic,timeout)
RCVBUF = 8 << 20


def _attributes(buf: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", buf, start)
        if length < 4:
            break
        out[kind & 0x3FFF] = buf[start + 4:start + length]
        start += (length + 3) & ~3
    return out


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def changes_to_table(data: bytes, family: int, table: str) -> Iterator[str | None]:
    """For each nftables notification in `data`: a description if it changed `table` (None for a
    generation message: the end of one committed batch); other tables' changes are skipped."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        subsys, msg = kind >> 8, kind & 0xFF
        if subsys == NFNL_SUBSYS_NFTABLES and offset + 20 <= offset + length:
            if msg == NFT_MSG_NEWGEN:
                yield None
            elif msg in NFT_MSG_NAMES and data[offset + 16] == family:
                attrs = _attributes(data, offset + 20, offset + length)
                if _text(attrs.get(TABLE_ATTR, b"")) == table:
                    set_name = _text(attrs.get(SETELEM_SET_ATTR, b"")) if msg in SETELEM_MSGS else ""
                    if set_name not in DYNAMIC_SETS:
                        yield NFT_MSG_NAMES[msg] + (f" in {set_name}" if set_name else "")
        offset += (length + 3) & ~3


class DriftMonitor:
    """Listens for changes to the agent's table made by anyone else; `on_drift(reason)` once per
    foreign commit that touched it (called from the monitor's thread)."""

    def __init__(self, on_drift: Callable[[str], None], family: str = FAMILY, table: str = TABLE,
                 generation: Callable[[], int] | None = None) -> None:
        self.on_drift = on_drift
        self.family = NFPROTO[family]
        self.table = table
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:  # a foreign flood (another program's big commit) should not overflow it
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.bind((0, 0))
        self._membership(True)
        if generation is None:
            from ..ops.netlink import NetlinkReader

            reader = NetlinkReader()
            generation = reader.generation
        self.generation = generation
        self._lock = threading.Lock()  # one own-commit window at a time
        self._thread: threading.Thread | None = None
        self.detected = 0  # foreign commits that touched the table (or may have)

    def _membership(self, join: bool) -> None:
        option = NETLINK_ADD_MEMBERSHIP if join else NETLINK_DROP_MEMBERSHIP
        self.sock.setsockopt(SOL_NETLINK, option, NFNLGRP_NFTABLES)

    @contextmanager
    def own_commit(self) -> Iterator[None]:
        """Around each of the agent's own commits: out of the group while it runs (see the module doc)."""
        with self._lock:
            before = self._generation()
            self._membership(False)
            committed = False
            try:
                yield
                committed = True
            finally:
                self._membership(True)
                after = self._generation() if committed else None
            if before is not None and after is not None and (after - before) % (1 << 32) > 1:
                self._report(f"{(after - before) % (1 << 32) - 1} commit(s) by another program landed while the "
                             "agent committed; what they changed is unknown")

    def _generation(self) -> int | None:
        try:
            return self.generation()
        except OSError as err:
            log.debug("cannot read the ruleset generation: %s", err)
            return None

    def _report(self, reason: str) -> None:
        self.detected += 1
        log.warning("table %s %s was changed behind the agent's back (%s): restoring it", "inet", self.table, reason)
        self.on_drift(reason)

    # --- the listening thread ------------------------------------------------------------------------
    def start(self, stop: threading.Event) -> DriftMonitor:
        self._thread = threading.Thread(target=self.run, args=(stop,), name="drift", daemon=True)
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: read notifications; report the first change to the table in each batch."""
        touched: str | None = None
        while not stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.5)
            if not ready:
                continue
            try:
                data = self.sock.recv(1 << 20)
            except OSError as err:
                touched = None
                if err.errno == errno.ENOBUFS:  # notifications were lost: a change to ours may be among them
                    self._report("notifications were lost (the socket overflowed)")
                else:  # never end the thread: without it nothing repairs drift until the periodic rebuild
                    log.warning("reading nftables notifications failed (%s): retrying", err)
                    stop.wait(1.0)
                continue
            for change in changes_to_table(data, self.family, self.table):
                if change is None:  # a batch ended: report it once, whatever it held
                    if touched is not None:
                        self._report(touched)
                    touched = None
                elif touched is None:
                    touched = change

    def close(self) -> None:
        self.sock.close()


class WatchedKernel:
    """The agent's kernel, every commit inside the monitor's own-commit window; anything else is the
    wrapped kernel's."""

    def __init__(self, kernel: Kernel, monitor: DriftMonitor) -> None:
        self.kernel = kernel
        self.monitor = monitor

    def apply(self, tx: Transaction) -> Applied:
        with self.monitor.own_commit():
            return self.kernel.apply(tx)

    def delete_table(self) -> None:
        with self.monitor.own_commit():
            self.kernel.delete_table()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kernel, name)


class WatchedStreamingKernel(WatchedKernel):
    def apply_stream(self, chunks: Iterable[str]) -> Applied:
        assert isinstance(self.kernel, StreamingKernel)  # `watched` wraps only a streaming kernel in this
        with self.monitor.own_commit():
            return self.kernel.apply_stream(chunks)


def watched(kernel: Kernel, monitor: DriftMonitor) -> WatchedKernel:
    """`kernel` with its commits hidden from `monitor`; streaming if `kernel` streams (the proxier asks)."""
    if isinstance(kernel, StreamingKernel):
        return WatchedStreamingKernel(kernel, monitor)
    return WatchedKernel(kernel, monitor)


def watch_for_drift(kernel: Kernel, on_drift: Callable[[str], None], stop: threading.Event) -> Kernel:
    """`kernel` with drift detection running until `stop`, as `nftproxy run` uses it. Without the netlink
    group (no permission, an old kernel) the kernel as it is, said once: the periodic rebuild repairs."""
    try:
        monitor = DriftMonitor(on_drift)
    except OSError as err:
        log.warning("cannot watch nftables for changes by other programs (%s): drift is repaired by the "
                    "periodic rebuild only", err)
        return kernel
    monitor.start(stop)
    return watched(kernel, monitor)
