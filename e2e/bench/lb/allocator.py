"""The allocator process of the LoadBalancer benchmark (`python -m e2e.bench.lb --role allocator`, started
by the driver): a `LoadBalancerAgent` wired as `nftproxy run` wires its LoadBalancer half, the ARP/NDP
responder and the heartbeats stubbed (see the package's docstring)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any

from e2e.bench.lb import NODE, SERVICE_CIDR


class _NoResponder:
    """Stands in for the ARP/NDP responder: nothing is announced on any interface."""

    def __init__(self) -> None:
        self.sets = 0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def set_addresses(self, wanted: Any) -> None:
        self.sets += 1

    def reannounce(self, interface: str) -> None:
        pass


class _AloneMembership:
    """Stands in for the heartbeats: this node is live and the only one."""

    def __init__(self, me: str) -> None:
        self.me = me

    def start(self) -> None:
        pass

    def stop(self, farewell: bool = True) -> None:
        pass

    def set_local(self, state: Any) -> None:
        pass

    def set_peers(self, peers: Any) -> None:
        pass

    def eligible(self) -> frozenset[str]:
        return frozenset({self.me})

    def settled(self) -> bool:
        return True


class _GCPauses:
    """The cyclic garbage collector's pauses in this process (they stop every thread)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.cpu = 0.0  # the collecting thread's CPU time: the wall time also counts being descheduled
        self.longest = 0.0
        self.full = 0
        self._started = (0.0, 0.0)

    def install(self) -> _GCPauses:
        import gc

        gc.callbacks.append(self._callback)
        return self

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
            return
        pause = time.perf_counter() - self._started[0]
        self.cpu += time.thread_time() - self._started[1]
        self.total += pause
        self.longest = max(self.longest, pause)
        self.full += info.get("generation") == 2

    def summary(self) -> dict[str, float]:
        return {"seconds": round(self.total, 3), "cpu_seconds": round(self.cpu, 3),
                "longest_ms": round(self.longest * 1000, 1), "full": self.full}


def run_allocator(kubeconfig: str | None, standin_inprocess: bool, workdir: str, profile: str | None) -> int:
    """The allocator side, as `nftproxy run` wires it (see the module docstring). Prints `ready ...` once
    it holds the lease and every watcher has listed, and its statistics as JSON on SIGTERM."""
    from kubernetes import client

    from nftproxy.agent.kube import ResourceWatcher
    from nftproxy.agent.metrics import Metrics
    from nftproxy.agent.recorder import EventRecorder
    from nftproxy.kube_client import api_clients
    from nftproxy.lb.agent import LBSettings, LoadBalancerAgent
    from nftproxy.logs import setup_logging

    setup_logging("plain")
    api = None
    if standin_inprocess:
        from e2e.apiserver import ApiServerStandin

        api = ApiServerStandin(service_cidr=SERVICE_CIDR, history_size=1_000_000, bookmark_interval=5.0,
                               kubeconfig_path=os.path.join(workdir, "kubeconfig")).start()
        kubeconfig = api.kubeconfig_path
    assert kubeconfig is not None
    core, discovery = api_clients(kubeconfig)
    recorder = EventRecorder(core, NODE)
    responder = _NoResponder()
    agent = LoadBalancerAgent(
        LBSettings(), NODE, core, core.api_client,
        responder_factory=lambda _on_conflict: responder,
        membership_factory=lambda _on_change: _AloneMembership(NODE),
        carrier_watch_factory=None,
        interface_of_address=lambda address: "bench0" if address else None,
        proxy_ready=lambda: True,
        events=recorder,
        metrics=Metrics(),
    )
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        run = agent._run

        def profiled() -> None:
            profiler.runcall(run)

        agent._thread = threading.Thread(target=profiled, name="lb-loop", daemon=True)

    gc_pauses = _GCPauses().install()
    stop = threading.Event()
    watchers = [
        ResourceWatcher("Service", core.list_service_for_all_namespaces, agent.queue, stop),
        ResourceWatcher("EndpointSlice", discovery.list_endpoint_slice_for_all_namespaces, agent.queue, stop),
        *agent.watchers(stop),
    ]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    agent.start(client.CoordinationV1Api(core.api_client))
    for watcher in watchers:
        watcher.start()
    while not done.is_set() and not (agent.controller.leading and not agent.waiting_for):
        done.wait(0.02)
    print(f"ready {kubeconfig}", flush=True)
    peaks = {"loop_queue": 0, "writes_in_flight": 0, "event_queue": 0}
    while not done.wait(0.5):  # where a backlog builds up: the loop's queue, the writes, the Events
        now = {"loop_queue": agent.queue.qsize(), "writes_in_flight": len(agent.controller.inflight),
               "event_queue": recorder._queue.qsize()}
        peaks = {k: max(v, now[k]) for k, v in peaks.items()}
        if any(now.values()):
            logging.getLogger("e2e.bench.lb").info("backlog: %s", now)
    agent._stop.set()
    agent._thread.join(timeout=5)
    stop.set()
    if profiler is not None:
        profiler.dump_stats(profile)
    import gc

    gc.unfreeze()
    cyclic_garbage = gc.collect()  # what freezing kept from the collector, had it been garbage
    stats = {"status_writes": agent.controller.writes, "pending": len(agent.controller.pending),
             "inflight": len(agent.controller.inflight), "responder_sets": responder.sets,
             "queue_left": agent.queue.qsize(), "peaks": peaks,
             "gc": {**gc_pauses.summary(), "garbage_after_unfreeze": cyclic_garbage}}
    print("stats " + json.dumps(stats), flush=True)
    if api is not None:
        api.stop()
    return 0
