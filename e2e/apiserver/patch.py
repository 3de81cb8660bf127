"""The three PATCH flavours the API server accepts for built-in types.

JSON merge patch (RFC 7386) and JSON patch (RFC 6902) are exact.  Strategic
merge patch is a merge patch that additionally merges the lists the Go types
tag with a `patchMergeKey` (e.g. Service `spec.ports` by `port`, conditions
by `type`) and understands the `$patch`, `$retainKeys`,
`$deleteFromPrimitiveList/` and `$setElementOrder/` directives.  The merge
keys come from a small per-kind table, not from the OpenAPI schema, so any
list not in the table is replaced wholesale (as for an `atomic` list).
"""

from __future__ import annotations

import copy
from typing import Any

from .meta import json_copy

PRIMITIVE_MERGE = "<primitive-merge>"

# Paths use "*" for "any list item".  Only lists whose Go type carries
# patchStrategy=merge appear here; everything else is replaced by SMP.
_COMMON: dict[tuple[str, ...], str] = {
    ("metadata", "ownerReferences"): "uid",
    ("metadata", "finalizers"): PRIMITIVE_MERGE,
    ("status", "conditions"): "type",
}
_CONTAINER = {
    ("ports",): "containerPort",
    ("env",): "name",
    ("volumeMounts",): "mountPath",
    ("volumeDevices",): "devicePath",
}
MERGE_KEYS: dict[str, dict[tuple[str, ...], str]] = {
    "Service": {("spec", "ports"): "port"},
    "Node": {
        ("status", "addresses"): "type",
        ("spec", "podCIDRs"): PRIMITIVE_MERGE,
    },
    "Pod": {
        ("spec", "containers"): "name",
        ("spec", "initContainers"): "name",
        ("spec", "ephemeralContainers"): "name",
        ("spec", "volumes"): "name",
        ("spec", "imagePullSecrets"): "name",
        ("spec", "hostAliases"): "ip",
        ("status", "podIPs"): "ip",
        **{("spec", c, "*") + k: v for c in ("containers", "initContainers")
           for k, v in _CONTAINER.items()},
    },
    "Namespace": {("spec", "finalizers"): PRIMITIVE_MERGE},
}


class PatchError(Exception):
    """A patch that is well-formed JSON but cannot be applied (answered as 422)."""


