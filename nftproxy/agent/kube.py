"""List and watch one resource through the Kubernetes API, feeding the sync loop's queue.

The watch protocol is driven directly on the generated API calls with raw JSON (no model
deserialisation: it costs more than the whole sync at scale): list in pages, then watch from the
list's resourceVersion with bookmarks; a watch that ends is resumed from the last version seen; 410
Gone forces a relist that is diffed against what this watcher knew, so deletions made while away are
not missed. Failures back off (capped, jittered: tenacity) and are logged once per state change.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from tenacity import Retrying, retry_if_exception_type, stop_when_event_set, wait_exponential_jitter

from .updates import Delete, SourceState, Update, Upsert

log = logging.getLogger("nftproxy.watch")

ListCall = Callable[..., Any]
Key = tuple[str, str]


class Gone(Exception):
    """The resourceVersion we hold is too old: relist."""


class WatchFailed(Exception):
    """A list or watch failed before making any progress."""


class UpdateSink(Protocol):
    """Where a watcher puts what it learns: the sync loop's queue, or a tee/relay in front of it."""

    def put(self, item: Update) -> None: ...


class ResourceWatcher:
    def __init__(
        self,
        kind: str,
        list_call: ListCall,
        updates: UpdateSink,
        stop: threading.Event,
        field_selector: str | None = None,
        page_size: int = 500,
        watch_timeout: int = 300,
        max_backoff: float = 10.0,
        healthy_after: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.list_call = list_call
        self.updates = updates
        self.stop = stop
        self.field_selector = field_selector
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after  # client-go: a connection this old resets the backoff
        self.clock = clock
        self._events_seen = 0  # events received over the watcher's life (progress, even if a stream breaks)
        self._watch_opened: float | None = None
        self.resource_version: str | None = None
        self.known: dict[Key, str] = {}  # key -> resourceVersion of what the loop was told
        self.listed = False
        self.connected: bool | None = None
        self._thread = threading.Thread(target=self.run, name=f"watch-{kind}", daemon=True)

    def start(self) -> ResourceWatcher:
        self._thread.start()
        return self

    def alive(self) -> bool:
        """False once the thread ended while the agent still runs: /healthz reports it."""
        return self._thread.is_alive() or self.stop.is_set()

    def run(self) -> None:
        while not self.stop.is_set():
            retrying = Retrying(
                retry=retry_if_exception_type(WatchFailed),
                wait=wait_exponential_jitter(initial=0.2, max=self.max_backoff, jitter=0.5),
                stop=stop_when_event_set(self.stop),
                reraise=True,
            )
            try:
                retrying(self._session)
            except WatchFailed:
                return  # only when stopping

    # --- one session: (re)list if needed, then watch until the stream ends ----------------------------
    def _session(self) -> None:
        """One list (if needed) and watch. A failure after progress (a list, an event, or a stream that
        stayed up `healthy_after` seconds) resumes at once with a fresh backoff, as client-go does; only a
        reconnect that fails before any progress counts as an outage and backs off."""
        progressed = False
        events_before = self._events_seen
        self._watch_opened = None
        try:
            if self.resource_version is None:
                self._relist()
                progressed = True
            self._watch()
            progressed = True
        except Gone:
            log.info("%s: resourceVersion %s expired (410 Gone): relisting", self.kind, self.resource_version)
            self.resource_version = None
            return
        except Exception as err:  # noqa: BLE001 - any failure of the API is a reason to back off
            healthy = self._watch_opened is not None and self.clock() - self._watch_opened >= self.healthy_after
            if progressed or self._events_seen > events_before or healthy:
                # It worked for a while: resume at once; only a failing reconnect counts as an outage.
                log.info("%s: watch interrupted (%s): resuming from resourceVersion %s",
                         self.kind, _describe(err), self.resource_version)
                return
            self._set_connected(False, _describe(err))
            raise WatchFailed(str(err)) from err

    def _selector(self) -> dict[str, Any]:
        return {"field_selector": self.field_selector} if self.field_selector else {}

    def _relist(self) -> None:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.page_size, "_preload_content": False, **self._selector()}
            if token:
                kwargs["_continue"] = token
            try:
                resp = self.list_call(**kwargs)
            except ApiException as err:
                if err.status == 410 and token:  # the continue token expired: start over
                    items, token = [], None
                    continue
                raise
            body = json.loads(resp.data)
            items.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            token = meta.get("continue") or None
            if not token:
                version = meta.get("resourceVersion")
                break
        self._set_connected(True)
        seen: dict[Key, str] = {}
        for obj in items:
            obj["kind"] = self.kind
            key = _key(obj)
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            seen[key] = rv
            if self.known.get(key) != rv:
                self.updates.put(Upsert(obj))
        for key in self.known.keys() - seen.keys():
            self.updates.put(Delete(self.kind, key[0], key[1]))
        self.known = seen
        self.resource_version = version
        if not self.listed:
            self.listed = True
            log.info("%s: listed %d object(s) at resourceVersion %s", self.kind, len(items), version)
        self.updates.put(SourceState(self.kind, listed=True, connected=True))

    def _watch(self) -> bool:
        """Watch until the server ends the stream; True if any event arrived."""
        resp = self.list_call(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _preload_content=False,
            _request_timeout=(10, self.watch_timeout + 30),
            **self._selector(),
        )
        self._set_connected(True)
        self._watch_opened = self.clock()
        progressed = False
        try:
            for line in iter_resp_lines(resp):
                if self.stop.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                progressed = True
                self._events_seen += 1
                self._handle(event)
        finally:
            resp.close()
            resp.release_conn()
        return progressed

    def _handle(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiException(status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}")
        meta = obj.get("metadata") or {}
        rv = str(meta.get("resourceVersion") or "")
        if kind == "BOOKMARK":
            self.resource_version = rv or self.resource_version
            return
        obj["kind"] = self.kind
        key = _key(obj)
        if kind in ("ADDED", "MODIFIED"):
            if self.known.get(key) != rv:
                self.known[key] = rv
                self.updates.put(Upsert(obj))
        elif kind == "DELETED":
            if self.known.pop(key, None) is not None:
                self.updates.put(Delete(self.kind, key[0], key[1]))
        if rv:
            self.resource_version = rv

    def _set_connected(self, connected: bool, error: str | None = None) -> None:
        if self.connected == connected:
            return
        self.connected = connected
        if connected:
            log.info("%s: connected to the API server", self.kind)
        else:
            log.warning("%s: API server unreachable or failing (%s): keeping the rules, retrying with backoff",
                        self.kind, error)
        self.updates.put(SourceState(self.kind, listed=self.listed, connected=connected, error=error))


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _describe(err: BaseException) -> str:
    if isinstance(err, ApiException):
        return f"HTTP {err.status} {err.reason}".strip()
    return f"{type(err).__name__}: {err}"[:300]
