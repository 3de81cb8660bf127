"""HTTP servers on health-check node ports, answering as kube-proxy does.

200 with the Service and its local endpoint count when this node has ready local endpoints (and the
proxy is healthy), 503 otherwise; JSON body `{"service": {...}, "localEndpoints": N,
"serviceProxyHealthy": bool}`. Servers start and stop as Services come and go.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..desired.healthcheck import HealthCheck
from ..objects.model import ObjectRef

log = logging.getLogger("nftproxy.healthcheck")


class _DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class HealthCheckServers:
    def __init__(self, proxy_healthy: Callable[[], bool] = lambda: True) -> None:
        self.proxy_healthy = proxy_healthy
        self.checks: dict[ObjectRef, HealthCheck] = {}
        self.servers: dict[int, ThreadingHTTPServer] = {}
        self._lock = threading.Lock()

    def update(self, changes: dict[ObjectRef, HealthCheck | None]) -> None:
        with self._lock:
            for ref, check in changes.items():
                if check is None:
                    self.checks.pop(ref, None)
                else:
                    self.checks[ref] = check
            wanted = {c.port for c in self.checks.values()}
        for port in sorted(set(self.servers) - wanted):
            server = self.servers.pop(port)
            server.shutdown()
            server.server_close()
            log.info("stopped health check on port %d", port)
        for port in sorted(wanted - set(self.servers)):
            try:
                self.servers[port] = self._serve(port)
                log.info("serving health check on port %d", port)
            except OSError as err:
                log.error("cannot serve health check on port %d: %s", port, err)

    def answer(self, port: int) -> tuple[int, dict[str, object]]:
        with self._lock:
            check = next((c for c in self.checks.values() if c.port == port), None)
        if check is None:
            return 404, {}
        healthy = self.proxy_healthy()
        body = {"service": {"namespace": check.service.namespace, "name": check.service.name},
                "localEndpoints": check.local_endpoints, "serviceProxyHealthy": healthy}
        return (200 if check.local_endpoints > 0 and healthy else 503), body

    def _serve(self, port: int) -> ThreadingHTTPServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                code, body = owner.answer(port)
                payload = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("X-Load-Balancing-Endpoint-Weight", str(body.get("localEndpoints", 0)))
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, fmt: str, *args: object) -> None:
                return

        try:
            server: ThreadingHTTPServer = _DualStackServer(("::", port), Handler)
        except OSError:
            server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
            server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name=f"healthcheck-{port}", daemon=True).start()
        return server

    def close(self) -> None:
        self.update({ref: None for ref in list(self.checks)})

