"""Health as kube-proxy reports it: /healthz and /livez on the healthz address.

Healthy once the first sync completed and no queued change has waited longer than twice the sync
period. The state is a small object driven by the sync loop with explicit times, so its rules can be
tested without a clock; the HTTP server only reads it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("nftproxy.health")


class HealthState:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.last_updated: float | None = None  # wall-clock time of the last successful sync
        self.oldest_pending: float | None = None  # when the oldest unsynced change was queued
        self._lock = threading.Lock()
        self._required: dict[str, Callable[[], bool]] = {}  # threads the agent cannot work without

    def require(self, name: str, alive: Callable[[], bool]) -> None:
        """A thread (a source of objects) whose death makes the agent unhealthy: it would never see
        another change, so kubelet should restart it."""
        self._required[name] = alive

    def dead(self) -> list[str]:
        return sorted(name for name, alive in self._required.items() if not alive())

    def queued(self, now: float) -> None:
        with self._lock:
            if self.oldest_pending is None:
                self.oldest_pending = now

    def updated(self, now: float) -> None:
        with self._lock:
            self.last_updated = now
            self.oldest_pending = None

    def healthy(self, now: float) -> bool:
        if self.dead():
            return False
        with self._lock:
            if self.last_updated is None:
                return False
            return self.oldest_pending is None or now - self.oldest_pending <= self.timeout

    def report(self, now: float) -> tuple[int, dict[str, object]]:
        healthy = self.healthy(now)

        def stamp(t: float | None) -> str:
            return "" if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")

        body = {"lastUpdated": stamp(self.last_updated), "currentTime": stamp(now), "nodeEligible": True,
                "oldestPendingQueued": stamp(self.oldest_pending)}
        dead = self.dead()
        if dead:
            body["deadThreads"] = dead
        return (200 if healthy else 503), body


def serve_health(state: HealthState, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?")[0] not in ("/healthz", "/livez"):
                self.send_error(404)
                return
            code, body = state.report(time.time())
            payload = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, fmt: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()
    log.info("serving /healthz and /livez on %s:%d", host, server.server_address[1])
    return server
