"""A watch that made progress and then breaks resumes at once, whatever outage came before (issue 13, 2).

client-go resets its backoff once a connection has been healthy; before this fix a stream that broke
abruptly after delivering events was counted as a failed attempt of the last outage, so one dropped
stream minutes after an outage waited the whole grown backoff (up to 10 s per resource).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from e2e.apiserver import ApiServerStandin
from nftproxy.agent.kube import ResourceWatcher
from nftproxy.agent.updates import Upsert


@pytest.fixture()
def server() -> Iterator[ApiServerStandin]:
    with ApiServerStandin(service_cidr="198.19.0.0/16", bookmark_interval=30.0) as api:
        yield api


def configmap(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}}


def wait_for(updates: queue.Queue[Any], name: str, timeout: float) -> float:
    """Seconds until an Upsert of `name` arrives (fails after `timeout`)."""
    start = time.monotonic()
    while True:
        left = timeout - (time.monotonic() - start)
        assert left > 0, f"{name} did not arrive within {timeout} s"
        try:
            item = updates.get(timeout=left)
        except queue.Empty:
            continue
        if isinstance(item, Upsert) and item.obj["metadata"]["name"] == name:
            return time.monotonic() - start


def start_watcher(server: ApiServerStandin, **kwargs: Any) -> tuple[ResourceWatcher, queue.Queue[Any], Any,
                                                                   threading.Event]:
    core = client.CoreV1Api(server.client())
    updates: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()
    watcher = ResourceWatcher("ConfigMap", core.list_config_map_for_all_namespaces, updates, stop,
                              max_backoff=8.0, **kwargs).start()
    core.create_namespaced_config_map("default", configmap("first"))
    wait_for(updates, "first", 10)
    return watcher, updates, core, stop


def test_a_stream_broken_after_events_resumes_at_once_after_an_outage(server: ApiServerStandin) -> None:
    watcher, updates, core, stop = start_watcher(server)
    try:
        server.set_down(True)
        time.sleep(4.0)  # failed reconnects: the backoff has grown to seconds
        server.set_down(False)
        core.create_namespaced_config_map("default", configmap("after-outage"))
        wait_for(updates, "after-outage", 20)
        assert watcher.resource_version is not None
        server.cut_watches()  # abrupt, mid-stream: what a load balancer or apiserver restart does
        core.create_namespaced_config_map("default", configmap("after-cut"))
        seconds = wait_for(updates, "after-cut", 20)
        print(f"resumed after {seconds:.2f} s")
        assert seconds < 1.5, f"the watch waited {seconds:.1f} s: the outage's backoff was not reset"
    finally:
        stop.set()


def test_a_long_healthy_stream_without_events_also_resets_the_backoff(server: ApiServerStandin) -> None:
    watcher, updates, core, stop = start_watcher(server, healthy_after=1.0)
    try:
        server.set_down(True)
        time.sleep(4.0)
        server.set_down(False)
        core.create_namespaced_config_map("default", configmap("after-outage"))
        wait_for(updates, "after-outage", 20)
        server.cut_watches()  # this stream delivered an event: resumes at once and opens a new one
        time.sleep(1.5)  # the new stream: no events, but healthy longer than healthy_after
        server.cut_watches()
        core.create_namespaced_config_map("default", configmap("after-quiet-cut"))
        seconds = wait_for(updates, "after-quiet-cut", 20)
        assert seconds < 1.5, f"the watch waited {seconds:.1f} s after a healthy, quiet stream broke"
    finally:
        stop.set()
