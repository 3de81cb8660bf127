"""The sync loop's rules with a controlled clock and the in-memory kernel; health over real HTTP."""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request

from e2e.objects import endpoint_slice, service
from nftproxy.agent.health import HealthState, serve_health
from nftproxy.agent.loop import SyncLoop
from nftproxy.agent.metrics import Metrics
from nftproxy.agent.proxier import Proxier
from nftproxy.agent.updates import Delete, SourceState, Upsert
from nftproxy.config import ProxyConfig
from nftproxy.kernel.fake import FakeKernel


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_loop(min_sync: float = 1.0, sync_period: float = 60.0) -> tuple[SyncLoop, FakeKernel, Clock, HealthState]:
    kernel, clock = FakeKernel(), Clock()
    health = HealthState(timeout=2 * sync_period)
    loop = SyncLoop(Proxier(ProxyConfig("node-1"), kernel), queue.Queue(), ["Service", "EndpointSlice", "Node"],
                    min_sync, sync_period, health, Metrics(), clock=clock, wall_clock=clock)
    return loop, kernel, clock, health


def listed(loop: SyncLoop, *sources: str) -> None:
    for s in sources:
        loop.feed(SourceState(s, listed=True, connected=True))


def test_no_sync_before_every_initial_list() -> None:
    loop, kernel, _, _ = make_loop()
    loop.feed(Upsert(service("web", "198.19.0.10")))
    listed(loop, "Service", "Node")
    assert loop.due(1000.0) is None and not kernel.transactions, "EndpointSlices not listed yet"
    loop.feed(Upsert(endpoint_slice("web", ["198.18.129.2"])))
    listed(loop, "EndpointSlice")
    assert loop.due(1000.0) == 0.0
    loop.sync_now()
    assert len(kernel.transactions) == 1 and kernel.transactions[0].rebuild


def test_bursts_coalesce_to_one_sync_per_min_sync_period() -> None:
    loop, kernel, clock, _ = make_loop(min_sync=1.0)
    listed(loop, "Service", "EndpointSlice", "Node")
    loop.feed(Upsert(service("web", "198.19.0.10")))
    loop.sync_now()
    clock.now += 0.25
    for i in range(20):
        loop.feed(Upsert(endpoint_slice("web", [f"198.18.129.{i + 2}"])))
    assert loop.due(clock.now) == 0.75, "wait for the rest of the min sync period"
    clock.now += 0.75
    assert loop.due(clock.now) == 0.0
    loop.sync_now()
    assert len(kernel.transactions) == 2, "twenty updates, one transaction"
    assert loop.due(clock.now) == 59.0, "next: the periodic rebuild, a sync period after the last one"


def test_periodic_rebuild_and_deletes() -> None:
    loop, kernel, clock, _ = make_loop(min_sync=0.0, sync_period=60.0)
    listed(loop, "Service", "EndpointSlice", "Node")
    loop.feed(Upsert(service("web", "198.19.0.10")))
    loop.sync_now()
    clock.now += 60
    assert loop.due(clock.now) == 0.0
    loop.sync_now()
    assert kernel.transactions[-1].rebuild
    loop.feed(Delete("Service", "default", "web"))
    loop.sync_now()
    assert not any("198.19.0.10" in line for line in kernel.dump())


def test_failed_syncs_back_off_and_health_turns_503_then_200() -> None:
    loop, kernel, clock, health = make_loop(min_sync=0.0, sync_period=10.0)
    server = serve_health(health, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_address[1]}/healthz"

    def status() -> int:
        # the server reads the real clock: give the state times relative to now
        try:
            return urllib.request.urlopen(url, timeout=5).status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        assert status() == 503, "not healthy before the first sync"
        listed(loop, "Service", "EndpointSlice", "Node")
        import time as _time

        clock.now = _time.time()
        loop.feed(Upsert(service("web", "198.19.0.10")))
        loop.sync_now()
        assert status() == 200
        body = json.loads(urllib.request.urlopen(url, timeout=5).read())
        assert body["lastUpdated"] and body["oldestPendingQueued"] == ""

        clock.now = _time.time() - 25  # a change queued 25 s ago, beyond 2 x sync period
        loop.feed(Upsert(endpoint_slice("web", ["198.18.129.2"])))
        kernel.fail_next = "Cannot allocate memory"
        assert loop.sync_now() is None and loop.failures == 1
        assert loop.retry_at is not None and loop.due(clock.now) == 0.5, "retry after a backoff"
        assert status() == 503, "a change waited longer than twice the sync period"
        clock.now += 0.5
        result = loop.sync_now()
        assert result is not None and result.rebuild, "after a failure the table is rebuilt"
        assert status() == 200 and loop.failures == 0
        assert loop.metrics is not None and loop.metrics.sync_failures._value.get() == 1
    finally:
        server.shutdown()
