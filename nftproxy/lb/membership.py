"""Which nodes may answer for a LoadBalancer address right now: a small UDP heartbeat protocol.

L2 announcement needs every agent to agree, within a fraction of a second and without the API
server, on the set of *eligible* nodes (alive, rules committed, not shutting down, link up). Peers
(node name -> InternalIP) come from Node objects; liveness comes from heartbeats sent directly on
the node network, every ``interval`` seconds, by unicast UDP to each peer.

Functional core, imperative shell: :class:`MembershipView` is a pure state machine fed with
packets, peer lists and times; :class:`Membership` owns the socket, one thread and the clock.

Defaults (``interval`` 0.1 s, ``dead_after`` 0.5 s), against the target of traffic flowing again
through another node p50 <= 1 s, p99 <= 2 s after a node dies:

* A peer is dead after 0.5 s without a heartbeat, i.e. five missed heartbeats in a row: the loss of
  up to four consecutive heartbeats is tolerated. At 1 % independent loss, five in a row happen with
  probability 1e-10 per heartbeat, about once in 30 years per pair of nodes.
* The shell wakes exactly at the next expiry, so a peer is declared dead 0.5 s after the last
  heartbeat it sent: 0.4-0.5 s after it died (it died up to one interval after that heartbeat),
  <= 0.6 s even counting a late wake-up. That leaves ~0.4 s of the 1 s p50 for the successor to send
  gratuitous ARP / unsolicited NA and for clients and switches to act on it.
* A planned stop needs no timeout: a ``leaving`` heartbeat (sent at once on ``set_local``, and as a
  burst by ``stop``) removes the node from its peers' eligible sets within one network round trip.
* A starving sender (agent paused > 0.4 s) is declared dead and comes back with its next
  heartbeat; on loaded nodes raise both values (``dead_after`` >= 4 x ``interval``).

Packet cost: a heartbeat is ~80 bytes of payload (21-byte header, the node name, a 32-byte HMAC),
~125 bytes on the wire. Every node sends to and hears from every peer 1/``interval`` times a
second: with 100 nodes, 990 packets/s (~1 Mbit/s) each way per node, ~10^5 packets/s on the whole
network; with 1,000 nodes, ~10,000 packets/s (~10 Mbit/s) each way per node, and receiving,
authenticating and sending them takes about a fifth of a core in Python (measured: 20 %). For
large clusters raise ``interval`` (0.5 s with ``dead_after`` 2.5 s divides the cost by 5, with
~2.5 s failover) or give this protocol only the nodes that may announce (those the L2
advertisements select), which is all it needs.

Wire format (version 1, network byte order): ``b"nM"``, version (u8), flags (u8: 1 ready,
2 leaving, 4 carrier, 0x80 a MAC follows), incarnation (u64: the agent's start time in ns, so a
restarted agent is recognised as new), sequence (u64, per incarnation), name length (u8), the node
name (UTF-8), then with a shared key HMAC-SHA256 over everything before it. With a key, the MAC
proves the sender and older (incarnation, seq) pairs are refused, so replays do nothing while the
peer is alive (once it is dead, a lower incarnation is taken, see ``MembershipView.heard``); without
one, a heartbeat counts only when it comes from the address (and port) known for the node it names.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

log = logging.getLogger("nftproxy.membership")

DEFAULT_PORT = 7473  # UDP
VERSION = 1
MAGIC = b"nM"
_HEADER = struct.Struct("!2sBBQQB")  # magic, version, flags, incarnation, seq, name length
MAC_SIZE = 32
MAX_NAME = 253  # a Node name is a DNS subdomain
FLAG_READY, FLAG_LEAVING, FLAG_CARRIER, FLAG_MAC = 0x01, 0x02, 0x04, 0x80
FAREWELL_COUNT = 3  # leaving heartbeats sent by stop(): one lost packet must not cost a dead_after
FAREWELL_SPACING = 0.005  # seconds between them, so a short burst of loss does not take all
MIN_KEY = 16  # bytes; a shorter shared secret is a misconfiguration, not a key


@dataclass(frozen=True, slots=True)
class LocalState:
    """What this agent tells its peers about itself."""

    ready: bool  # this agent has committed its rules (its first sync succeeded and the last one did not fail)
    leaving: bool = False  # SIGTERM received: peers must stop choosing this node now
    carrier: bool = True  # the announcing interface has carrier


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One decoded heartbeat; ``authenticated`` when its MAC was checked against our key."""

    node: str
    incarnation: int
    seq: int
    state: LocalState
    authenticated: bool = False


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """A peer as this node sees it (for metrics and status)."""

    address: str  # where heartbeats go, "host:port"
    alive: bool = False
    ready: bool = False
    leaving: bool = False
    carrier: bool = False
    last_heard: float | None = None
    incarnation: int | None = None
    seq: int | None = None

    @property
    def eligible(self) -> bool:
        """Whether this peer may be chosen to announce."""
        return self.alive and self.ready and not self.leaving and self.carrier


