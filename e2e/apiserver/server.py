"""HTTP front end of the stand-in and the `ApiServerStandin` test facade.

The handler speaks the API server's REST dialect over plain HTTP/1.1 with
keep-alive and chunked watch streams, so clients exercise their real code
paths (connection reuse, stream parsing, reconnects) against it.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import queue
import random
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from . import errors
from .errors import ApiError
from . import crds, schema
from .patch import PatchError, PatchFormatError, json_patch, merge_patch, strategic_merge_patch
from .resources import ResourceType, find, group_versions
from .selectors import FieldSelector, LabelSelector
from .services import Allocator
from .store import Store, Watcher
from .tables import table, wanted_table_version

SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-nftproxy-standin",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
PATCH_TYPES = ["application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json", "application/apply-patch+yaml"]
_CONTINUE_TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new list "
    "without the continue parameter, or use the continue token in this response to retrieve the remainder of "
    "the results. Continuing with the provided token results in an inconsistent list - objects that were "
    "created, modified, or deleted between the time the first chunk was returned and now may show up in the "
    "list.")


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def _storage_hash(r: ResourceType) -> str:
    digest = hashlib.sha256(f"{r.group}/{r.version}/{r.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def _resource_list(gv: str, rtypes: list[ResourceType]) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for r in rtypes:
        entry: dict[str, Any] = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                                 "kind": r.kind, "verbs": list(r.verbs)}
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        entry["storageVersionHash"] = _storage_hash(r)
        resources.append(entry)
        for sub in r.subresources:
            resources.append({"name": f"{r.plural}/{sub}", "singularName": "", "namespaced": r.namespaced,
                              "kind": r.kind, "verbs": ["update"] if sub == "finalize" else ["get", "patch", "update"]})
    out: dict[str, Any] = {"kind": "APIResourceList"}
    if gv != "v1":
        out["apiVersion"] = "v1"
    out["groupVersion"] = gv
    out["resources"] = resources
    return out


def _api_group(group: str, versions: list[str]) -> dict[str, Any]:
    vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": vs, "preferredVersion": vs[0]}


def _openapi_hash(gv: str) -> str:
    return hashlib.sha256(f"standin:{gv}:{SERVER_VERSION['gitVersion']}".encode()).hexdigest()[:32].upper()


def _openapi_v3(gv: str, rtypes: list[ResourceType]) -> dict[str, Any]:
    """A skeletal OpenAPI v3 document for one group/version.

    It carries no schemas, only the operations with their
    x-kubernetes-group-version-kind and the `fieldValidation` parameter:
    that is what kubectl probes to decide that the server validates fields
    itself (so it sends fieldValidation=Strict instead of downloading schemas).
    """
    prefix = "/api/v1" if gv == "v1" else f"/apis/{gv}"
    param = {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}
    ok = {"200": {"description": "OK"}}
    paths: dict[str, Any] = {}
    for r in rtypes:
        gvk = {"group": r.group, "version": r.version, "kind": r.kind}
        base = f"{prefix}/namespaces/{{namespace}}/{r.plural}" if r.namespaced else f"{prefix}/{r.plural}"
        def op(action: str, params: list[dict[str, Any]], kind: str = r.kind,
               gvk: dict[str, str] = gvk) -> dict[str, Any]:  # this iteration's, bound now
            return {"operationId": f"{action}{kind}", "parameters": params, "responses": ok,
                    "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk}
        paths[base] = {"get": op("list", []), "post": op("post", [param])}
        paths[base + "/{name}"] = {"get": op("get", []), "put": op("put", [param]),
                                   "patch": op("patch", [param]), "delete": op("delete", [])}
        for sub in r.subresources:
            paths[f"{base}/{{name}}/{sub}"] = {"put": op("put", [param])}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
            "paths": paths, "components": {"schemas": {}}}


def _encode_continue(rv: int, key: tuple[str, str]) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": f"{key[0]}/{key[1]}\x00" if key[0]
                      else f"{key[1]}\x00", "k": list(key)})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        if data.get("v") != "meta.k8s.io/v1":
            raise ValueError("wrong version")
        return int(data["rv"]), (str(data["k"][0]), str(data["k"][1]))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise errors.bad_request(f"continue key is not valid: {exc}") from None


def _parse_rv(text: str) -> int:
    try:
        value = int(text)
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        raise errors.bad_request(f'resourceVersion: Invalid value: "{text}": strconv.ParseUint: parsing '
                                 f'"{text}": invalid syntax') from None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    standin: "ApiServerStandin"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    server_version = "nftproxy-apiserver-standin"
    sys_version = ""

    # --- plumbing --------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        # Go's net/http (the real API server) sets TCP_NODELAY: small watch events go out at once
        # instead of waiting for the client's delayed ACK (a steady ~40 ms otherwise).
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.server.standin._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.standin._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.standin.verbose:
            sys.stderr.write("apiserver-standin: " + (format % args) + "\n")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, code: int, payload: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for warning in getattr(self, "_warnings", []):
            self.send_header("Warning", "299 - " + json.dumps(warning))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", str(random.getrandbits(64)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def _send_json(self, code: int, obj: Any) -> None:
        if self._query.get("pretty") in ("true", "1"):
            self._send(code, (json.dumps(obj, indent=2) + "\n").encode())
        else:
            self._send(code, _dumps(obj))

    def _send_error(self, err: ApiError) -> None:
        self._send(err.code, _dumps(err.status()), headers=err.headers)

    # --- dispatch ----------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        standin = self.server.standin
        standin._log_request(method, self.path)
        self._query: dict[str, str] = {}
        self._warnings: list[str] = []
        try:
            body = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        try:
            split = urlsplit(self.path)
            self._query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
            if standin._down == "unavailable":
                raise errors.service_unavailable()
            self._route(method, unquote(split.path), body)
        except ApiError as err:
            self._safe(self._send_error, err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # an internal bug must still answer a Status, as the real server does
            traceback.print_exc()
            self._safe(self._send_error, ApiError(500, "InternalError", f"Internal error occurred: {exc!r}"))

    def _safe(self, fn: Callable[[ApiError], None], err: ApiError) -> None:
        try:
            fn(err)
        except OSError:
            self.close_connection = True

    def _route(self, method: str, path: str, body: bytes) -> None:
        path = path.rstrip("/") or "/"
        standin = self.server.standin
        gvs = group_versions()
        if path in ("/healthz", "/livez", "/readyz") or path.startswith(("/healthz/", "/livez/", "/readyz/")):
            self._send(200, b"ok", "text/plain; charset=utf-8")
            return
        if method != "GET" and not (path.startswith("/api/") or path.startswith("/apis/")):
            raise errors.method_not_allowed()
        if path == "/version":
            self._send_json(200, SERVER_VERSION)
            return
        if path == "/api":
            self._send_json(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{standin.host}:{standin.port}"}]})
            return
        if path == "/apis":
            groups: dict[str, list[str]] = {}
            for gv in gvs:
                if "/" in gv:
                    g, v = gv.split("/")
                    groups.setdefault(g, []).append(v)
            self._send_json(200, {"kind": "APIGroupList", "apiVersion": "v1",
                                  "groups": [_api_group(g, vs) for g, vs in groups.items()]})
            return
        if path == "/openapi/v3":
            self._send_json(200, {"paths": {
                ("api/v1" if gv == "v1" else f"apis/{gv}"): {
                    "serverRelativeURL": f"/openapi/v3/{'api/v1' if gv == 'v1' else 'apis/' + gv}"
                                         f"?hash={_openapi_hash(gv)}"} for gv in gvs}})
            return
        if path.startswith("/openapi/v3/"):
            gv = path[len("/openapi/v3/"):]
            gv = "v1" if gv == "api/v1" else gv[len("apis/"):] if gv.startswith("apis/") else ""
            if gv not in gvs:
                raise errors.path_not_found()
            self._send_json(200, _openapi_v3(gv, gvs[gv]))
            return
        if path.startswith("/openapi/"):
            # No v2 document: clients that need one (kubectl explain) get a clean 404.
            raise errors.path_not_found()
        parts = path.split("/")[1:]
        if parts[0] == "api" and len(parts) >= 2 and parts[1] == "v1":
            gv, rest = "v1", parts[2:]
        elif parts[0] == "apis" and len(parts) >= 2:
            group = parts[1]
            versions = [gv.split("/")[1] for gv in gvs if gv.startswith(group + "/")]
            if not versions:
                raise errors.path_not_found()
            if len(parts) == 2:
                self._send_json(200, {"kind": "APIGroup", "apiVersion": "v1", **_api_group(group, versions)})
                return
            if parts[2] not in versions:
                raise errors.path_not_found()
            gv, rest = f"{group}/{parts[2]}", parts[3:]
        else:
            self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        if not rest:
            if method != "GET":
                raise errors.method_not_allowed()
            self._send_json(200, _resource_list(gv, gvs[gv]))
            return
        self._resource(method, gvs[gv], rest, body)

    def _resource(self, method: str, rtypes: list[ResourceType], segs: list[str], body: bytes) -> None:
        by_plural = {r.plural: r for r in rtypes}
        watch_prefix = False
        if segs[0] == "watch":
            watch_prefix, segs = True, segs[1:]
            if not segs:
                raise errors.path_not_found()
        namespace: str | None = None
        if len(segs) >= 3 and segs[0] == "namespaces" and segs[2] in by_plural and by_plural[segs[2]].namespaced:
            namespace, segs = segs[1], segs[2:]
        rtype = by_plural.get(segs[0])
        if rtype is None or len(segs) > 3:
            raise errors.path_not_found()
        name = segs[1] if len(segs) > 1 else None
        sub = segs[2] if len(segs) > 2 else None
        if sub is not None and sub not in rtype.subresources:
            raise errors.path_not_found()
        if rtype.namespaced and name is not None and namespace is None:
            raise errors.path_not_found()
        store = self.server.standin.store
        q = self._query
        dry_run = self._dry_run()
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method) or \
            {"DELETE": "delete" if name else "deletecollection"}.get(method)
        if sub is None and verb is not None and verb not in rtype.verbs:
            raise errors.method_not_allowed()  # e.g. the read-only CRD list
        if name is None:
            if method == "GET":
                if watch_prefix or q.get("watch") in ("true", "1"):
                    self._watch(rtype, namespace, None)
                else:
                    self._list(rtype, namespace)
            elif method == "POST" and (namespace is not None or not rtype.namespaced):
                obj = self._typed(rtype, self._decode(body))
                self._send_json(201, store.create(rtype, namespace, obj, dry_run))
            elif method == "DELETE" and "deletecollection" in rtype.verbs:
                self._delete_collection(rtype, namespace, body, dry_run)
            else:
                raise errors.method_not_allowed()
            return
        if watch_prefix:
            if method != "GET" or sub is not None:
                raise errors.method_not_allowed()
            self._watch(rtype, namespace, name)
            return
        if sub == "finalize" and method != "PUT":
            raise errors.method_not_allowed()
        if method == "GET":
            obj = store.get(rtype, namespace, name)
            as_table = wanted_table_version(self.headers.get("Accept") or "") if sub is None else None
            if as_table:
                obj = table(rtype, as_table, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]},
                            self._query.get("includeObject") or "Metadata")
            self._send_json(200, obj)
        elif method == "PUT":
            obj = self._typed(rtype, self._decode(body))
            self._send_json(200, store.update(rtype, namespace, name, obj, sub, dry_run))
        elif method == "PATCH":
            self._patch(rtype, namespace, name, sub, body, dry_run)
        elif method == "DELETE" and sub is None:
            self._delete(rtype, namespace, name, body, dry_run)
        else:
            raise errors.method_not_allowed()

    # --- verbs ---------------------------------------------------------------------
    def _dry_run(self) -> bool:
        value = self._query.get("dryRun")
        if value is None or value == "":
            return False
        if value != "All":
            raise errors.bad_request(f'dryRun: Unsupported value: "{value}": supported values: "All"')
        return True

    def _decode(self, body: bytes, yaml_ok: bool = True) -> Any:
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
        if not body:
            raise errors.bad_request("the body of the request was empty")
        try:
            if ctype in ("application/yaml", "application/apply-patch+yaml") and yaml_ok:
                return yaml.safe_load(body)
            if ctype.endswith("json") or ctype == "*/*":
                return json.loads(body)
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(f"couldn't get version/kind; json parse error: {exc}") from None
        if "protobuf" in ctype or "cbor" in ctype:
            # A real server takes these; the stand-in speaks JSON/YAML only (see the package docstring).
            raise errors.ApiError(415, "UnsupportedMediaType",
                                  f"the API server stand-in does not decode {ctype} request bodies; send JSON "
                                  f"(e.g. kubectl create -f / apply -f instead of kubectl create <generator>)")
        raise errors.unsupported_media_type(ctype, ["application/json", "application/yaml"])

    def _typed(self, rtype: ResourceType, body: Any) -> Any:
        """Decode like the Go structs would: prune unknown fields, per fieldValidation."""
        mode = self._query.get("fieldValidation") or "Warn"
        if mode not in ("Ignore", "Warn", "Strict"):
            raise errors.bad_request(f'fieldValidation: Unsupported value: "{mode}": supported values: '
                                     f'"Ignore", "Strict", "Warn"')
        if isinstance(body, dict):
            self._warnings += schema.decode(rtype.group, rtype.version, rtype.kind, body, mode)
        return body

    def _selectors(self, rtype: ResourceType, name: str | None) -> tuple[LabelSelector, FieldSelector]:
        labels = LabelSelector(self._query.get("labelSelector"))
        ftext = self._query.get("fieldSelector") or ""
        if name is not None:
            ftext = f"metadata.name={name}" + (f",{ftext}" if ftext else "")
        return labels, FieldSelector(ftext, rtype.field_labels)

    def _list(self, rtype: ResourceType, namespace: str | None) -> None:
        store = self.server.standin.store
        q = self._query
        labels, fields = self._selectors(rtype, None)
        rv_text = q.get("resourceVersion", "")
        match = q.get("resourceVersionMatch", "")
        cont = q.get("continue", "")
        limit_text = q.get("limit", "")
        try:
            limit = int(limit_text) if limit_text else 0
        except ValueError:
            raise errors.bad_request(f'limit: Invalid value: "{limit_text}": must be an integer') from None
        if match not in ("", "Exact", "NotOlderThan"):
            raise errors.bad_request(f'resourceVersionMatch: Unsupported value: "{match}": supported values: '
                                     f'"Exact", "NotOlderThan"')
        start: tuple[str, str] | None = None
        at: int | None = None
        if cont:
            if rv_text not in ("", "0") or match:
                raise errors.bad_request("specifying resource version is not allowed when using continue")
            at, start = _decode_continue(cont)
            if at < store.compacted:
                raise errors.gone(_CONTINUE_TOO_OLD)
        elif match and not rv_text:
            raise errors.bad_request("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless "
                                     "resourceVersion is provided")
        elif rv_text == "0":
            if match == "Exact":
                raise errors.bad_request('resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is '
                                         'forbidden for resourceVersion "0"')
            limit = 0  # served from the watch cache: the real server ignores limit here
        elif rv_text:
            wanted = _parse_rv(rv_text)
            if wanted > store.current_rv() and not store.wait_for_rv(wanted, 3.0):
                raise errors.too_large_resource_version(wanted, store.current_rv())
            if match == "Exact":
                at = wanted
        as_table = wanted_table_version(self.headers.get("Accept") or "")
        if not as_table and rtype.to_view is None and self._query.get("pretty") not in ("true", "1"):
            self._list_fast(rtype, namespace, labels, fields, at, start, limit, bool(cont))
            return
        try:
            items, at = store.list(rtype, namespace, labels, fields, at)
        except ApiError as err:
            if cont and err.code == 410:
                raise errors.gone(_CONTINUE_TOO_OLD) from None
            raise
        if start is not None:
            items = [i for i in items if (i["metadata"].get("namespace", ""), i["metadata"]["name"]) > start]
        meta: dict[str, Any] = {"resourceVersion": str(at)}
        if limit > 0 and len(items) > limit:
            last = items[limit - 1]["metadata"]
            meta["continue"] = _encode_continue(at, (last.get("namespace", ""), last["name"]))
            if labels.empty and fields.empty:
                meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        for item in items:  # list items carry no TypeMeta on the wire
            item.pop("kind", None)
            item.pop("apiVersion", None)
        if as_table:
            self._send_json(200, table(rtype, as_table, items, meta, q.get("includeObject") or "Metadata"))
            return
        self._send_json(200, {"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version, "metadata": meta,
                              "items": items})

    def _list_fast(self, rtype: ResourceType, namespace: str | None, labels: LabelSelector, fields: FieldSelector,
                   at: int | None, start: tuple[str, str] | None, limit: int, continued: bool) -> None:
        """The list as `_list` answers it, from each item's JSON cached in the store (Store.list_page)."""
        try:
            items, keys, at, remaining = self.server.standin.store.list_page(
                rtype, namespace, labels, fields, at, start, limit)
        except ApiError as err:
            if continued and err.code == 410:
                raise errors.gone(_CONTINUE_TOO_OLD) from None
            raise
        meta: dict[str, Any] = {"resourceVersion": str(at)}
        if remaining:
            meta["continue"] = _encode_continue(at, keys[-1])
            if labels.empty and fields.empty:
                meta["remainingItemCount"] = remaining
        head = _dumps({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version, "metadata": meta})
        self._send(200, head[: head.rindex(b"}")] + b',"items":[' + b",".join(items) + b"]}\n")

    def _patch(self, rtype: ResourceType, namespace: str | None, name: str, sub: str | None, body: bytes,
               dry_run: bool) -> None:
        store = self.server.standin.store
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in PATCH_TYPES:
            raise errors.unsupported_media_type(ctype, PATCH_TYPES)
        doc = self._decode(body)
        apply_create = None
        if ctype == "application/apply-patch+yaml":
            if not self._query.get("fieldManager"):
                raise errors.ApiError(422, "Invalid", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: '
                                                      'Required value: is required for apply patch',
                                      {"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [
                                          {"reason": "FieldValueRequired", "message": "Required value: is "
                                           "required for apply patch", "field": "fieldManager"}]})
            if not isinstance(doc, dict):
                raise errors.bad_request("apply patch must be an object")
            apply_create = lambda: self._typed(rtype, dict(doc))  # noqa: E731 - tiny closure

        def mutate(current: dict[str, Any]) -> Any:
            return self._typed(rtype, patched(current))

        def patched(current: dict[str, Any]) -> Any:
            try:
                if ctype == "application/json-patch+json":
                    return json_patch(current, doc)
                if ctype == "application/merge-patch+json":
                    if not isinstance(doc, dict):
                        raise PatchFormatError("merge patch must be a JSON object")
                    return merge_patch(current, doc)
                return strategic_merge_patch(current, doc, rtype.kind)
            except PatchFormatError as exc:
                raise errors.bad_request(str(exc)) from None
            except PatchError as exc:
                raise errors.ApiError(422, "Invalid", str(exc)) from None

        result, created = store.update_from_current(rtype, namespace, name, mutate, sub, dry_run, apply_create)
        self._send_json(201 if created else 200, result)

    def _delete_options(self, body: bytes) -> dict[str, Any]:
        if not body.strip():
            opts: dict[str, Any] = {}
        else:
            try:
                opts = json.loads(body)
            except ValueError as exc:
                raise errors.bad_request(f"invalid DeleteOptions: {exc}") from None
        if not isinstance(opts, dict):
            raise errors.bad_request("invalid DeleteOptions")
        if opts.get("dryRun") == ["All"]:
            opts["_dry"] = True
        return opts

    def _delete(self, rtype: ResourceType, namespace: str | None, name: str, body: bytes, dry_run: bool) -> None:
        store = self.server.standin.store
        opts = self._delete_options(body)
        obj, deleted = store.delete(rtype, namespace, name, opts.get("preconditions"),
                                    dry_run or bool(opts.get("_dry")))
        strat = store.strategy(rtype)
        if deleted and not strat.return_deleted_object:
            details: dict[str, Any] = {"name": name}
            if rtype.group:
                details["group"] = rtype.group
            details["kind"] = rtype.plural
            details["uid"] = obj["metadata"].get("uid")
            self._send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                  "details": details})
        else:
            self._send_json(200, obj)

    def _delete_collection(self, rtype: ResourceType, namespace: str | None, body: bytes, dry_run: bool) -> None:
        store = self.server.standin.store
        opts = self._delete_options(body)
        labels, fields = self._selectors(rtype, None)
        with store.lock:
            items, _ = store.list(rtype, namespace, labels, fields)
            deleted = []
            for item in items:
                meta = item["metadata"]
                obj, _ = store.delete(rtype, meta.get("namespace"), meta["name"], None,
                                      dry_run or bool(opts.get("_dry")))
                obj.pop("kind", None)
                obj.pop("apiVersion", None)
                deleted.append(obj)
            at = store.current_rv()
        self._send_json(200, {"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version,
                              "metadata": {"resourceVersion": str(at)}, "items": deleted})

    # --- watch -------------------------------------------------------------------------
    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _peer_closed(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _watch(self, rtype: ResourceType, namespace: str | None, name: str | None) -> None:
        standin = self.server.standin
        store = standin.store
        q = self._query
        labels, fields = self._selectors(rtype, name)
        rv_text = q.get("resourceVersion", "")
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        initial = q.get("sendInitialEvents") in ("true", "1")
        if initial and not bookmarks:
            raise errors.invalid_object("ListOptions", "meta.k8s.io", "", [errors.forbidden(
                "allowWatchBookmarks", "allowWatchBookmarks required when sendInitialEvents is true")])
        since = None if rv_text in ("", "0") or initial else _parse_rv(rv_text)
        timeout_text = q.get("timeoutSeconds", "")
        try:
            timeout = float(timeout_text) if timeout_text else standin.max_watch_seconds
        except ValueError:
            raise errors.bad_request(f'timeoutSeconds: Invalid value: "{timeout_text}"') from None
        try:
            watcher = store.watch(rtype, namespace, labels, fields, since, initial)
        except ApiError as err:
            if err.code != 410:
                raise
            # The real server answers 200 and reports expiry as an in-stream ERROR event.
            self._start_stream()
            self._write_chunk(_dumps({"type": "ERROR", "object": err.status()}))
            self._write_chunk(b"")
            return
        standin._watch_opened(watcher)
        try:
            self._start_stream()
            self._stream(watcher, rtype, timeout, bookmarks)
        except OSError:
            self.close_connection = True
        finally:
            store.unwatch(watcher)
            standin._watch_closed(watcher)

    def _stream(self, watcher: Watcher, rtype: ResourceType, timeout: float | None, bookmarks: bool) -> None:
        standin = self.server.standin
        started = time.monotonic()
        deadline = started + timeout if timeout else None
        interval = standin.bookmark_interval
        next_bookmark = started + interval
        as_table = wanted_table_version(self.headers.get("Accept") or "")
        first_row = True

        def bookmark(rv: int, initial_end: bool = False) -> None:
            meta: dict[str, Any] = {"resourceVersion": str(rv), "creationTimestamp": None}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            self._write_chunk(_dumps({"type": "BOOKMARK", "object": {
                "kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": meta}}))

        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                if bookmarks:
                    rv = standin.store.bookmark_rv(watcher)
                    if rv is not None:
                        bookmark(rv)
                self._write_chunk(b"")
                return
            if bookmarks and now >= next_bookmark:
                rv = standin.store.bookmark_rv(watcher)
                if rv is not None:
                    bookmark(rv)
                    next_bookmark = now + interval
            wait = 0.25
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            if bookmarks:
                wait = min(wait, max(0.0, next_bookmark - now))
            try:
                kind, payload = watcher.queue.get(timeout=wait)
            except queue.Empty:
                if self._peer_closed():
                    self.close_connection = True
                    return
                continue
            if kind == "event":
                etype, obj = payload
                if not as_table:
                    self._write_chunk(standin._event_line(rtype, etype, obj))
                    continue
                shown = rtype.view(obj)
                # kubectl get -w: each event carries a one-row Table
                shown = table(rtype, as_table, [shown], {"resourceVersion": shown["metadata"]["resourceVersion"]},
                              self._query.get("includeObject") or "Metadata", with_columns=first_row)
                first_row = False
                self._write_chunk(_dumps({"type": etype, "object": shown}))
            elif kind == "bookmark":
                rv, initial_end = payload
                bookmark(rv, initial_end)
            elif kind == "end":
                if payload == "close":
                    self._write_chunk(b"")
                else:  # "cut": drop the TCP connection mid-stream, as a crashing server would
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return


class ApiServerStandin:
    """A running stand-in API server; use as a context manager.

    Args:
        host: address to listen on (loopback only, by design).
        port: TCP port, 0 to pick a free one; kept across set_down/up.
        service_cidr: one CIDR, or "v4cidr,v6cidr" for dual-stack, to allocate ClusterIPs from.
        node_port_range: "lo-hi" range for nodePort and healthCheckNodePort allocation.
        bookmark_interval: seconds between BOOKMARK events on watches that allow them.
        history_size: events kept for watch resumption; older resourceVersions get 410.
        namespaces: namespaces that exist at start.
        kubeconfig_path: where to write the kubeconfig (default: a private temp dir).
        seed: seed for IP/port/name randomness, for reproducible allocations.
        max_watch_seconds: server-side cap on watches without timeoutSeconds (None: no cap).
        verbose: log each request to stderr.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, service_cidr: str = "198.19.0.0/16",
                 node_port_range: str = "30000-32767", bookmark_interval: float = 60.0,
                 history_size: int = 1000,
                 namespaces: tuple[str, ...] = ("default", "kube-system", "kube-public", "kube-node-lease"),
                 kubeconfig_path: str | None = None, seed: int | None = None,
                 max_watch_seconds: float | None = None, verbose: bool = False) -> None:
        cidrs = [ipaddress.ip_network(c.strip(), strict=False) for c in service_cidr.split(",") if c.strip()]
        if not cidrs or len(cidrs) > 2 or (len(cidrs) == 2 and cidrs[0].version == cidrs[1].version):
            raise ValueError(f"service_cidr must be one CIDR or one IPv4 and one IPv6 CIDR: {service_cidr!r}")
        lo, _, hi = node_port_range.partition("-")
        ports = (int(lo), int(hi))
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.max_watch_seconds = max_watch_seconds
        self.verbose = verbose
        self.request_log: list[tuple[str, str]] = []
        self.store = Store(history_size, Allocator(cidrs, ports, random.Random(seed)), seed)
        self.store.bootstrap(namespaces)
        crds.install(self.store)
        self._kubeconfig_arg = kubeconfig_path
        self.kubeconfig_path = ""
        self._tmpdir: str | None = None
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._watches: set[Watcher] = set()
        self._event_lines: dict[tuple[int, str, str], tuple[dict[str, Any], bytes]] = {}
        self._lock = threading.Lock()
        self._down: str | None = None

    # --- lifecycle ------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ApiServerStandin":
        self._listen()
        if self._kubeconfig_arg:
            self.kubeconfig_path = self._kubeconfig_arg
        else:
            self._tmpdir = tempfile.mkdtemp(prefix="apiserver-standin-")
            self.kubeconfig_path = os.path.join(self._tmpdir, "kubeconfig")
        self.write_kubeconfig(self.kubeconfig_path)
        return self

    def stop(self) -> None:
        self.store.end_watches("cut")
        self._unlisten()
        self._drop_connections()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> "ApiServerStandin":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _listen(self) -> None:
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.standin = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"apiserver-standin:{self.port}", daemon=True)
        self._thread.start()

    def _unlisten(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _drop_connections(self) -> None:
        self.drop_connections()

    def drop_connections(self, host: str | None = None) -> int:
        """Shut down open client connections: all, or those accepted on local address `host`.

        Closing a listener leaves keep-alive connections (and their handler threads)
        serving; a server that really went away drops them too, so do this with it.
        """
        with self._lock:
            conns = list(self._conns)
        dropped = 0
        for conn in conns:
            try:
                if host is not None and conn.getsockname()[0] != host:
                    continue
                conn.shutdown(socket.SHUT_RDWR)
                dropped += 1
            except OSError:
                pass
        return dropped

    def _log_request(self, method: str, path: str) -> None:
        with self._lock:
            self.request_log.append((method, path))

    def _event_line(self, rtype: ResourceType, etype: str, obj: dict[str, Any]) -> bytes:
        """A watch event as sent: made once per stored object version and event type, for every watch
        of it (stored objects are replaced, never changed in place, so no copy is needed either)."""
        if rtype.to_view is not None:
            return _dumps({"type": etype, "object": rtype.view(obj)})
        key = (id(obj), etype, rtype.api_version)
        hit = self._event_lines.get(key)
        if hit is not None and hit[0] is obj:
            return hit[1]
        line = _dumps({"type": etype, "object": {**obj, "apiVersion": rtype.api_version, "kind": rtype.kind}})
        if len(self._event_lines) >= 4096:
            self._event_lines.clear()
        self._event_lines[key] = (obj, line)
        return line

    def _watch_opened(self, w: Watcher) -> None:
        with self._lock:
            self._watches.add(w)

    def _watch_closed(self, w: Watcher) -> None:
        with self._lock:
            self._watches.discard(w)

    def write_kubeconfig(self, path: str) -> None:
        """Write a kubeconfig (no credentials) pointing at this server."""
        name = "nftproxy-standin"
        cfg = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": name, "cluster": {"server": self.url}}],
            "users": [{"name": name, "user": {}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
            "current-context": name,
        }
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            yaml.safe_dump(cfg, fh, sort_keys=False)
        os.replace(tmp, path)

    def client(self) -> Any:
        """A `kubernetes.client.ApiClient` configured from this server's kubeconfig.

        Loopback is added to no_proxy: the v37 client picks proxies up from the
        environment, and a proxy must never see traffic meant for the stand-in.
        """
        from kubernetes import client as k8s_client
        from kubernetes import config

        cfg = k8s_client.Configuration()
        config.load_kube_config(config_file=self.kubeconfig_path, client_configuration=cfg)
        cfg.no_proxy = ",".join(p for p in (cfg.no_proxy, "127.0.0.1", "localhost", "::1") if p)
        return k8s_client.ApiClient(cfg)

    # --- state access for tests --------------------------------------------------------
    @property
    def resource_version(self) -> str:
        """The current global resourceVersion (etcd revision)."""
        return str(self.store.current_rv())

    @property
    def watch_count(self) -> int:
        """Watch streams currently open."""
        with self._lock:
            return len(self._watches)

    def wait_for_watches(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least `count` watch streams are open (to sequence tests without sleeps)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.watch_count >= count:
                return True
            time.sleep(0.01)
        return self.watch_count >= count

    def put_raw(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store `obj` unvalidated and undefaulted (as a buggy or older server might have) and emit its event.

        `resource` is e.g. "services", "endpointslices.discovery.k8s.io" or "coordination.k8s.io/v1/leases".
        Namespaced objects without metadata.namespace go to "default".  Returns the stored object.
        """
        return self.store.put_raw(find(resource), obj)

    def get_raw(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The stored object (as its API version shows it), or None."""
        rtype = find(resource)
        try:
            return self.store.get(rtype, (namespace or "default") if rtype.namespaced else None, name)
        except ApiError:
            return None

    def delete_raw(self, resource: str, name: str, namespace: str | None = None) -> None:
        """Remove an object immediately (no finalizers) and emit DELETED."""
        rtype = find(resource)
        self.store.delete_raw(rtype, (namespace or "default") if rtype.namespaced else None, name)

    # --- fault injection ---------------------------------------------------------------
    def cut_watches(self, graceful: bool = False) -> int:
        """End every open watch: abruptly (TCP shutdown mid-stream) or, if graceful, with a clean end of stream."""
        return self.store.end_watches("close" if graceful else "cut")

    def compact(self) -> int:
        """Drop the event history (like an etcd compaction); returns the compacted revision.

        Watches and continue tokens from any earlier resourceVersion then get 410 Expired.
        """
        return self.store.compact()

    def set_down(self, down: bool, mode: str = "refuse") -> None:
        """Take the server down or bring it back on the same port.

        mode="refuse": close the listening socket and every connection (clients see connection
        refused/reset); mode="unavailable": keep listening but answer 503 ServiceUnavailable.
        Open watches are cut either way.
        """
        if mode not in ("refuse", "unavailable"):
            raise ValueError("mode must be 'refuse' or 'unavailable'")
        if down:
            if self._down is not None:
                return
            self._down = mode
            self.store.end_watches("cut")
            if mode == "refuse":
                self._unlisten()
                self._drop_connections()
        else:
            if self._down == "refuse":
                deadline = time.monotonic() + 5
                while True:
                    try:
                        self._listen()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
            self._down = None

    @property
    def is_down(self) -> bool:
        return self._down is not None
