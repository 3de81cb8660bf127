"""Kubernetes Events on objects nftproxy refuses, so `kubectl describe service` says why.

Posting happens on its own thread: an unreachable API server must never hold up a sync.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Any

from ..objects.parse import InvalidObject

log = logging.getLogger("nftproxy.events")


class EventRecorder:
    def __init__(self, core_api: Any, node_name: str, component: str = "nftproxy") -> None:
        self.core_api = core_api
        self.node_name = node_name
        self.component = component
        self._queue: queue.Queue[InvalidObject] = queue.Queue(maxsize=1000)
        threading.Thread(target=self._run, name="events", daemon=True).start()

    def invalid(self, err: InvalidObject) -> None:
        """Called from the sync loop; drops the Event rather than block if the queue is full."""
        if err.kind != "Node":
            try:
                self._queue.put_nowait(err)
            except queue.Full:
                log.warning("event queue full: not recording %s", err)

    def _run(self) -> None:
        while True:
            err = self._queue.get()
            body = self.event_for(err, time.time())
            for attempt in range(5):
                try:
                    self.core_api.create_namespaced_event(err.ref.namespace, body)
                    break
                except Exception as exc:  # noqa: BLE001 - best effort, never fatal
                    if attempt == 4:
                        log.warning("could not record an Event for %s %s: %s", err.kind, err.ref, exc)
                    time.sleep(0.5 * 2**attempt)

    def event_for(self, err: InvalidObject, now: float) -> dict[str, Any]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        api_version = "discovery.k8s.io/v1" if err.kind == "EndpointSlice" else "v1"
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{err.ref.name}.{uuid.uuid4().hex[:16]}", "namespace": err.ref.namespace},
            "involvedObject": {"apiVersion": api_version, "kind": err.kind, "namespace": err.ref.namespace,
                               "name": err.ref.name},
            "reason": f"Invalid{err.kind}",
            "message": f"nftproxy ignores this {err.kind}: {err.field}: {err.message}",
            "type": "Warning",
            "source": {"component": self.component, "host": self.node_name},
            "reportingComponent": self.component,
            "reportingInstance": self.node_name,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