def encode(node: str, incarnation: int, seq: int, state: LocalState, key: bytes | None = None) -> bytes:
    """One heartbeat datagram (see the module docstring for the layout)."""
    name = node.encode()
    if not 0 < len(name) <= MAX_NAME:
        raise ValueError(f"node name must be 1-{MAX_NAME} bytes, not {len(name)}")
    if not (0 <= incarnation < 2**64 and 0 <= seq < 2**64):
        raise ValueError("incarnation and seq must fit in 64 unsigned bits")
    flags = (
        (FLAG_READY if state.ready else 0)
        | (FLAG_LEAVING if state.leaving else 0)
        | (FLAG_CARRIER if state.carrier else 0)
        | (FLAG_MAC if key is not None else 0)
    )
    body = _HEADER.pack(MAGIC, VERSION, flags, incarnation, seq, len(name)) + name
    return body + hmac.new(key, body, hashlib.sha256).digest() if key is not None else body


def decode(payload: bytes, key: bytes | None = None) -> Heartbeat | None:
    """The heartbeat in ``payload``; None for garbage, another version, or (with a key) a missing or bad MAC."""
    if len(payload) < _HEADER.size:
        return None
    magic, version, flags, incarnation, seq, length = _HEADER.unpack_from(payload)
    end = _HEADER.size + length
    has_mac = bool(flags & FLAG_MAC)
    if magic != MAGIC or version != VERSION or length == 0 or len(payload) != end + (MAC_SIZE if has_mac else 0):
        return None
    if key is not None:
        expected = hmac.new(key, payload[:end], hashlib.sha256).digest()
        if not has_mac or not hmac.compare_digest(payload[end:], expected):
            return None
    try:
        node = payload[_HEADER.size : end].decode()
    except UnicodeDecodeError:
        return None
    state = LocalState(
        ready=bool(flags & FLAG_READY), leaving=bool(flags & FLAG_LEAVING), carrier=bool(flags & FLAG_CARRIER)
    )
    return Heartbeat(node, incarnation, seq, state, authenticated=key is not None)