class PatchFormatError(Exception):
    """A patch document of the wrong shape (answered as 400)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return json_copy(patch)
    result = json_copy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- RFC 6902 ---------------------------------------------------------------

def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r}")
    idx = int(token)
    if idx > len(container) or (idx == len(container) and not allow_end):
        raise PatchError(f"array index {idx} out of bounds")
    return idx


def _parent(doc: Any, tokens: list[str], op: str) -> tuple[Any, str]:
    cur = doc
    for tok in tokens[:-1]:
        if isinstance(cur, dict):
            if tok not in cur:
                raise PatchError(f"{op} operation does not apply: doc is missing path: "
                                 f"\"/{'/'.join(tokens)}\": missing value")
            cur = cur[tok]
        elif isinstance(cur, list):
            cur = cur[_index(cur, tok, False)]
        else:
            raise PatchError(f"{op} operation does not apply: doc is missing path: \"/{'/'.join(tokens)}\"")
    return cur, tokens[-1]


def _get(doc: Any, tokens: list[str], op: str) -> Any:
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens, op)
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{op} operation does not apply: doc is missing path: \"/{'/'.join(tokens)}\"")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, False)]
    raise PatchError(f"{op} operation does not apply: doc is missing path: \"/{'/'.join(tokens)}\"")


def _remove(doc: Any, tokens: list[str], op: str) -> Any:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent, last = _parent(doc, tokens, op)
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{op} operation does not apply: doc is missing path: \"/{'/'.join(tokens)}\"")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, False))
    raise PatchError(f"{op} operation does not apply: doc is missing path: \"/{'/'.join(tokens)}\"")


def _add(doc: Any, tokens: list[str], value: Any, op: str) -> Any:
    if not tokens:
        return value
    parent, last = _parent(doc, tokens, op)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, True), value)
    else:
        raise PatchError(f"{op} operation does not apply: doc is missing path: \"/{'/'.join(tokens)}\"")
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """Apply an RFC 6902 operation list to a copy of `target`."""
    if not isinstance(ops, list):
        raise PatchFormatError("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op:
            raise PatchFormatError("Unexpected kind: missing op")
        kind = op["op"]
        if "path" not in op:
            raise PatchError(f"{kind} operation does not apply: missing path")
        tokens = _pointer(op["path"])
        if kind == "add":
            doc = _add(doc, tokens, copy.deepcopy(op.get("value")), kind)
        elif kind == "remove":
            _remove(doc, tokens, kind)
        elif kind == "replace":
            _get(doc, tokens, kind)
            if tokens:
                parent, last = _parent(doc, tokens, kind)
                if isinstance(parent, list):
                    parent[_index(parent, last, False)] = copy.deepcopy(op.get("value"))
                else:
                    parent[last] = copy.deepcopy(op.get("value"))
            else:
                doc = copy.deepcopy(op.get("value"))
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = _remove(doc, src, kind) if kind == "move" else copy.deepcopy(_get(doc, src, kind))
            doc = _add(doc, tokens, value, kind)
        elif kind == "test":
            if _get(doc, tokens, kind) != op.get("value"):
                raise PatchError(f"testing value {op['path']} failed: test failed")
        else:
            raise PatchFormatError(f"Unexpected kind: {kind}")
    return doc


# --- strategic merge patch ----------------------------------------------------

def _merge_key(kind: str, path: tuple[str, ...]) -> str | None:
    table = {**_COMMON, **MERGE_KEYS.get(kind, {})}
    return table.get(path)


def strategic_merge_patch(target: Any, patch: Any, kind: str) -> Any:
    """Apply a strategic merge patch for a built-in `kind`."""
    if not isinstance(patch, dict):
        raise PatchFormatError("strategic merge patch must be a JSON object")
    return _smp_map(copy.deepcopy(target) if isinstance(target, dict) else {}, patch, kind, ())


def _smp_map(original: dict[str, Any], patch: dict[str, Any], kind: str,
             path: tuple[str, ...]) -> dict[str, Any] | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive is not None and directive != "merge":
        raise PatchError(f"Unknown patch type: {directive}")
    retain = patch.get("$retainKeys")
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(original.get(field), list):
                original[field] = [v for v in original[field] if v not in value]
            continue
        sub = path + (key,)
        if value is None:
            original.pop(key, None)
        elif isinstance(value, dict):
            merged = _smp_map(original.get(key) if isinstance(original.get(key), dict) else {},
                              value, kind, sub)
            if merged is None:
                original.pop(key, None)
            else:
                original[key] = merged
        elif isinstance(value, list):
            original[key] = _smp_list(original.get(key), value, kind, sub)
        else:
            original[key] = value
    for field, order in orders.items():
        if isinstance(original.get(field), list):
            original[field] = _apply_order(original[field], order, _merge_key(kind, path + (field,)))
    if isinstance(retain, list):
        for key in list(original):
            if key not in retain:
                del original[key]
    return original


def _smp_list(original: Any, patch: list[Any], kind: str, path: tuple[str, ...]) -> list[Any]:
    key = _merge_key(kind, path)
    if key is None:
        return [v for v in copy.deepcopy(patch)
                if not (isinstance(v, dict) and v.get("$patch") is not None)] \
            if any(isinstance(v, dict) and v.get("$patch") == "replace" for v in patch) \
            else copy.deepcopy(patch)
    base = copy.deepcopy(original) if isinstance(original, list) else []
    if any(isinstance(v, dict) and v.get("$patch") == "replace" for v in patch):
        return [copy.deepcopy(v) for v in patch if not (isinstance(v, dict) and "$patch" in v)]
    if key == PRIMITIVE_MERGE:
        for v in patch:
            if v not in base:
                base.append(copy.deepcopy(v))
        return base
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"cannot merge list item {item!r}: expected an object with {key!r}")
        if key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {key}")
        idx = next((i for i, o in enumerate(base) if isinstance(o, dict) and o.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                base.pop(idx)
            continue
        if idx is None:
            base.append(_smp_map({}, item, kind, path + ("*",)) or {})
        else:
            merged = _smp_map(base[idx], item, kind, path + ("*",))
            if merged is None:
                base.pop(idx)
            else:
                base[idx] = merged
    return base


def _apply_order(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    def ident(v: Any) -> Any:
        if key and key != PRIMITIVE_MERGE and isinstance(v, dict):
            return v.get(key)
        return v
    wanted = [ident(o) for o in order]
    ranked = sorted(enumerate(items), key=lambda p: (wanted.index(ident(p[1])) if ident(p[1]) in wanted
                                                     else len(wanted) + p[0]))
    return [v for _, v in ranked]
