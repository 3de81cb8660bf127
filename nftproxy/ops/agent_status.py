"""The running agent's half of `nftproxy status`: `/status` next to `/metrics` on the metrics address
(default 127.0.0.1:10249, node-local: it names Services and addresses).

Read-only hooks: the sync loop's and proxier's own state, the LB speaker's announced addresses, and a
sync counter wrapped around `Proxier.sync` (odd while a sync runs) so that drift pairs a kernel snapshot
with the claims of the same commit. Drift is computed in the HTTP thread, when asked, never in a sync.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .layout import TABLE
from .netlink import NetlinkError, NetlinkReader
from .status import Drift, SnapshotBusy, drift, read_table, summary

log = logging.getLogger("nftproxy.status")


def stamp(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


class StatusProvider:
    def __init__(self, proxier: Any, loop: Any, health: Any, lb_agent: Any = None,
                 reader: Callable[[], NetlinkReader] = NetlinkReader) -> None:
        self.proxier, self.loop, self.health, self.lb_agent = proxier, loop, health, lb_agent
        self.reader = reader
        self.epoch = 0  # even: no sync running; bumped before and after each
        self._lock = threading.Lock()  # one drift computation at a time
        # the last answer, and the (ruleset generation, sync epoch) it was computed at: while neither
        # moved, neither the kernel nor the claims did, and it is still the answer
        self._last: tuple[tuple[int, int], Drift, dict[str, Any]] | None = None
        sync = proxier.sync

        def counted() -> Any:
            self.epoch += 1
            try:
                return sync()
            finally:
                self.epoch += 1

        proxier.sync = counted

    def state(self) -> dict[str, Any]:
        """The agent's own view: no kernel access."""
        loop, proxier = self.loop, self.proxier
        if not loop.ready():
            state = "waiting for the first list of " + ", ".join(sorted(loop.waiting_for))
        elif loop.failures:
            state = "failing"
        elif proxier.pending():
            state = "pending"
        else:
            state = "synced"
        last = loop.last_result
        out: dict[str, Any] = {
            "sync": {
                "state": state,
                "last_sync": stamp(self.health.last_updated if self.health else None),
                "oldest_pending_change": stamp(self.health.oldest_pending if self.health else None),
                "syncs": loop.sync_count,
                "failures_in_a_row": loop.failures,
                "last": None if last is None else {"rebuild": last.rebuild, "operations": last.operations,
                                                   "services": last.services_synced,
                                                   "ms": round(last.seconds * 1000, 1)},
            },
            "programmed": {"services": len(proxier.committed_inputs),
                           "elements": sum(len(keys) for keys in list(proxier.committed.claims.values()))},
            "invalid": [{"kind": kind, "object": str(ref), "reason": reason}
                        for (kind, ref), reason in sorted(dict(proxier.invalid).items(), key=lambda i: str(i[0]))],
            "load_balancer": None,
        }
        if self.lb_agent is not None:
            announced = self.lb_agent.speaker.stats.announced
            out["load_balancer"] = {"announced": {i: sorted(a) for i, a in sorted(announced.items())}}
            if getattr(self.lb_agent, "bgp", None) is not None:
                out["load_balancer"]["bgp_sessions"] = self.lb_agent.bgp.summary()
        return out

    def drift(self, attempts: int = 5) -> tuple[Drift | None, dict[str, Any] | None, str | None]:
        """(drift, kernel summary, why not) from one kernel snapshot taken between two syncs."""
        with self._lock:
            for _ in range(attempts):
                epoch = self.epoch
                if epoch % 2:
                    time.sleep(0.05)
                    continue
                try:
                    with self.reader() as reader:
                        if not reader.has_table(TABLE):
                            return None, None, "table inet nftproxy is absent"
                        if self._last is not None and self._last[0] == (reader.generation(), epoch):
                            return self._last[1], self._last[2], None
                        snap = read_table(reader)
                    committed = self.proxier.committed
                    claims = {name: list(keys) for name, keys in list(committed.claims.items())}
                    chains = list(committed.chains.items())
                except RuntimeError:  # a sync changed the claims while they were copied
                    continue
                except (NetlinkError, SnapshotBusy) as err:
                    return None, None, f"cannot read the kernel: {err}"
                if self.epoch != epoch:
                    continue
                entries: dict[str, list[str]] = {}
                for _name, (chain, _refs) in chains:
                    for el in getattr(chain, "entries", ()):
                        entries.setdefault(el.set, []).append(el.key)
                found, kernel = drift(snap, claims, [name for name, _ in chains], entries), summary(snap)
                self._last = ((snap.generation, epoch), found, kernel)
                return found, kernel, None
            return None, None, "syncs kept running while the kernel was read: ask again"

    def report(self, with_drift: bool = True) -> dict[str, Any]:
        out = self.state()
        if with_drift:
            started, cpu = time.monotonic(), time.thread_time()
            found, kernel, why = self.drift()
            out["kernel"] = kernel
            out["drift"] = found.as_dict() if found is not None else {"error": why}
            out["drift_ms"] = round((time.monotonic() - started) * 1000, 1)
            out["drift_cpu_ms"] = round((time.thread_time() - cpu) * 1000, 1)  # this thread's, whatever the load
        return out


def serve_metrics_and_status(registry: CollectorRegistry, status: StatusProvider, host: str,
                             port: int) -> ThreadingHTTPServer:
    """/metrics (Prometheus text format) and /status (JSON; `?drift=0`: without the kernel read)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlsplit(self.path)
            if url.path == "/metrics":
                body, kind = generate_latest(registry), CONTENT_TYPE_LATEST
            elif url.path == "/status":
                with_drift = parse_qs(url.query).get("drift", ["1"])[0] not in ("0", "false")
                body, kind = json.dumps(status.report(with_drift)).encode(), "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
