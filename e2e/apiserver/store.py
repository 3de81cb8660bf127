"""In-memory storage with etcd-like revisions, a bounded event history and watchers.

One global, monotonically increasing resourceVersion orders every write, as
etcd's revision does.  Each write appends an event carrying the new and the
previous object; that history serves watch resumption, consistent paging
snapshots (by undoing newer events) and exact-version lists, and its
trimming is what turns a stale resourceVersion into 410 Gone.
"""

from __future__ import annotations

import copy
import json
import queue
import random
import threading
import time
import uuid
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import errors
from .errors import ApiError, FieldError
from .meta import json_copy, normalize_times, now_seconds, validate_meta_update, validate_object_meta
from .resources import RESOURCES, ResourceType, Strategy, storage_type
from .selectors import FieldSelector, LabelSelector

Key = tuple[str, str]  # (namespace or "", name)


@dataclass
class Event:
    rv: int
    storage: str
    type: str  # ADDED / MODIFIED / DELETED
    obj: dict[str, Any]  # the state after the write (for DELETED: the last state, at the delete's rv)
    prev: dict[str, Any] | None  # the state before the write


@dataclass(eq=False)
class Watcher:
    """One open watch; the store feeds `queue` under its lock so order is exact."""

    rtype: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    queue: "queue.SimpleQueue[tuple[str, Any]]" = field(default_factory=queue.SimpleQueue)  # C: cheap puts
    ended: bool = False

    def matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        view = self.rtype.view(obj) if self.rtype.to_view else obj
        return self.labels.matches(meta.get("labels")) and self.fields.matches(view)

    def offer(self, ev: Event) -> None:
        """Translate a storage event into what this watch's selectors make of it."""
        was, now = self.matches(ev.prev), (ev.type != "DELETED" and self.matches(ev.obj))
        if ev.type == "DELETED":
            if was:
                self.queue.put(("event", ("DELETED", ev.obj)))
        elif now and not was:
            self.queue.put(("event", ("ADDED", ev.obj)))
        elif now and was:
            self.queue.put(("event", ("MODIFIED", ev.obj)))
        elif was and not now:
            self.queue.put(("event", ("DELETED", ev.obj)))

    def end(self, how: str) -> None:
        """Ask the serving thread to stop: 'cut' (abrupt) or 'close' (graceful)."""
        if not self.ended:
            self.ended = True
            self.queue.put(("end", how))


