"""Kubernetes Events on objects nftproxy refuses, so `kubectl describe service` says why.

Posting happens on its own thread: an unreachable API server must never hold up a sync.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..objects.model import ObjectRef
from ..objects.parse import InvalidObject

log = logging.getLogger("nftproxy.events")


class EventRecorder:
    def __init__(self, core_api: Any, node_name: str, component: str = "nftproxy",
                 normal_per_second: float = 20.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.core_api = core_api
        self.node_name = node_name
        self.component = component
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1000)
        # Normal Events (IPAllocated, nodeAssigned) are news, not alarms: at most this many a second, so
        # thousands of new LoadBalancers do not double the API requests (client-go's QPS limit does the
        # same for real controllers). Warnings are never held back by it.
        self.normal_per_second = normal_per_second
        self._tokens = normal_per_second
        self._refilled = clock()
        self._clock = clock
        self.dropped_normal = 0
        threading.Thread(target=self._run, name="events", daemon=True).start()

    def invalid(self, err: InvalidObject) -> None:
        """Called from the sync loop; drops the Event rather than block if the queue is full."""
        if err.kind != "Node":
            self.record(err.kind, err.ref, f"Invalid{err.kind}",
                        f"nftproxy ignores this {err.kind}: {err.field}: {err.message}")

    def record(self, kind: str, ref: ObjectRef, reason: str, message: str, type_: str = "Warning",
               api_version: str | None = None) -> None:
        """Any Event on any object; never blocks the caller (dropped, and logged, when the queue is full)."""
        if type_ == "Normal" and not self._take_token():
            self.dropped_normal += 1
            return
        body = self.event_for(kind, ref, reason, message, type_, api_version, time.time())
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            log.warning("event queue full: not recording %s on %s %s", reason, kind, ref)

    def _take_token(self) -> bool:
        now = self._clock()
        self._tokens = min(self.normal_per_second, self._tokens + (now - self._refilled) * self.normal_per_second)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            namespace = body["metadata"]["namespace"]
            for attempt in range(5):
                try:
                    self.core_api.create_namespaced_event(namespace, body)
                    break
                except Exception as exc:  # noqa: BLE001 - best effort, never fatal
                    if attempt == 4:
                        involved = body["involvedObject"]
                        log.warning("could not record an Event for %s %s/%s: %s", involved["kind"],
                                    namespace, involved["name"], exc)
                    time.sleep(0.5 * 2**attempt)

    def event_for(self, kind: str, ref: ObjectRef, reason: str, message: str, type_: str,
                  api_version: str | None, now: float) -> dict[str, Any]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        if api_version is None:
            api_version = {"EndpointSlice": "discovery.k8s.io/v1"}.get(kind, "v1")
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name(ref.name), "namespace": ref.namespace},
            "involvedObject": {"apiVersion": api_version, "kind": kind, "namespace": ref.namespace,
                               "name": ref.name},
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": self.component, "host": self.node_name},
            "reportingComponent": self.component,
            "reportingInstance": self.node_name,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }


def event_name(name: str) -> str:
    """A name the API accepts (a DNS-1123 subdomain) for an Event about any object: an object stored
    with a name the API would refuse today (an older or buggy server) must still get its Event."""
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:200] or "object"
    return f"{base}.{uuid.uuid4().hex[:16]}"
