"""The API server stand-in made reachable from inside the namespace cluster.

The stand-in serves the test process on loopback. Agents live in node namespaces, so the same
stand-in (same store, same watches) also gets a listener inside the cluster's LAN namespace, on the
LAN "router" address. A socket belongs to the network namespace it was created in: the listener's
socket is created by a short-lived thread that entered the LAN namespace with setns(2), which only
ever moves that thread. Nothing is added to the host's own network.

The LAN listener can be taken down (agents see refused connections, the test's loopback client does
not) and can fail requests for chosen resources with 503, to test partial outages.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import threading
from collections.abc import Iterable
from pathlib import Path

import yaml

from e2e.apiserver import ApiServerStandin
from e2e.apiserver.server import _Handler, _HTTPServer

CLONE_NEWNET = 0x40000000


def listening_socket_in_netns(netns: str, host: str, port: int) -> socket.socket:
    """A TCP listening socket created inside `netns` (the calling thread never changes namespace)."""
    box: dict[str, object] = {}

    def create() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            box["sock"] = sock
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    worker = threading.Thread(target=create, name=f"setns-{netns}")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["sock"]  # type: ignore[return-value]


class _GatedHandler(_Handler):
    def _dispatch(self, method: str) -> None:
        gate: ClusterApi = self.server.gate  # type: ignore[attr-defined]
        path = self.path.split("?")[0]
        if any(part in path for part in gate.failing):
            payload = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": "the server is currently unable to handle the request",
                                  "reason": "ServiceUnavailable", "code": 503}).encode()
            self.server.standin._log_request(method, self.path)
            self._send(503, payload)
            return
        super()._dispatch(method)


class ClusterApi:
    """The stand-in, on loopback for the test and on the LAN for the agents."""

    def __init__(self, lan_netns: str, lan_address: str, port: int = 6443, **standin_args: object) -> None:
        self.lan_netns = lan_netns
        self.lan_address = lan_address
        self.port = port
        self.api = ApiServerStandin(**standin_args)  # type: ignore[arg-type]
        self.failing: set[str] = set()
        self._lan: _HTTPServer | None = None
        self._lan_thread: threading.Thread | None = None
        self.kubeconfig_for_nodes = ""

    @property
    def url_for_nodes(self) -> str:
        host = f"[{self.lan_address}]" if ":" in self.lan_address else self.lan_address
        return f"http://{host}:{self.port}"

    def start(self) -> ClusterApi:
        self.api.start()
        self.up()
        path = Path(self.api.kubeconfig_path).with_name("kubeconfig-nodes")
        config = yaml.safe_load(Path(self.api.kubeconfig_path).read_text())
        for cluster in config.get("clusters", []):
            cluster["cluster"]["server"] = self.url_for_nodes
        path.write_text(yaml.safe_dump(config))
        self.kubeconfig_for_nodes = str(path)
        return self

    def up(self) -> None:
        if self._lan is not None:
            return
        sock = listening_socket_in_netns(self.lan_netns, self.lan_address, self.port)
        httpd = _HTTPServer((self.lan_address, self.port), _GatedHandler, bind_and_activate=False)
        httpd.socket.close()
        httpd.socket = sock
        httpd.server_address = sock.getsockname()[:2]
        httpd.standin = self.api
        httpd.gate = self  # type: ignore[attr-defined]
        self._lan = httpd
        self._lan_thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="apiserver-lan", daemon=True)
        self._lan_thread.start()

    def down(self) -> None:
        """Agents can no longer connect; their open watches are cut."""
        if self._lan is None:
            return
        self._lan.shutdown()
        self._lan.server_close()
        self._lan = None
        if self._lan_thread is not None:
            self._lan_thread.join(5)
        self.api.cut_watches()
        self.api.drop_connections(host=self.lan_address)  # keep-alive connections would outlive the listener

    def fail(self, resources: Iterable[str]) -> None:
        """Answer 503 on the LAN listener for paths naming these resources (e.g. "endpointslices")."""
        self.failing = set(resources)

    def stop(self) -> None:
        self.down()
        self.api.stop()