def parse_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``"10.0.0.1"``, ``"10.0.0.1:7001"``, ``"fd00::1"`` or ``"[fd00::1]:7001"`` -> (canonical IP, port).

    Canonical so that a peer's configured address and a datagram's source compare equal
    (v6 zero compression, IPv4-mapped v6 as plain v4). Raises ValueError otherwise.
    """
    host, port = address.strip(), default_port
    if host.startswith("["):
        host, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {address!r}")
        if rest:
            port = int(rest[1:])
    elif host.count(":") == 1:
        host, _, text = host.partition(":")
        port = int(text)
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {address!r}")
    return str(ip), port


def format_address(host: str, port: int) -> str:
    """The inverse of :func:`parse_address`: ``"host:port"``, v6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MembershipView:
    """Who is alive and eligible, from heartbeats and times given to it: no sockets, no clock reads.

    Time advances only through ``set_peers``, ``heard`` and ``expire``; the first of them also marks
    the start that ``settled`` counts from. A heartbeat costs O(1) and ``expire`` scans the peers only
    when one may be due, so 1,000 peers at 10 heartbeats/s each stay cheap.
    """

    def __init__(
        self,
        me: str,
        interval: float = 0.1,
        dead_after: float = 0.5,
        *,
        key: bytes | None = None,
        port: int = DEFAULT_PORT,
    ) -> None:
        if interval <= 0 or dead_after <= interval:
            raise ValueError(f"need 0 < interval < dead_after, got interval={interval} dead_after={dead_after}")
        self.me = me
        self.interval = interval
        self.dead_after = dead_after
        self.key = key
        self.port = port  # for peer and sender addresses that name none
        #: bumped when peers come or go, die, revive or change eligibility: change detection in O(1)
        self.generation = 0
        self._addresses: dict[str, tuple[str, int]] = {}
        self._peers: dict[str, PeerStatus] = {}
        self._eligible_peers: frozenset[str] = frozenset()
        self._unheard: set[str] = set()  # peers not heard since they were added
        self._next_expiry: float | None = None  # no alive peer expires before this (a lower bound)
        self._started: float | None = None
        self._all_heard = False  # every peer was heard once: settled early, for good

    def _observe(self, now: float) -> None:
        if self._started is None:
            self._started = now

    def _rescan_expiry(self) -> None:
        heard = [p.last_heard for p in self._peers.values() if p.alive and p.last_heard is not None]
        self._next_expiry = min(heard) + self.dead_after if heard else None

    def _recount(self) -> bool:
        """Recompute the derived state from all peers; whether the eligible peers changed."""
        self.generation += 1
        self._rescan_expiry()
        current = frozenset(name for name, peer in self._peers.items() if peer.eligible)
        changed, self._eligible_peers = current != self._eligible_peers, current
        return changed

    def set_peers(self, peers: Mapping[str, str], now: float) -> None:
        """Node name -> address (optionally with a port); ``me`` is skipped, a malformed address logged and skipped.

        A new peer, or one whose address changed, is not alive until heard; a peer missing here is forgotten.
        """
        self._observe(now)
        addresses: dict[str, tuple[str, int]] = {}
        for name, address in peers.items():
            if name == self.me:
                continue
            try:
                addresses[name] = parse_address(address, self.port)
            except ValueError:
                log.warning("ignoring peer %s with malformed address %r", name, address)
        for name, addr in addresses.items():
            if self._addresses.get(name) != addr:
                self._peers[name] = PeerStatus(format_address(*addr))
                self._unheard.add(name)
        for name in self._peers.keys() - addresses.keys():
            del self._peers[name]
            self._unheard.discard(name)
        self._addresses = addresses
        self._recount()

    def heard(self, sender_address: str, payload: bytes, now: float) -> bool:
        """Take one datagram; True if the eligible peers changed.

        Ignored: undecodable or unauthenticated payloads, unknown or own names, (without a key) a
        source other than the named peer's address, and anything not newer than what was last heard
        (an older incarnation, or a seq not above the last one within the incarnation). Once a peer is
        dead, any other incarnation is taken: a restarted agent whose wall clock went back (an RTC
        corrected by NTP after a reboot) must not be shut out for good.
        """
        self._observe(now)
        beat = decode(payload, self.key)
        if beat is None or beat.node not in self._addresses:
            return False
        if self.key is None:
            try:
                source = parse_address(sender_address, self.port)
            except ValueError:
                return False
            if source != self._addresses[beat.node]:
                return False
        old = self._peers[beat.node]
        if old.incarnation is not None and old.seq is not None:
            if old.alive and (beat.incarnation, beat.seq) <= (old.incarnation, old.seq):
                return False
            if beat.incarnation == old.incarnation and beat.seq <= old.seq:
                return False  # dead peers too: its last incarnation's packets are replays or very late
        state = beat.state
        new = PeerStatus(old.address, True, state.ready, state.leaving, state.carrier, now, beat.incarnation, beat.seq)
        self._peers[beat.node] = new
        self._unheard.discard(beat.node)
        self._all_heard = self._all_heard or not self._unheard
        if self._next_expiry is None:
            self._next_expiry = now + self.dead_after  # the only alive peer; otherwise the bound still holds
        if new.eligible != old.eligible:
            self._eligible_peers = self._eligible_peers ^ {beat.node}
        if (new.alive, new.eligible) != (old.alive, old.eligible):
            self.generation += 1
        return new.eligible != old.eligible

    def expire(self, now: float) -> bool:
        """Declare dead the peers silent for ``dead_after``; True if the eligible peers changed."""
        self._observe(now)
        if self._next_expiry is None or now < self._next_expiry:
            return False
        died = False
        for name, peer in list(self._peers.items()):
            if peer.alive and peer.last_heard is not None and now >= peer.last_heard + self.dead_after:
                self._peers[name] = replace(peer, alive=False)
                died = True
        if died:
            return self._recount()
        self._rescan_expiry()  # the bound was stale: heartbeats came in since
        return False

    def settled(self, now: float) -> bool:
        """Whether this node may act on its view: ``dead_after`` after the start, or once every peer was heard.

        Before that, an agent that just started would see itself alone and claim every address. Once
        settled, always settled: a Node added later does not make the others wait.
        """
        if self._started is None:
            return False
        return self._all_heard or now >= self._started + self.dead_after

    def includes_me(self, local: LocalState, now: float) -> bool:
        """Whether this node is eligible in its own view: ready, not leaving, with carrier, and settled."""
        return local.ready and not local.leaving and local.carrier and self.settled(now)

    def eligible(self, local: LocalState, now: float) -> frozenset[str]:
        """Alive, ready, not leaving peers with carrier; plus ``me`` per :meth:`includes_me`."""
        return self._eligible_peers | {self.me} if self.includes_me(local, now) else self._eligible_peers

    def advertised(self, local: LocalState, now: float) -> LocalState:
        """What to tell peers: not ready until settled, so that peers choose this node when it chooses itself."""
        return replace(local, ready=False) if local.ready and not self.settled(now) else local

    def next_deadline(self, now: float) -> float | None:
        """When ``expire`` or ``settled`` may next change something (possibly earlier; None: nothing pending)."""
        times = [] if self._next_expiry is None else [self._next_expiry]
        if self._started is not None and not self.settled(now):
            times.append(self._started + self.dead_after)
        return min(times, default=None)

    def targets(self) -> list[tuple[str, int]]:
        """Where heartbeats go: every peer's (ip, port)."""
        return list(self._addresses.values())

    def peers(self) -> dict[str, PeerStatus]:
        """Every known peer's status, by node name."""
        return dict(self._peers)