def _rand_suffix(rng: random.Random, n: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(rng.choice(alphabet) for _ in range(n))


class Store:
    """All objects, the revision counter, the history window and the open watches."""

    def __init__(self, history_size: int = 1000, allocator: Any = None, seed: int | None = None) -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.rv = 0
        self.data: dict[str, dict[Key, dict[str, Any]]] = {r.storage_key: {} for r in RESOURCES}
        self.history: deque[Event] = deque()
        self.history_size = history_size
        self.compacted = 0  # every event with rv > compacted is still in history
        self.watchers: set[Watcher] = set()
        self.allocator = allocator
        self.rng = random.Random(seed)
        self._strategies: dict[ResourceType, Strategy] = {}
        # the list hot path: each stored object's JSON as a list item, and the sorted keys per revision
        self._item_json: dict[tuple[str, Key], tuple[dict[str, Any], bytes]] = {}
        self._sorted: dict[str, tuple[int, list[Key]]] = {}

    # --- helpers ---------------------------------------------------------------
    def strategy(self, rtype: ResourceType) -> Strategy:
        if rtype not in self._strategies:
            self._strategies[rtype] = rtype.strategy_cls(self)
        return self._strategies[rtype]

    def objects(self, storage: str) -> dict[Key, dict[str, Any]]:
        return self.data[storage]

    def current_rv(self) -> int:
        with self.lock:
            return self.rv

    def _commit(self, storage: str, key: Key, etype: str, obj: dict[str, Any] | None,
                prev: dict[str, Any] | None) -> dict[str, Any]:
        """Write one object (or delete it when obj is None) at the next revision and fan the event out."""
        self.rv += 1
        if obj is None:
            assert prev is not None
            gone = copy.deepcopy(prev)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            del self.data[storage][key]
            ev = Event(self.rv, storage, "DELETED", gone, prev)
            result = gone
        else:
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.data[storage][key] = obj
            ev = Event(self.rv, storage, etype, obj, prev)
            result = obj
        if storage == "services" and self.allocator is not None:
            self.allocator.stored(key, obj)  # its counts of the addresses and ports in use
        self.history.append(ev)
        while len(self.history) > self.history_size:
            self.compacted = self.history.popleft().rv
        for w in list(self.watchers):
            if w.rtype.storage_key == storage:
                w.offer(ev)
        self.cond.notify_all()
        return result

    def compact(self, rv: int | None = None) -> int:
        """Forget history up to `rv` (default: everything), like an etcd compaction."""
        with self.lock:
            target = self.rv if rv is None else min(rv, self.rv)
            while self.history and self.history[0].rv <= target:
                self.history.popleft()
            self.compacted = max(self.compacted, target)
            return self.compacted

    def snapshot(self, storage: str, rv: int) -> dict[Key, dict[str, Any]]:
        """The objects of `storage` as they were at revision `rv` (410 if compacted away)."""
        if rv < self.compacted:
            raise errors.gone(f"too old resource version: {rv} ({self.compacted})")
        state = dict(self.data[storage])
        for ev in reversed(self.history):
            if ev.rv <= rv:
                break
            if ev.storage != storage:
                continue
            key = (ev.obj["metadata"].get("namespace", ""), ev.obj["metadata"]["name"])
            if ev.prev is None:
                state.pop(key, None)
            else:
                state[key] = ev.prev
        return state

    def _not_found(self, rtype: ResourceType, name: str) -> ApiError:
        return errors.not_found(rtype.plural, rtype.group, name)

    def _namespace_must_exist(self, rtype: ResourceType, namespace: str) -> None:
        if rtype.namespaced and ("", namespace) not in self.data["namespaces"]:
            raise errors.not_found("namespaces", "", namespace)

    @staticmethod
    def _ensure_namespace(rtype: ResourceType, obj: dict[str, Any], namespace: str | None) -> None:
        """EnsureObjectNamespaceMatchesRequestNamespace."""
        meta = obj.setdefault("metadata", {})
        req = namespace or ""
        have = meta.get("namespace") or ""
        if have == req:
            pass
        elif not have:
            meta["namespace"] = req
        elif not req:
            meta.pop("namespace", None)
        else:
            raise errors.bad_request("the namespace of the provided object does not match the namespace sent "
                                     "on the request")
        if not rtype.namespaced:
            meta.pop("namespace", None)

    @staticmethod
    def _check_body(rtype: ResourceType, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request(f"Object 'Kind' is missing in '{str(body)[:80]}'")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if kind and kind != rtype.kind:
            raise errors.bad_request(f"the kind in the data ({kind}) does not match the expected kind "
                                     f"({rtype.kind}) for {rtype.plural}")
        if api_version and api_version != rtype.api_version:
            raise errors.bad_request(f"the API version in the data ({api_version}) does not match the expected "
                                     f"API version ({rtype.api_version})")
        meta = body.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        return body

    def _invalid(self, rtype: ResourceType, name: str, errs: list[FieldError]) -> ApiError:
        return errors.invalid_object(rtype.kind, rtype.group, name, errs)

    # --- reads -------------------------------------------------------------------
    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.data[rtype.storage_key].get((namespace or "", name))
            if obj is None:
                raise self._not_found(rtype, name)
            return rtype.view(obj)

    def list(self, rtype: ResourceType, namespace: str | None, labels: LabelSelector, fields: FieldSelector,
             rv: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """Matching objects in key order, and the revision the list reflects."""
        with self.lock:
            at = self.rv if rv is None else rv
            state = self.data[rtype.storage_key] if rv is None or rv == self.rv else \
                self.snapshot(rtype.storage_key, rv)
            probe = Watcher(rtype, namespace, labels, fields)
            items = [rtype.view(state[k]) for k in sorted(state) if probe.matches(state[k])]
            return items, at

    def list_page(self, rtype: ResourceType, namespace: str | None, labels: LabelSelector, fields: FieldSelector,
                  rv: int | None = None, after: Key | None = None, limit: int = 0,
                  ) -> tuple[list[bytes], list[Key], int, int]:
        """One page of a list as the items' JSON, for types stored as they are served (no `to_view`).

        `list` copies every object of the type for every page; a client paging through 10,000 objects
        500 at a time then waits ~10 s per type. Here an item's JSON is made once per stored version
        of the object (objects are replaced, never changed in place) and the keys are sorted once per
        revision. Returns the items' JSON, their keys, the revision, and how many match after them.
        """
        assert rtype.to_view is None
        with self.lock:
            at = self.rv if rv is None else rv
            storage = rtype.storage_key
            current = rv is None or rv == self.rv
            state = self.data[storage] if current else self.snapshot(storage, rv)
            keys = self._keys(storage) if current else sorted(state)
            keys = keys[bisect_right(keys, after):] if after is not None else keys
            if namespace is not None or not labels.empty or not fields.empty:
                probe = Watcher(rtype, namespace, labels, fields)
                keys = [k for k in keys if probe.matches(state[k])]
            page = keys[:limit] if limit > 0 else keys
            return [self._json_of(storage, k, state[k]) for k in page], page, at, len(keys) - len(page)

    def _keys(self, storage: str) -> list[Key]:
        cached = self._sorted.get(storage)
        if cached is None or cached[0] != self.rv:
            cached = self._sorted[storage] = (self.rv, sorted(self.data[storage]))
        return cached[1]

    def _json_of(self, storage: str, key: Key, obj: dict[str, Any]) -> bytes:
        cached = self._item_json.get((storage, key))
        if cached is None or cached[0] is not obj:
            if len(self._item_json) > 2 * sum(map(len, self.data.values())) + 1000:  # drop deleted objects'
                self._item_json = {k: v for k, v in self._item_json.items() if self.data[k[0]].get(k[1]) is v[0]}
            item = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}  # no TypeMeta in a list
            cached = self._item_json[(storage, key)] = (obj, json.dumps(item, separators=(",", ":")).encode())
        return cached[1]

    def wait_for_rv(self, rv: int, timeout: float) -> bool:
        """Block until the store has reached revision `rv` (for "not older than" reads)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.rv < rv:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    # --- writes ------------------------------------------------------------------
    def create(self, rtype: ResourceType, namespace: str | None, body: Any, dry_run: bool = False,
               validate: bool = True) -> dict[str, Any]:
        body = self._check_body(rtype, body)
        obj = rtype.unview(body)
        with self.lock:
            self._ensure_namespace(rtype, obj, namespace)
            meta = obj["metadata"]
            ns = meta.get("namespace", "")
            if rtype.namespaced and ns:
                self._namespace_must_exist(rtype, ns)
            if meta.get("resourceVersion"):
                raise errors.bad_request("resourceVersion should not be set on objects to be created")
            if not meta.get("name") and meta.get("generateName"):
                for _ in range(100):
                    candidate = meta["generateName"] + _rand_suffix(self.rng)
                    if (ns, candidate) not in self.data[rtype.storage_key]:
                        break
                meta["name"] = candidate
            for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                      "generation", "selfLink", "managedFields"):
                meta.pop(k, None)
            normalize_times(obj)
            strat = self.strategy(rtype)
            name = meta.get("name") or ""
            if validate:
                strat.prepare_create(obj)
                errs = validate_object_meta(meta, rtype.namespaced, strat.name_rule) + strat.validate(obj)
                if errs:
                    raise self._invalid(rtype, name, errs)
            if (ns, name) in self.data[rtype.storage_key]:
                raise errors.already_exists(rtype.plural, rtype.group, name)
            if validate:
                errs = strat.allocate(obj, ns, name)
                if errs:
                    raise self._invalid(rtype, name, errs)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_seconds()
            if strat.uses_generation:
                meta["generation"] = 1
            if dry_run:
                meta["resourceVersion"] = ""
                return rtype.view(obj)
            stored = self._commit(rtype.storage_key, (ns, name), "ADDED", obj, None)
            return rtype.view(stored)

    def update(self, rtype: ResourceType, namespace: str | None, name: str, body: Any,
               subresource: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        body = self._check_body(rtype, body)
        obj = rtype.unview(body)
        with self.lock:
            self._ensure_namespace(rtype, obj, namespace)
            meta = obj["metadata"]
            if (meta.get("name") or "") != name:
                raise errors.bad_request(f"the name of the object ({meta.get('name') or ''}) does not match the "
                                         f"name on the URL ({name})")
            ns = namespace or ""
            old = self.data[rtype.storage_key].get((ns, name))
            if old is None:
                raise self._not_found(rtype, name)
            given_rv = meta.get("resourceVersion") or ""
            if given_rv and given_rv != old["metadata"]["resourceVersion"]:
                raise errors.conflict(rtype.plural, rtype.group, name, errors.STALE)
            normalize_times(obj)
            return self._apply_update(rtype, ns, name, old, obj, subresource, dry_run)

    def _apply_update(self, rtype: ResourceType, ns: str, name: str, old: dict[str, Any], obj: dict[str, Any],
                      subresource: str | None, dry_run: bool) -> dict[str, Any]:
        strat = self.strategy(rtype)
        meta, ometa = obj["metadata"], old["metadata"]
        if subresource == "status":
            new = {k: json_copy(v) for k, v in old.items() if k not in ("metadata", "status")}
            new["metadata"] = meta
            if "status" in obj:
                new["status"] = obj["status"]
            meta.pop("deletionTimestamp", None)
            meta["ownerReferences"] = copy.deepcopy(ometa.get("ownerReferences"))
            if meta["ownerReferences"] is None:
                meta.pop("ownerReferences")
        elif subresource == "finalize":
            new = copy.deepcopy(old)
            new["spec"] = copy.deepcopy(obj.get("spec") or {})
        else:
            new = obj
            if strat.status_subresource:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        nmeta = new["metadata"]
        if not nmeta.get("uid"):
            nmeta["uid"] = ometa.get("uid")
        nmeta["creationTimestamp"] = ometa.get("creationTimestamp")
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            if k in ometa:
                nmeta[k] = ometa[k]
            else:
                nmeta.pop(k, None)
        nmeta.pop("selfLink", None)
        nmeta.pop("managedFields", None)
        errs: list[FieldError] = []
        if subresource is None:
            errs += strat.prepare_update(new, old)
        errs += validate_meta_update(nmeta, ometa)
        errs += validate_object_meta(nmeta, rtype.namespaced, strat.name_rule)
        if subresource is None:  # status writes are not held to the spec's rules
            errs += strat.validate_update(new, old)
        elif subresource == "status":
            errs += strat.validate_status_update(new, old)
        if errs:
            raise self._invalid(rtype, name, errs)
        if subresource is None:
            errs = strat.allocate(new, ns, name)
            if errs:
                raise self._invalid(rtype, name, errs)
        if strat.uses_generation and strat.spec_changed(new, old):
            nmeta["generation"] = int(ometa.get("generation") or 0) + 1
        nmeta["resourceVersion"] = ometa["resourceVersion"]
        if new == old:  # a no-op write neither bumps the revision nor emits an event
            return rtype.view(old)
        if dry_run:
            return rtype.view(new)
        stored = self._commit(rtype.storage_key, (ns, name), "MODIFIED", new, old)
        result = rtype.view(stored)
        if nmeta.get("deletionTimestamp") and not nmeta.get("finalizers"):
            self._commit(rtype.storage_key, (ns, name), "DELETED", None, stored)
        return result

    def update_from_current(self, rtype: ResourceType, namespace: str | None, name: str,
                            mutate: Any, subresource: str | None = None, dry_run: bool = False,
                            create_if_missing: Any = None) -> tuple[dict[str, Any], bool]:
        """PATCH: apply `mutate(view) -> new view` to the current object and update atomically.

        Returns (result, created).  `create_if_missing` (server-side apply) is a callable
        giving the object to create when there is nothing to patch.
        """
        with self.lock:
            ns = namespace or ""
            old = self.data[rtype.storage_key].get((ns, name))
            if old is None:
                if create_if_missing is not None and subresource is None:
                    return self.create(rtype, namespace, create_if_missing(), dry_run), True
                raise self._not_found(rtype, name)
            patched = mutate(rtype.view(old))
            if not isinstance(patched, dict):
                raise errors.bad_request("the patched object is not a JSON object")
            patched = self._check_body(rtype, patched)
            obj = rtype.unview(patched)
            self._ensure_namespace(rtype, obj, namespace)
            meta = obj["metadata"]
            if (meta.get("name") or "") != name:
                raise self._invalid(rtype, name, [errors.invalid("metadata.name", meta.get("name") or "",
                                                                 "field is immutable")])
            given_rv = meta.get("resourceVersion") or ""
            if given_rv and given_rv != old["metadata"]["resourceVersion"]:
                raise errors.conflict(rtype.plural, rtype.group, name, errors.STALE)
            normalize_times(obj)
            return self._apply_update(rtype, ns, name, old, obj, subresource, dry_run), False

    def delete(self, rtype: ResourceType, namespace: str | None, name: str,
               preconditions: dict[str, Any] | None = None, dry_run: bool = False) -> tuple[dict[str, Any], bool]:
        """Delete one object; returns (the object as the response shows it, deleted-now)."""
        with self.lock:
            ns = namespace or ""
            old = self.data[rtype.storage_key].get((ns, name))
            if old is None:
                raise self._not_found(rtype, name)
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != old["metadata"].get("uid"):
                raise errors.conflict(rtype.plural, rtype.group, name,
                                      f"Precondition failed: UID in precondition: {pre['uid']}, UID in object "
                                      f"meta: {old['metadata'].get('uid')}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise errors.conflict(rtype.plural, rtype.group, name,
                                      f"Precondition failed: ResourceVersion in precondition: "
                                      f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                      f"{old['metadata']['resourceVersion']}")
            if dry_run:
                return rtype.view(old), True
            if rtype.storage_key == "namespaces":
                return self._delete_namespace(rtype, name, old), True
            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp"):
                    return rtype.view(old), False
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = now_seconds()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                return rtype.view(self._commit(rtype.storage_key, (ns, name), "MODIFIED", new, old)), False
            self._commit(rtype.storage_key, (ns, name), "DELETED", None, old)
            return rtype.view(old), True

    def _delete_namespace(self, rtype: ResourceType, name: str, old: dict[str, Any]) -> dict[str, Any]:
        """Namespace deletion, with the namespace controller's cleanup done synchronously."""
        term = copy.deepcopy(old)
        term["metadata"]["deletionTimestamp"] = now_seconds()
        term.setdefault("status", {})["phase"] = "Terminating"
        term = self._commit("namespaces", ("", name), "MODIFIED", term, old)
        answer = rtype.view(term)
        for r in RESOURCES:
            if not r.namespaced or r.to_view is not None:
                continue
            for key in sorted(k for k in self.data[r.storage_key] if k[0] == name):
                self._commit(r.storage_key, key, "DELETED", None, self.data[r.storage_key][key])
        self._commit("namespaces", ("", name), "DELETED", None, term)
        return answer

    def put_raw(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """Store `obj` as given (no defaulting or validation) and emit the watch event."""
        with self.lock:
            stored = rtype.unview(obj) if rtype.from_view else copy.deepcopy(obj)
            meta = stored.setdefault("metadata", {})
            ns = meta.get("namespace", "") if rtype.namespaced else ""
            if rtype.namespaced and not ns:
                ns = meta["namespace"] = "default"
            name = meta.get("name")
            if not name:
                raise ValueError("put_raw needs metadata.name")
            storage = rtype.storage_key
            old = self.data[storage].get((ns, name))
            meta.setdefault("uid", old["metadata"].get("uid") if old else str(uuid.uuid4()))
            meta.setdefault("creationTimestamp",
                            old["metadata"].get("creationTimestamp") if old else now_seconds())
            stored.setdefault("apiVersion", storage_type(storage).api_version)
            stored.setdefault("kind", storage_type(storage).kind)
            result = self._commit(storage, (ns, name), "MODIFIED" if old else "ADDED", stored, old)
            return rtype.view(result)

    def delete_raw(self, rtype: ResourceType, namespace: str | None, name: str) -> None:
        """Remove an object without finalizer or namespace semantics."""
        with self.lock:
            key = (namespace or "" if rtype.namespaced else "", name)
            old = self.data[rtype.storage_key].get(key)
            if old is None:
                raise self._not_found(rtype, name)
            self._commit(rtype.storage_key, key, "DELETED", None, old)

    # --- watches -------------------------------------------------------------------
    def watch(self, rtype: ResourceType, namespace: str | None, labels: LabelSelector, fields: FieldSelector,
              since: int | None, initial_events_end: bool = False) -> Watcher:
        """Register a watch.  since=None means "current state as ADDED events, then changes".

        Raises 410 (as ApiError) when `since` is older than the history window; the
        HTTP layer turns that into the in-stream ERROR event the real server sends.
        """
        w = Watcher(rtype, namespace, labels, fields)
        with self.lock:
            if since is None:
                state = self.data[rtype.storage_key]
                for key in sorted(state):
                    if w.matches(state[key]):
                        w.queue.put(("event", ("ADDED", state[key])))
                if initial_events_end:
                    w.queue.put(("bookmark", (self.rv, True)))
            else:
                if since < self.compacted:
                    raise errors.gone(f"too old resource version: {since} ({self.compacted})")
                for ev in self.history:
                    if ev.rv > since and ev.storage == rtype.storage_key:
                        w.offer(ev)
            self.watchers.add(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        with self.lock:
            self.watchers.discard(w)

    def bookmark_rv(self, w: Watcher) -> int | None:
        """The revision a bookmark may claim now, or None while events are still queued."""
        with self.lock:
            if not w.queue.empty():
                return None
            return self.rv

    def end_watches(self, how: str) -> int:
        with self.lock:
            ws = list(self.watchers)
            for w in ws:
                w.end(how)
            return len(ws)

    def bootstrap(self, namespaces: Iterable[str]) -> None:
        ns_type = next(r for r in RESOURCES if r.plural == "namespaces")
        for ns in namespaces:
            self.create(ns_type, None, {"metadata": {"name": ns}})
