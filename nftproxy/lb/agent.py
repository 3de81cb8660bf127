"""The LoadBalancer half of the node agent: one thread that owns the LB state, wired to the API
watchers, the lease, the heartbeat membership, the carrier watch and the ARP/NDP responder.

Everything reaches the loop as a message on one queue, so the state has a single writer and the
other threads (watchers, heartbeats, netlink, status writers) never wait on it.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..objects.model import ObjectRef
from ..agent.updates import Delete, SourceState, Update, Upsert
from .controller import AllocatorController, StatusWriter, WriteDone
from .deadnodes import DeadNodeFilter
from .speaker import Speaker
from .view import ClusterView

log = logging.getLogger("nftproxy.lb")

LB_GROUP = "metallb.io"
MAX_GATHER = 0.1  # seconds a turn may wait for more messages (see _run)
FREEZE_EVERY = 1000  # LoadBalancer Services gained between two gc.freeze() (see _run)
CUSTOM_RESOURCES = (("IPAddressPool", "v1beta1", "ipaddresspools"),
                    ("L2Advertisement", "v1beta1", "l2advertisements"),
                    # BGP mode: this node's sessions and what it advertises (bgp_speaker.py)
                    ("BGPAdvertisement", "v1beta1", "bgpadvertisements"),
                    ("BGPPeer", "v1beta2", "bgppeers"),
                    ("BFDProfile", "v1beta1", "bfdprofiles"))
API_VERSIONS = {kind: f"{LB_GROUP}/{version}" for kind, version, _ in CUSTOM_RESOURCES}


@dataclass(frozen=True, slots=True)
class LBSettings:
    enabled: bool = True
    load_balancer_class: str | None = None
    lease_namespace: str = "kube-system"
    lease_name: str = "nftproxy-lb-allocator"
    lease_duration: float = 15.0
    lease_renew: float = 2.0
    heartbeat_port: int = 7473
    heartbeat_interval: float = 0.1
    heartbeat_dead_after: float = 0.5
    heartbeat_key: bytes | None = None
    handover_seconds: float = 1.0  # SIGTERM: keep answering this long after telling peers we leave
    avoid_dead_node_endpoints: bool = False  # beyond kube-proxy: see lb/deadnodes.py
    bgp_dir: str | None = None  # BGP mode: BIRD's files (None: bird.default_directory)
    bird_binary: str = "bird"
    bgp_restart_time: int = 120  # graceful restart: how long routers keep our routes while the agent restarts


# --- messages the loop handles besides watcher updates ----------------------------------------------
@dataclass(frozen=True, slots=True)
class Leading:
    leading: bool


@dataclass(frozen=True, slots=True)
class Carrier:
    interface: str
    carrier: bool


@dataclass(frozen=True, slots=True)
class Committed:
    addresses: tuple[tuple[ObjectRef, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class Conflict:
    interface: str
    address: str
    mac: str


@dataclass(frozen=True, slots=True)
class Retry:
    ref: ObjectRef


class Wake:
    """Something outside changed (membership): look again."""


@dataclass(frozen=True, slots=True)
class FromSlices:
    """An EndpointSlice watcher's update that the LB loop relays (filtered) to the proxier."""

    item: Any


class SliceRelay:
    """The EndpointSlice watcher's queue when dead-node endpoints are avoided: everything goes through
    the LB loop, which passes it on to the proxier with the dead nodes' endpoints marked not ready."""

    def __init__(self, lb_queue: queue.Queue[Any]) -> None:
        self.lb_queue = lb_queue

    def put(self, item: Any) -> None:
        self.lb_queue.put(FromSlices(item))


class Tee:
    """A `queue.Queue.put` that feeds several queues: the proxier's watchers also feed the LB loop."""

    def __init__(self, *queues: queue.Queue[Any]) -> None:
        self.queues = queues

    def put(self, item: Any) -> None:
        for q in self.queues:
            q.put(item)


class _EmptyStream:
    """Stands in for a watch response when a resource's CRD is not installed."""

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        return iter(())

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def optional_resource(list_call: Callable[..., Any], what: str, idle: float = 10.0) -> Callable[..., Any]:
    """A list/watch call that treats 404 (the CRD is not installed) as an empty resource, so the agent
    still starts and picks the objects up once the CRD appears."""
    warned = threading.Event()

    @functools.wraps(list_call)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return list_call(*args, **kwargs)
        except ApiException as err:
            if err.status != 404:
                raise
            if not warned.is_set():
                warned.set()
                log.warning("%s: not served by the API server (CRD not installed?): treating as empty", what)
            if kwargs.get("watch"):
                time.sleep(idle)
                return _EmptyStream()
            resp = type("Listed", (), {})()
            resp.data = json.dumps({"items": [], "metadata": {"resourceVersion": "0"}}).encode()
            return resp

    return call


class LoadBalancerAgent:
    def __init__(
        self,
        settings: LBSettings,
        node_name: str,
        core_api: Any,
        api_client: Any,
        responder_factory: Callable[[Callable[[str, str, str], None]], Any],
        membership_factory: Callable[[Callable[[frozenset[str]], None]], Any],
        carrier_watch_factory: Callable[[Callable[[str, bool], None]], Any] | None,
        interface_of_address: Callable[[str | None], str | None],
        proxy_ready: Callable[[], bool],
        events: Any = None,
        metrics: Any = None,
        node_of_mac: Callable[[str, Mapping[str, str]], str | None] | None = None,
        proxy_updates: queue.Queue[Any] | None = None,
        bgp_supervisor_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.settings = settings
        self.me = node_name
        self.core_api = core_api
        self.api_client = api_client
        self.queue: queue.Queue[Any] = queue.Queue()
        self.events = events
        self.view = ClusterView(settings.load_balancer_class, on_invalid=self._invalid)
        self.responder = responder_factory(lambda i, ip, mac: self.queue.put(Conflict(i, ip, mac)))
        self.membership = membership_factory(lambda _eligible: self.queue.put(Wake()))
        self.proxy_ready = proxy_ready
        self.metrics = metrics
        self.node_of_mac = node_of_mac
        self.waiting_for = {"Service", "EndpointSlice", "LBNode", "Namespace", *(k for k, _, _ in CUSTOM_RESOURCES)}
        writer = StatusWriter(core_api, self.queue.put) if core_api is not None else None
        self.controller = AllocatorController(self.view, writer, events, on_usage=self._pool_usage)
        self.speaker = Speaker(node_name, self.view, self.responder, interface_of_address, events,
                               on_announced=self._announced)
        self.carrier_watch = carrier_watch_factory(
            lambda i, c: self.queue.put(Carrier(i, c))) if carrier_watch_factory else None
        self.elector: Any = None
        self.leaving = threading.Event()
        self._want_leading = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lb-loop", daemon=True)
        self._frozen_at = 0
        self._carrier_ok = True
        self._watched_interface: str | None = None
        self._peers: dict[str, str] = {}
        self._announced_labels: set[tuple[str, str]] = set()
        self.proxy_updates = proxy_updates
        self.dead_filter = DeadNodeFilter() if settings.avoid_dead_node_endpoints else None
        self.bgp = self._bgp_speaker(bgp_supervisor_factory)

    def _bgp_speaker(self, factory: Callable[..., Any] | None) -> Any:
        """BGP mode: BIRD, started once a BGPPeer selects this node (bgp_speaker.py)."""
        from .bgp_speaker import BGPSpeaker, BGPStatus, SpeakerFailed, secret_reader
        from .bird import BirdSupervisor, default_directory

        s = self.settings
        supervisor = (factory or BirdSupervisor)(
            s.bgp_dir or default_directory(self.me), s.bird_binary,
            on_status=lambda statuses: self.queue.put(BGPStatus(statuses)),
            on_restart=lambda reason: self.queue.put(SpeakerFailed(reason)))
        return BGPSpeaker(self.me, self.view, supervisor, self.events, self.metrics,
                          read_secret=secret_reader(self.core_api) if self.core_api is not None else None,
                          post=self.queue.put, restart_time=s.bgp_restart_time)

    def slice_feed(self, proxy_updates: queue.Queue[Any]) -> Any:
        """Where the EndpointSlice watcher should put its updates."""
        if self.dead_filter is None:
            return Tee(proxy_updates, self.queue)
        return SliceRelay(self.queue)

    # --- wiring ---------------------------------------------------------------------------------
    def watchers(self, stop: threading.Event) -> list[Any]:
        """ResourceWatchers for what only the LB side needs (Services and slices come through a Tee)."""
        from kubernetes import client

        from ..agent.kube import ResourceWatcher

        custom = client.CustomObjectsApi(self.api_client)
        out = [
            ResourceWatcher("Node", self.core_api.list_node, _Renamed(self.queue, "LBNode"), stop),
            ResourceWatcher("Namespace", self.core_api.list_namespace, self.queue, stop),
        ]
        for kind, version, plural in CUSTOM_RESOURCES:
            call = functools.partial(custom.list_cluster_custom_object, LB_GROUP, version, plural)
            out.append(ResourceWatcher(kind, optional_resource(call, f"{plural}.{LB_GROUP}"), self.queue, stop))
        return out

    def start(self, coordination_api: Any | None) -> None:
        from .leader import LeaseElector

        if coordination_api is not None:
            s = self.settings
            self.elector = LeaseElector(coordination_api, s.lease_namespace, s.lease_name, self.me,
                                        lambda leading: self.queue.put(Leading(leading)),
                                        duration=s.lease_duration, renew=s.lease_renew)
        self.membership.start()
        self.responder.start()
        if self.carrier_watch is not None:
            self.carrier_watch.start()
        self._thread.start()
        if self.elector is not None:
            self.elector.start()

    def after_sync(self, committed: Mapping[ObjectRef, tuple[str, ...]]) -> None:
        """From the sync loop: the LB addresses now in this node's kernel, per synced Service."""
        self.queue.put(Committed(tuple(committed.items())))

    def shutdown(self) -> None:
        """SIGTERM: tell peers we leave, let the successor announce, then stop answering."""
        self.leaving.set()
        self.membership.set_local(self._local_state(leaving=True))
        if self.elector is not None:
            self.elector.stop(release=True)
        time.sleep(self.settings.handover_seconds)
        self._stop.set()
        self._thread.join(timeout=2)
        self.responder.stop()
        self.bgp.stop()
        self.membership.stop(farewell=True)
        if self.carrier_watch is not None:
            self.carrier_watch.stop()

    # --- the loop -------------------------------------------------------------------------------
    def _local_state(self, leaving: bool = False) -> Any:
        from .membership import LocalState

        return LocalState(ready=self.proxy_ready(), leaving=leaving, carrier=self._carrier_ok)

    def _run(self) -> None:
        tick = 0.0  # how long the last turn's look at the state took
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.05)
            except queue.Empty:
                first = None
            items = [] if first is None else [first]
            # A turn costs more with more Services (the speaker looks at every address it announces):
            # gather messages for as long as the last one took (at most MAX_GATHER), so that under a
            # stream of events the turns take at most about half the loop's time.
            gather_until = time.monotonic() + min(tick, MAX_GATHER) if items else 0.0
            while True:
                try:
                    left = gather_until - time.monotonic()
                    items.append(self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                for item in items:
                    self._handle(item)
                started = time.monotonic()
                self._tick()
                tick = time.monotonic() - started
                held = len(self.view.services)
                self._frozen_at = min(self._frozen_at, held)
                if held >= self._frozen_at + FREEZE_EVERY:
                    # What the view keeps lives long: keep it out of the cycle collector's full passes,
                    # which otherwise walk every Service again each time the heap grows by a quarter
                    # (at 20,000 Services: 10 s of pauses, up to 2 s each). The proxier does the same
                    # after a rebuild.
                    gc.freeze()
                    self._frozen_at = held
            except Exception:  # noqa: BLE001 - one bad turn must not end announcements for good
                log.exception("LoadBalancer loop: unexpected error (continuing)")

    def _handle(self, item: Any) -> None:
        if isinstance(item, FromSlices):
            assert self.dead_filter is not None and self.proxy_updates is not None
            for out in self.dead_filter.update(item.item):
                self.proxy_updates.put(out)
            item = item.item
        if isinstance(item, Upsert):
            self.view.upsert(item.obj)
        elif isinstance(item, Delete):
            self.view.delete(item.kind, item.namespace, item.name)
        elif isinstance(item, SourceState):
            if item.listed:
                self.waiting_for.discard(item.source)
        elif isinstance(item, Leading):
            self._want_leading = item.leading
            if not item.leading and self.controller.leading:
                self.controller.stop_leading()
        elif isinstance(item, Carrier):
            if item.interface == self._watched_interface:
                self._carrier_ok = item.carrier
            self.speaker.set_carrier(item.interface, item.carrier)
            if not item.carrier:
                log.warning("interface %s lost carrier: withdrawing its announcements", item.interface)
        elif isinstance(item, Committed):
            for ref, addresses in item.addresses:
                self.speaker.set_committed(ref, addresses)
                self.bgp.set_committed(ref, addresses)
            self.bgp.ready = True
        elif isinstance(item, Conflict):
            if self.leaving.is_set():
                return  # our successor announcing during the hand-over: expected
            other = self.node_of_mac(item.mac, self._peers) if self.node_of_mac else None
            peer = self.membership.peers().get(other) if other else None
            before = self.speaker.stats.conflicts
            self.speaker.conflict(item.interface, item.address, item.mac, other,
                                  other_leaving=bool(peer and peer.leaving))
            if self.metrics is not None and self.speaker.stats.conflicts > before:
                self.metrics.lb_conflicts.inc()
        elif isinstance(item, WriteDone):
            if self.controller.write_done(item):
                timer = threading.Timer(1.0, self.queue.put, args=(Retry(item.ref),))
                timer.daemon = True
                timer.start()
        elif isinstance(item, Retry):
            self.controller.retry(item.ref)
        else:
            self.bgp.handle(item)

    def _tick(self) -> None:
        if self.waiting_for:
            return
        if self.view.changes.everything:
            peers = {n.name: n.address for n in self.view.nodes.values() if n.address}
            if peers != self._peers:
                self._peers = peers
                self.membership.set_peers(peers)
        if not self.leaving.is_set():
            self.membership.set_local(self._local_state())
        if self._want_leading and not self.controller.leading:
            self.controller.start_leading()
        elif self.controller.leading:
            self.controller.reconcile()
        else:
            self.view.released.clear()
        if not self.leaving.is_set():
            self.speaker.set_live(self.membership.eligible(), self.membership.settled())
            self.speaker.update()
            self.bgp.update()
            interface = self.speaker.interface  # found by the speaker's turn, also when it appears late
            if interface != self._watched_interface and self.carrier_watch is not None:
                self._watched_interface = interface
                self.carrier_watch.set_interfaces([interface] if interface else [])
        if self.dead_filter is not None and self.proxy_updates is not None:
            dead = frozenset(name for name, peer in self.membership.peers().items()
                             if not peer.alive and peer.last_heard is not None)
            if dead != self.dead_filter.dead:
                log.warning("nodes dead by their heartbeats: %s: %s", ", ".join(sorted(dead)) or "none",
                            "new connections avoid their endpoints" if dead else "their endpoints are used again")
            for out in self.dead_filter.set_dead(dead):
                self.proxy_updates.put(out)
        self.view.changes.clear()
        if self.metrics is not None:
            self.metrics.lb_leader.set(1 if self.controller.leading else 0)
            self.metrics.lb_peers.set(len(self.speaker.live))

    def _invalid(self, err: Any) -> None:
        """A MetalLB object refused or only partly used: an Event on it (the view logged it, once)."""
        if self.events is not None and err.kind in API_VERSIONS:
            reason = "Unsupported" if "not supported" in err.message else f"Invalid{err.kind}"
            self.events.record(err.kind, err.ref, reason, f"nftproxy: {err.field}: {err.message}",
                               api_version=API_VERSIONS[err.kind])

    # --- metrics --------------------------------------------------------------------------------
    def _pool_usage(self, usage: dict[str, tuple[int, int]]) -> None:
        if self.metrics is None:
            return
        for pool, (used, capacity) in usage.items():
            self.metrics.lb_pool_addresses.labels(pool, "assigned").set(used)
            self.metrics.lb_pool_addresses.labels(pool, "capacity").set(capacity)

    def _announced(self, wanted: dict[str, frozenset[str]]) -> None:
        if self.metrics is None:
            return
        labels = {(address, interface) for interface, addresses in wanted.items() for address in addresses}
        for address, interface in self._announced_labels - labels:
            self.metrics.lb_announced.remove(address, interface)
        for address, interface in labels - self._announced_labels:
            self.metrics.lb_announced.labels(address, interface).set(1)
        self._announced_labels = labels


class _Renamed:
    """Puts a watcher's SourceState under another name (the LB's all-Nodes watch is not the proxier's)."""

    def __init__(self, target: queue.Queue[Any], source: str) -> None:
        self.target, self.source = target, source

    def put(self, item: Update) -> None:
        if isinstance(item, SourceState):
            item = SourceState(self.source, item.listed, item.connected, item.error)
        self.target.put(item)