class Membership:
    """The shell: a UDP socket bound to (bind_address, port) and one thread that sends and receives.

    ``on_change(eligible)`` runs on that thread whenever the eligible set changes (it must not block).
    A planned hand-over (SIGTERM): ``set_local(leaving=True)`` first, so peers drop this node and
    take its addresses over within a round trip while it still forwards; ``stop()`` after a grace
    period (clients' ARP/ND caches follow the successor's gratuitous announcements).
    """

    def __init__(
        self,
        me: str,
        bind_address: str,
        port: int = DEFAULT_PORT,
        interval: float = 0.1,
        dead_after: float = 0.5,
        key: bytes | None = None,
        on_change: Callable[[frozenset[str]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if key is not None and len(key) < MIN_KEY:
            raise ValueError(f"a heartbeat key needs at least {MIN_KEY} bytes")
        encode(me, 0, 0, LocalState(ready=False))  # refuse an unusable name now, not in the thread
        self.me = me
        self.bind_address = bind_address
        self.port = port  # 0: an ephemeral port (tests); see ``address``
        self.interval = interval
        self.key = key
        self.on_change = on_change
        self.clock = clock
        self.incarnation = time.time_ns()  # wall clock: larger after a restart, also after a reboot
        self._view = MembershipView(me, interval, dead_after, key=key, port=port or DEFAULT_PORT)
        self._lock = threading.Lock()
        self._local = LocalState(ready=False)
        self._sent: LocalState | None = None  # state of the last heartbeat sent
        self._send_now = True
        self._seq = 0
        self._stopping = False
        self._sock: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._reported: frozenset[str] = frozenset()  # what on_change was last told
        self._seen: tuple[int, bool] | None = None  # (view generation, me eligible) at the last _notify
        self._alive: frozenset[str] = frozenset()
        self._send_errors: dict[tuple[str, int], str] = {}

    # --- the API the controller uses --------------------------------------------------------------
    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Node name -> InternalIP (``"ip"``, ``"ip:port"``, ``"[v6]:port"``); new peers get a heartbeat at once."""
        with self._lock:
            self._view.set_peers(peers, self.clock())
            self._send_now = True
        self._wake()

    def set_local(self, state: LocalState) -> None:
        """This node's state; a change goes out at once, not at the next interval."""
        with self._lock:
            self._local = state
        self._wake()

    def eligible(self) -> frozenset[str]:
        """The nodes that may announce now, this one included when it may."""
        with self._lock:
            now = self.clock()
            self._view.expire(now)
            return self._view.eligible(self._local, now)

    def settled(self) -> bool:
        """False during the first ``dead_after`` (until every peer was heard)."""
        with self._lock:
            return self._view.settled(self.clock())

    def peers(self) -> dict[str, PeerStatus]:
        """Every peer's status, for metrics and status pages."""
        with self._lock:
            self._view.expire(self.clock())
            return self._view.peers()

    @property
    def address(self) -> str:
        """The bound "host:port" (after ``start``; the port chosen when ``port`` was 0)."""
        if self._sock is None:
            raise RuntimeError("not started")
        host, port = self._sock.getsockname()[:2]
        return format_address(parse_address(host, port)[0], port)

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the socket and start the thread; the first heartbeat leaves at once."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._sock = _bind(self.bind_address, self.port)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        with self._lock:
            self._view.expire(self.clock())  # marks the start that settled() counts from
        self._thread = threading.Thread(target=self._run, name=f"membership-{self.me}", daemon=True)
        self._thread.start()

    def stop(self, farewell: bool = True) -> None:
        """Stop the thread and close the socket; with ``farewell`` first a burst of ``leaving`` heartbeats."""
        if self._thread is None or self._sock is None:
            return
        with self._lock:
            self._stopping = True
        self._wake()
        self._thread.join(timeout=max(2.0, 10 * self.interval))
        if farewell:
            for i in range(FAREWELL_COUNT):
                if i:
                    time.sleep(FAREWELL_SPACING)
                with self._lock:
                    payload, targets = self._heartbeat(replace(self._local, leaving=True))
                self._send(payload, targets)
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._thread = None

    # --- the thread -------------------------------------------------------------------------------
    def _wake(self) -> None:
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"\0")
            except OSError:  # buffer full: a wake-up is pending anyway; closed: stopping
                pass

    def _heartbeat(self, state: LocalState) -> tuple[bytes, list[tuple[str, int]]]:
        """The next datagram and its destinations (called with the lock held)."""
        self._seq += 1
        self._sent = state
        return encode(self.me, self.incarnation, self._seq, state, self.key), self._view.targets()

    def _run(self) -> None:
        assert self._sock is not None and self._wake_r is not None
        selector = selectors.DefaultSelector()
        selector.register(self._sock, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        next_send = self.clock()
        try:
            while True:
                now = self.clock()
                outgoing: tuple[bytes, list[tuple[str, int]]] | None = None
                with self._lock:
                    if self._stopping:
                        return
                    self._view.expire(now)
                    state = self._view.advertised(self._local, now)
                    if now >= next_send or self._send_now or state != self._sent:
                        outgoing = self._heartbeat(state)
                        self._send_now, next_send = False, now + self.interval
                    expiry = self._view.next_deadline(now)
                    deadline = next_send if expiry is None else min(next_send, expiry)
                if outgoing is not None:
                    self._send(*outgoing)
                self._notify()
                for key, _ in selector.select(max(deadline - self.clock(), 0.0)):
                    if key.fileobj is self._sock:
                        self._receive()
                    else:
                        _drain(self._wake_r)
        except Exception:  # noqa: BLE001 - a dead thread would silently make every peer drop this node
            log.exception("membership thread failed; peers will declare %s dead", self.me)
        finally:
            selector.close()

    def _send(self, payload: bytes, targets: list[tuple[str, int]]) -> None:
        assert self._sock is not None
        family = self._sock.family
        for target in targets:
            host, port = target
            if family == socket.AF_INET6 and ":" not in host:
                host = "::ffff:" + host
            try:
                if family == socket.AF_INET and ":" in host:
                    raise OSError(f"cannot reach IPv6 peer {host} from a socket bound to IPv4")
                self._sock.sendto(payload, (host, port))
            except OSError as exc:
                if self._send_errors.get(target) != str(exc):  # once per peer and kind of error
                    log.warning("heartbeat to %s failed: %s", format_address(*target), exc)
                    self._send_errors[target] = str(exc)
            else:
                if self._send_errors.pop(target, None) is not None:
                    log.info("heartbeats to %s go out again", format_address(*target))

    def _receive(self) -> None:
        assert self._sock is not None
        while True:
            try:
                payload, source = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors queued on the socket: not fatal
                log.debug("receive: %s", exc)
                continue
            with self._lock:
                self._view.heard(format_address(source[0], source[1]), payload, self.clock())

    def _notify(self) -> None:
        """Log peers that came or went and call ``on_change`` when the eligible set changed.

        Runs after every wake-up, so it looks at the peers only when the view's generation moved.
        """
        with self._lock:
            now = self.clock()
            seen = (self._view.generation, self._view.includes_me(self._local, now))
            if seen == self._seen:
                return
            self._seen = seen
            current = self._view.eligible(self._local, now)
            alive = frozenset(name for name, peer in self._view.peers().items() if peer.alive)
        for name in sorted(alive - self._alive):
            log.info("peer %s is alive", name)
        for name in sorted(self._alive - alive):
            log.info("peer %s is dead or gone", name)
        self._alive = alive
        if current == self._reported:
            return
        log.info("eligible nodes: %s", ", ".join(sorted(current)) or "none")
        self._reported = current
        if self.on_change is not None:
            try:
                self.on_change(current)
            except Exception:  # noqa: BLE001 - the callback's failure must not stop the heartbeats
                log.exception("membership on_change callback failed")


def _bind(bind_address: str, port: int) -> socket.socket:
    """A non-blocking UDP socket on (bind_address, port); "::" also takes IPv4, heartbeats are marked CS6."""
    ip = ipaddress.ip_address(bind_address or "0.0.0.0")
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            if ip.is_unspecified:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0xC0)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)  # network control: queued ahead of bulk traffic
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # room for a burst from 1,000 peers
        sock.bind((str(ip), port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass
