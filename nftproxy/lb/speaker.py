"""This node's L2 announcements: which addresses it answers ARP/NDP for, kept in step with the cluster.

Every node decides the same way (`announce.decide`) from the same inputs; the only input that does
not come from the API is the set of live, eligible nodes, which comes from the heartbeat membership,
so a failover never waits for the API server. A node announces an address only once its own rules
for that address are committed (otherwise it would attract traffic it cannot forward), and only on
interfaces with carrier.

Split brain (another machine answering for an address we announce) is resolved towards the
deterministic winner between the two: the loser stands back, the winner announces again at once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..objects.model import ObjectRef
from .announce import Decision, choose, decide, wanted_on
from .view import ClusterView

log = logging.getLogger("nftproxy.lb.speaker")
YIELD_SECONDS = 30.0  # how long a loser of a split brain stays back unless membership changes first
LOOK_AGAIN_SECONDS = 1.0  # how often to look for the interface holding the node's address while none does


class Responder(Protocol):
    def set_addresses(self, wanted: Mapping[str, Any]) -> None: ...

    def reannounce(self, interface: str | None = None) -> None: ...


class EventSink(Protocol):
    def record(self, kind: str, ref: ObjectRef, reason: str, message: str, type_: str = "Warning",
               api_version: str | None = None) -> None: ...


@dataclass
class SpeakerStats:
    conflicts: int = 0
    announced: dict[str, frozenset[str]] = field(default_factory=dict)


def set_committed(committed: dict[ObjectRef, frozenset[str]], by_address: Counter[str], ref: ObjectRef,
                  addresses: Iterable[str]) -> bool:
    """Record a Service's LB addresses now in this node's kernel, in `committed` (per Service) and
    `by_address` (Services may share an address); whether anything changed."""
    new = frozenset(addresses)
    old = committed.get(ref, frozenset())
    if old == new:
        return False
    by_address.subtract(old)
    by_address.update(new)
    for address in old - new:
        if by_address[address] <= 0:
            del by_address[address]
    if new:
        committed[ref] = new
    else:
        committed.pop(ref, None)
    return True


class Speaker:
    def __init__(
        self,
        me: str,
        view: ClusterView,
        responder: Responder,
        default_interface: Callable[[str | None], str | None],
        events: EventSink | None = None,
        on_announced: Callable[[dict[str, frozenset[str]]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.me = me
        self.view = view
        self.responder = responder
        self.default_interface = default_interface
        self.events = events
        self.on_announced = on_announced
        self.clock = clock
        self.live: frozenset[str] = frozenset()
        self.settled = False
        self.committed: dict[ObjectRef, frozenset[str]] = {}  # LB addresses in this node's kernel
        self._allowed: Counter[str] = Counter()  # the same, by address (Services may share one)
        self._mine: dict[ObjectRef, Decision] = {}  # the decisions naming this node: what _apply walks
        self.no_carrier: set[str] = set()
        self.decisions: dict[ObjectRef, Decision] = {}
        self.yielded: dict[str, tuple[str, float]] = {}  # address -> (winner, until)
        self.stats = SpeakerStats()
        self._interface: str | None = None
        self._interface_for: str | None = None
        self._look_again_at = 0.0  # while no interface holds the node's address: when to look again
        self._dirty_all = True
        self._dirty: set[ObjectRef] = set()
        self._wanted: dict[str, frozenset[str]] = {}

    @property
    def interface(self) -> str | None:
        """The interface announcements go out on by default: the one holding the node's address."""
        return self._interface

    # --- inputs ---------------------------------------------------------------------------------
    def set_live(self, live: frozenset[str], settled: bool = True) -> None:
        if live != self.live or settled != self.settled:
            self.live, self.settled = live, settled
            self.yielded.clear()  # membership moved: the deterministic choice speaks again
            self._dirty_all = True

    def set_committed(self, ref: ObjectRef, addresses: Iterable[str]) -> None:
        if set_committed(self.committed, self._allowed, ref, addresses):
            self._dirty.add(ref)

    def set_carrier(self, interface: str, carrier: bool) -> None:
        before = interface in self.no_carrier
        if carrier:
            self.no_carrier.discard(interface)
        else:
            self.no_carrier.add(interface)
        if before != (not carrier):
            self._dirty_all = True

    def conflict(self, interface: str, address: str, mac: str, other_node: str | None,
                 other_leaving: bool = False) -> None:
        """Someone else answered for `address`, which we announce: settle it towards the winner.

        A node that told us it is leaving (SIGTERM) still answers during its hand-over: that is no split
        brain, we simply announce again. Otherwise the deterministic choice between the two decides,
        whatever either side's membership says (heartbeats lost while ARP gets through is a partition)."""
        if other_node and other_leaving:
            log.info("node %s still answers for %s during its hand-over: announcing again", other_node, address)
            self.responder.reannounce(interface)
            return
        self.stats.conflicts += 1
        ref = next((r for r, d in self.decisions.items() if address in d.addresses and d.node == self.me), None)
        first = self.decisions[ref].addresses[0] if ref is not None else address
        winner = choose(first, {self.me, other_node}) if other_node else self.me
        who = f"node {other_node}" if other_node else f"an unknown host ({mac})"
        if winner == self.me:
            log.warning("split brain on %s: %s answers for %s too; announcing again (we are the rightful node)",
                        interface, who, address)
            self.responder.reannounce(interface)
        else:
            log.warning("split brain on %s: %s answers for %s too; standing back for it", interface, who, address)
            assert other_node is not None
            self.yielded[address] = (other_node, self.clock() + YIELD_SECONDS)
            self._dirty_all = True
        if self.events is not None and ref is not None:
            self.events.record("Service", ref, "AnnouncementConflict",
                               f"{who} also answers for {address} on {interface}; resolved to node {winner}")

    # --- the decision ---------------------------------------------------------------------------
    def update(self) -> dict[str, frozenset[str]]:
        """Recompute what changed and hand the result to the responder; returns interface -> addresses.
        A turn with nothing new costs nothing (the agent's loop turns every 50 ms, idle or not)."""
        changes = self.view.changes
        now = self.clock()
        expired = [a for a, (_, until) in self.yielded.items() if until <= now]
        for address in expired:
            del self.yielded[address]
        # no interface held the node's address (a boot race, DHCP): look again now and then, though
        # nothing else changed, or what this node should announce would wait for an unrelated event
        look_again = self._interface is None and bool(self._mine) and now >= self._look_again_at
        if not (changes.everything or changes.services or self._dirty_all or self._dirty or expired or look_again):
            return self._wanted
        previous = self.decisions
        if changes.everything or self._dirty_all:
            refs = set(self.view.services) | set(self.decisions)
            self.decisions = {}
            self._mine.clear()
        else:
            refs = changes.services | self._dirty
            previous = dict((r, self.decisions[r]) for r in refs if r in self.decisions)
        self._dirty_all = False
        self._dirty.clear()
        pools = self.view.pool_list()
        adverts = list(self.view.advertisements.values())
        live = self.live if self.settled else frozenset()
        for ref in refs:
            service = self.view.announced(ref)
            old = previous.get(ref)
            if service is None:
                self.decisions.pop(ref, None)
                self._mine.pop(ref, None)
                if old is not None and old.node == self.me:
                    log.info("Service %s: no longer announced here", ref)
                continue
            decision = decide(service, pools, adverts, self.view.nodes, live)
            self.decisions[ref] = decision
            if decision.node == self.me:
                self._mine[ref] = decision
            else:
                self._mine.pop(ref, None)
            if decision.node == self.me and (old is None or old.node != self.me):
                log.info("Service %s: announcing %s from this node", ref, ", ".join(decision.addresses))
                if self.events is not None:
                    self.events.record("Service", ref, "nodeAssigned",
                                       f'announcing from node "{self.me}" with protocol "layer2"', "Normal")
        return self._apply()

    def _apply(self) -> dict[str, frozenset[str]]:
        me_info = self.view.nodes.get(self.me)
        address = me_info.address if me_info else None
        now = self.clock()
        if address != self._interface_for or self._interface is None:
            self._look_again_at = now + LOOK_AGAIN_SECONDS  # if none is found, or the lookup fails
            self._interface_for = address
            try:
                self._interface = self.default_interface(address)
            except OSError as err:  # netlink refused the dump: as if none held it, looked for again later
                log.warning("cannot tell which interface holds %s (%s): looking again in %.0f s",
                            address, err, LOOK_AGAIN_SECONDS)
                self._interface = None
        wanted = wanted_on(self.me, self._mine.values(), self._interface)
        allowed = self._allowed
        out: dict[str, frozenset[str]] = {}
        for interface, addresses in wanted.items():
            if interface in self.no_carrier:
                continue
            keep = frozenset(a for a in addresses if a in allowed and self.yielded.get(a, ("", 0.0))[1] <= now)
            if keep:
                out[interface] = keep
        if out != self._wanted:
            self.responder.set_addresses(out)
            self._wanted = out
            self.stats.announced = out
            if self.on_announced is not None:
                self.on_announced(out)
        return out

    def withdraw_all(self) -> None:
        self._wanted = {}
        self.responder.set_addresses({})
