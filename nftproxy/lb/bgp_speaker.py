"""BGP mode inside the agent: keeps this node's BGP speaker (BIRD, `bird`) in step with the cluster.

Runs on the LoadBalancer loop like the L2 speaker: `update()` after every turn computes the plan
(`bgp.plan`) when something it depends on changed and hands BIRD's configuration to the supervisor;
`status()` gets the sessions' state from the supervisor's thread (through the loop's queue) and turns
it into metrics and Events. Nothing starts before this node's first sync is committed, so a restarted
agent's BIRD comes up with every route at once (graceful restart: no withdrawal in between).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..objects.model import ObjectRef
from ..objects.parse import InvalidObject
from .bgp import Plan, Problem, plan, router_id
from .bgp_objects import BFDProfile, BGPPeer, check_password
from .bird import RESTART_TIME, ProtocolStatus, render
from .speaker import set_committed
from .view import ClusterView

log = logging.getLogger("nftproxy.lb.bgp")

PEER_API_VERSION = "metallb.io/v1beta2"
DOWN_GRACE = 5.0  # seconds a session may take to come up before an Event says it did not
PASSWORD_REFRESH = 300.0  # seconds between reads of a passwordSecret (key rotation)


@dataclass(frozen=True, slots=True)
class BGPStatus:
    """The supervisor's look at BIRD's sessions, relayed to the loop."""

    protocols: Mapping[str, ProtocolStatus]


@dataclass(frozen=True, slots=True)
class PasswordRead:
    peer: ObjectRef
    password: str | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class SpeakerFailed:
    """BIRD died (the supervisor starts it again) or could not be started."""

    reason: str


def secret_reader(core_api: Any) -> Callable[[ObjectRef], str]:
    """passwordSecret: the "password" key of a Secret (kubernetes.io/basic-auth, as MetalLB wants)."""

    def read(ref: ObjectRef) -> str:
        secret = core_api.read_namespaced_secret(ref.name, ref.namespace)
        data = secret.data or {}
        if "password" not in data:
            raise InvalidObject("Secret", ref, "data.password", "missing")
        return base64.b64decode(data["password"]).decode()

    return read


@dataclass
class _SessionWatch:
    peer: BGPPeer
    down_since: float | None
    reported: str = ""  # the reason an Event already gave for this down period
    established: bool = False


class BGPSpeaker:
    def __init__(self, me: str, view: ClusterView, supervisor: Any, events: Any = None, metrics: Any = None,
                 read_secret: Callable[[ObjectRef], str] | None = None,
                 post: Callable[[Any], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 restart_time: int = RESTART_TIME) -> None:
        self.me = me
        self.view = view
        self.supervisor = supervisor
        self.events = events
        self.metrics = metrics
        self.read_secret = read_secret
        self.post = post  # the loop's queue.put: where secret reads report back
        self.clock = clock
        self.restart_time = restart_time
        self.committed: dict[ObjectRef, frozenset[str]] = {}
        self._allowed: Counter[str] = Counter()
        self.ready = False  # the first sync's addresses are in: what BIRD starts with is complete
        self.plan = Plan()
        self.config: str | None = None
        self.passwords: dict[ObjectRef, str] = {}
        self._password_asked: dict[ObjectRef, tuple[ObjectRef, float]] = {}
        self._dirty = True
        self._reported: set[Problem] = set()
        self._watch: dict[str, _SessionWatch] = {}  # BIRD protocol name ->
        self._advertised_labels: set[tuple[str, str]] = set()
        self._session_labels: dict[str, tuple[str, str, str]] = {}  # name -> (peer, address, state)
        self._protocols: Mapping[str, ProtocolStatus] = {}  # BIRD's last answer (replaced, never changed)

    # --- inputs (on the loop) ---------------------------------------------------------------------
    def handle(self, item: Any) -> None:
        """The loop's messages for BGP mode (others are ignored)."""
        if isinstance(item, BGPStatus):
            self.status(item)
        elif isinstance(item, PasswordRead):
            self.password_read(item)
        elif isinstance(item, SpeakerFailed):
            self.speaker_failed(item.reason)

    def set_committed(self, ref: ObjectRef, addresses: Iterable[str]) -> None:
        if set_committed(self.committed, self._allowed, ref, addresses):
            self._dirty = True

    def password_read(self, item: PasswordRead) -> None:
        if item.password is None:
            log.warning("BGPPeer %s: cannot read its passwordSecret: %s", item.peer, item.error)
            self._problem(Problem("BGPPeer", item.peer, f"spec.passwordSecret: {item.error}: the session is not "
                                                        "opened"))
            changed = self.passwords.pop(item.peer, None) is not None
        else:
            changed = self.passwords.get(item.peer) != item.password
            self.passwords[item.peer] = item.password
        self._dirty = self._dirty or changed

    # --- the decision -----------------------------------------------------------------------------
    def update(self) -> None:
        changes = self.view.changes
        if changes.everything or changes.services or getattr(changes, "bgp", False):
            self._dirty = True
        peers = self.view.bgp_peers
        self._ask_passwords(peers.values())
        if not self._dirty or not self.ready:
            return
        self._dirty = False
        node = self.view.nodes.get(self.me)
        if not peers:
            new = Plan()
        else:
            services = (s for s in (self.view.announced(ref) for ref in self.view.services) if s is not None)
            new = plan(self.me, node, services, self._allowed, self.view.pool_list(),
                       self.view.bgp_advertisements.values(), peers.values(), self._bfd_by_name(),
                       self.passwords)
        for problem in new.problems:
            self._problem(problem)
        if new.sessions:
            config: str | None = render(new, router_id(node, self.me), self.me, self.restart_time)
        else:
            config = None
        if new != self.plan:
            self._log_changes(self.plan, new)
            self.plan = new
            self._advertised_metrics(new)
        if config != self.config:
            self.config = config
            self.supervisor.apply(config)
        now = self.clock()
        names = {s.name for s in new.sessions}
        for session in new.sessions:
            watch = self._watch.get(session.name)
            if watch is None:
                self._watch[session.name] = _SessionWatch(session.peer, now)
            else:
                watch.peer = session.peer
        for name in set(self._watch) - names:
            del self._watch[name]
            self._drop_session_metrics(name)

    def _bfd_by_name(self) -> dict[str, BFDProfile]:
        out: dict[str, BFDProfile] = {}
        for ref in sorted(self.view.bfd_profiles, key=lambda r: (r.name, r.namespace)):
            out.setdefault(ref.name, self.view.bfd_profiles[ref])
        return out

    def _ask_passwords(self, peers: Iterable[BGPPeer]) -> None:
        if self.read_secret is None or self.post is None:
            return
        now = self.clock()
        wanted = {p.ref: p.password_secret for p in peers if p.password_secret is not None}
        for ref in set(self._password_asked) - set(wanted):
            del self._password_asked[ref]
            self.passwords.pop(ref, None)
        for ref, secret in wanted.items():
            asked = self._password_asked.get(ref)
            if asked is not None and asked[0] == secret and now - asked[1] < PASSWORD_REFRESH:
                continue
            self._password_asked[ref] = (secret, now)
            threading.Thread(target=self._read_password, args=(ref, secret), name="bgp-secret", daemon=True).start()

    def _read_password(self, peer: ObjectRef, secret: ObjectRef) -> None:
        assert self.read_secret is not None and self.post is not None
        try:
            password = self.read_secret(secret)
            check_password(peer, password)
            self.post(PasswordRead(peer, password))
        except InvalidObject as err:
            self.post(PasswordRead(peer, None, f"Secret {secret}: {err.message}"))
        except Exception as err:  # noqa: BLE001 - reported as an Event, retried at the next refresh
            reason = getattr(err, "reason", None) or str(err)
            self.post(PasswordRead(peer, None, f"Secret {secret}: {reason}"))

    def _problem(self, problem: Problem) -> None:
        if problem in self._reported:
            return
        self._reported.add(problem)
        log.warning("%s %s: %s", problem.kind, problem.ref, problem.message)
        if self.events is not None:
            api = PEER_API_VERSION if problem.kind == "BGPPeer" else "metallb.io/v1beta1"
            self.events.record(problem.kind, problem.ref, f"Invalid{problem.kind}",
                               f"nftproxy on node {self.me}: {problem.message}", api_version=api)

    def _log_changes(self, old: Plan, new: Plan) -> None:
        before = {s.name: s.addresses for s in old.sessions}
        for s in new.sessions:
            added, gone = s.addresses - before.get(s.name, frozenset()), before.get(s.name, frozenset()) - s.addresses
            if added or gone:
                log.info("BGPPeer %s: advertising %d prefix(es)%s%s", s.peer.ref, len(s.routes),
                         f", new: {', '.join(sorted(added))}" if added else "",
                         f", withdrawn: {', '.join(sorted(gone))}" if gone else "")

    # --- status (from the supervisor, through the loop) ------------------------------------------------
    def status(self, item: BGPStatus) -> None:
        now = self.clock()
        self._protocols = item.protocols
        for name, watch in self._watch.items():
            proto = item.protocols.get(name)
            up = proto is not None and proto.established
            state = (proto.bgp_state or proto.info or proto.state) if proto is not None else "NotRunning"
            self._session_metrics(name, watch.peer, up, state, proto.exported if proto is not None else 0)
            if up:
                if watch.reported and self.events is not None:
                    self.events.record("BGPPeer", watch.peer.ref, "BGPSessionEstablished",
                                       f"node {self.me}: BGP session to {self._where(watch.peer)} established",
                                       "Normal", api_version=PEER_API_VERSION)
                if not watch.established:
                    log.info("BGP session to %s (BGPPeer %s) established", self._where(watch.peer), watch.peer.ref)
                watch.down_since, watch.reported, watch.established = None, "", True
                continue
            if watch.established:
                log.warning("BGP session to %s (BGPPeer %s) went down: %s", self._where(watch.peer), watch.peer.ref,
                            self._why(proto))
                watch.established = False
            if watch.down_since is None:
                watch.down_since = now
            if watch.reported or now - watch.down_since < DOWN_GRACE:
                continue
            watch.reported = self._why(proto)
            log.warning("BGP session to %s (BGPPeer %s) is not established: %s", self._where(watch.peer),
                        watch.peer.ref, watch.reported)
            if self.events is not None:
                self.events.record("BGPPeer", watch.peer.ref, "BGPSessionDown",
                                   f"node {self.me}: BGP session to {self._where(watch.peer)} not established after "
                                   f"{now - watch.down_since:.0f}s: {watch.reported}",
                                   api_version=PEER_API_VERSION)

    def speaker_failed(self, reason: str) -> None:
        """BIRD died (and is being restarted) or cannot run at all."""
        if self.metrics is not None:
            self.metrics.lb_bgp_speaker_restarts.inc()
        log.warning("BGP speaker: %s", reason)

    @staticmethod
    def _where(peer: BGPPeer) -> str:
        asn = f"AS {peer.peer_asn}" if peer.peer_asn is not None else f"{peer.dynamic_asn} AS"
        address = f"[{peer.address}]" if ":" in peer.address else peer.address
        return f"{address}:{peer.port} ({asn})"

    def _why(self, proto: ProtocolStatus | None) -> str:
        if proto is None:
            error = getattr(self.supervisor, "stats", None)
            return f"the BGP speaker is not running ({error.last_error})" if error and error.last_error else \
                "the BGP speaker is not running"
        state = proto.bgp_state or proto.info or proto.state
        return f"{state}: {proto.last_error}" if proto.last_error else f"{state} (no answer from the peer yet)"

    def summary(self) -> list[dict[str, Any]]:
        """This node's sessions for `nftproxy status` (read from the HTTP thread: immutable inputs only)."""
        protocols = self._protocols
        out = []
        for s in self.plan.sessions:
            proto = protocols.get(s.name)
            out.append({"peer": str(s.peer.ref), "address": s.peer.address,
                        "state": (proto.bgp_state or proto.info) if proto is not None else "NotRunning",
                        "established": bool(proto and proto.established),
                        "last_error": proto.last_error if proto is not None else "",
                        "prefixes": [r.prefix for r in s.routes]})
        return out

    # --- metrics ----------------------------------------------------------------------------------------
    def _session_metrics(self, name: str, peer: BGPPeer, up: bool, state: str, prefixes: int) -> None:
        if self.metrics is None:
            return
        labels = (peer.name, peer.address, state)
        old = self._session_labels.get(name)
        if old is not None and old != labels:
            self._drop_session_metrics(name)
        self._session_labels[name] = labels
        self.metrics.lb_bgp_session_up.labels(peer.name, peer.address).set(1 if up else 0)
        self.metrics.lb_bgp_session_state.labels(*labels).set(1)
        self.metrics.lb_bgp_prefixes.labels(peer.name, peer.address).set(prefixes)

    def _drop_session_metrics(self, name: str) -> None:
        labels = self._session_labels.pop(name, None)
        if self.metrics is None or labels is None:
            return
        for gauge, values in ((self.metrics.lb_bgp_session_up, labels[:2]), (self.metrics.lb_bgp_prefixes, labels[:2]),
                              (self.metrics.lb_bgp_session_state, labels)):
            try:
                gauge.remove(*values)
            except KeyError:
                pass

    def _advertised_metrics(self, new: Plan) -> None:
        if self.metrics is None:
            return
        labels = {(address, peer) for address, peers in new.advertised.items() for peer in peers}
        for address, peer in self._advertised_labels - labels:
            self.metrics.lb_bgp_advertised.remove(address, peer)
        for address, peer in labels - self._advertised_labels:
            self.metrics.lb_bgp_advertised.labels(address, peer).set(1)
        self._advertised_labels = labels

    # --- shutdown -------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Agent exit: keep the routes on the routers (graceful restart) when every session has it."""
        graceful = all(s.peer.graceful_restart for s in self.plan.sessions)
        self.supervisor.stop(graceful_restart=graceful)

