"""Custom resources served from deploy/'s CRD manifests, checked the way apiextensions checks them.

The stand-in reads `deploy/components/loadbalancer/crds.yaml` (MetalLB's types), the very file
clusters get, so what the tests run against cannot drift from what is deployed. Each served version
of each CRD becomes a resource type: discovery, list/watch/paging like any other, the status
subresource where the version declares one, and its printer columns for `kubectl get`. A write goes
through what the real server does with a structural schema, for the keywords these schemas use:
unknown fields pruned (reported per `fieldValidation`), non-nullable nulls dropped and defaults
applied, then type, required, enum and minimum/maximum checked, worded as the real server words them.
The CRDs themselves are listed, read-only, under apiextensions.k8s.io/v1.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from . import schema, tables
from .errors import FieldError, invalid, not_supported, required
from .meta import now_seconds
from .resources import RESOURCES, ResourceType, Strategy

CRD_FILE = Path(__file__).resolve().parents[2] / "deploy" / "components" / "loadbalancer" / "crds.yaml"
ROOT_FIELDS = ("apiVersion", "kind", "metadata")  # never pruned nor checked against the schema
Schema = dict[str, Any]

CRD_TYPE = ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "customresourcedefinition",
                        "CustomResourceDefinition", False, short_names=("crd", "crds"),
                        categories=("api-extensions",), verbs=("get", "list", "watch"))


class TypeInvalid(FieldError):
    """apimachinery's field.TypeInvalid: reason FieldValueTypeInvalid, printed as "Invalid value"."""

    _PREFIX = {**FieldError._PREFIX, "FieldValueTypeInvalid": "Invalid value"}


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- pruning, nulls and defaults (structural pruning and defaulting) ------------------------------

def _prune(value: Any, node: Schema | None, path: str, pruned: list[str], root: bool = False) -> None:
    """Drop, in place, every field `node` does not declare, recording its path; with no schema at all
    (items of an array without one) everything below goes. Scalars of the wrong type are left for
    validation to refuse."""
    if node is not None and node.get("x-kubernetes-preserve-unknown-fields"):
        _prune_known(value, node, path, pruned)
        return
    if isinstance(value, dict):
        props = (node or {}).get("properties") or {}
        rest = (node or {}).get("additionalProperties")
        for key in list(value):
            if root and key in ROOT_FIELDS:
                continue
            if key in props:
                _prune(value[key], props[key], _child(path, key), pruned)
            elif isinstance(rest, dict):
                _prune(value[key], rest, _child(path, key), pruned)
            else:
                del value[key]
                pruned.append(_child(path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _prune(item, (node or {}).get("items"), f"{path}[{i}]", pruned)


def _prune_known(value: Any, node: Schema, path: str, pruned: list[str]) -> None:
    """x-kubernetes-preserve-unknown-fields: keep what is unknown, still prune below what is declared."""
    if isinstance(value, dict):
        for key, sub in (node.get("properties") or {}).items():
            if key in value:
                _prune(value[key], sub, _child(path, key), pruned)


def prune_object(body: dict[str, Any], version_schema: Schema, kind: str, version: str) -> list[str]:
    """A request body pruned as the real decoder prunes it: ObjectMeta's unknown fields (by the client's
    ObjectMeta model), then everything the version's schema does not declare. Returns the dropped paths."""
    pruned: list[str] = []
    meta = body.get("metadata")
    if isinstance(meta, dict):
        decoder = schema.Decoder(kind, version)
        decoder.model(meta, "V1ObjectMeta", "metadata")
        pruned += decoder.unknown
    _prune(body, version_schema, "", pruned, root=True)
    return sorted(pruned)


def apply_defaults(value: Any, node: Schema | None) -> None:
    """structuraldefaulting: a non-nullable null without a default is dropped; a missing or non-nullable
    null field with a default gets a copy of it; then the same below, through defaults just set."""
    if node is None:
        return
    if isinstance(value, dict):
        props = node.get("properties") or {}
        rest = node.get("additionalProperties") if isinstance(node.get("additionalProperties"), dict) else None
        for key in list(value):
            sub = props.get(key, rest)
            if value[key] is None and sub is not None and not sub.get("nullable") and "default" not in sub:
                del value[key]
        for key, sub in props.items():
            if "default" in sub and (key not in value or (value[key] is None and not sub.get("nullable"))):
                value[key] = json.loads(json.dumps(sub["default"]))
        for key, item in value.items():
            apply_defaults(item, props.get(key, rest))
    elif isinstance(value, list):
        for item in value:
            apply_defaults(item, node.get("items"))


# --- validation (kube-openapi's validator, as apiextensions reports it) ---------------------------

def _json_type(value: Any) -> str:
    """The JSON type name kube-openapi infers for a decoded value."""
    if value is None:
        return "null"
    for python, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                         (list, "array"), (dict, "object")):
        if isinstance(value, python):
            return name
    return "object"


def _type_error(value: Any, node: Schema, path: str) -> FieldError | None:
    if value is None and node.get("nullable"):
        return None
    got = _json_type(value)
    if node.get("x-kubernetes-int-or-string"):
        want, fits = "integer,string", got in ("integer", "string")
    else:
        want = node.get("type") or got
        fits = (got == want or (want == "number" and got == "integer")
                or (want == "integer" and got == "number" and float(value).is_integer()))
    if fits:
        return None
    return TypeInvalid("FieldValueTypeInvalid", path, f'{path} in body must be of type {want}: "{got}"', got)


def _go_number(bound: float) -> str:
    """A schema bound as kube-openapi prints it against an integer (%v of an int64)."""
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def validate(value: Any, node: Schema, path: str) -> list[FieldError]:
    """Errors of `value` against `node`: its type first (nothing else is checked under a wrong type),
    then enum, minimum/maximum, required fields, and what lies below."""
    wrong = _type_error(value, node, path)
    if wrong is not None:
        return [wrong]
    errs: list[FieldError] = []
    if "enum" in node and json.dumps(value) not in {json.dumps(e) for e in node["enum"]}:
        errs.append(not_supported(path, value, [e if isinstance(e, str) else json.dumps(e) for e in node["enum"]]))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in node and value < node["minimum"]:
            errs.append(invalid(path, value, f"{path} in body should be greater than or equal to "
                                             f"{_go_number(node['minimum'])}"))
        if "maximum" in node and value > node["maximum"]:
            errs.append(invalid(path, value, f"{path} in body should be less than or equal to "
                                             f"{_go_number(node['maximum'])}"))
    if isinstance(value, dict):
        props = node.get("properties") or {}
        rest = node.get("additionalProperties") if isinstance(node.get("additionalProperties"), dict) else None
        errs += [required(_child(path, key)) for key in node.get("required") or [] if key not in value]
        for key, item in value.items():
            sub = props.get(key, rest)
            if sub is not None:
                errs += validate(item, sub, _child(path, key))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            errs += validate(item, node["items"], f"{path}[{i}]")
    return errs


def validate_object(obj: dict[str, Any], version_schema: Schema) -> list[FieldError]:
    """The object against its version's schema; apiVersion, kind and metadata are the server's own."""
    return validate({k: v for k, v in obj.items() if k not in ROOT_FIELDS}, version_schema, "")


class CustomResourceStrategy(Strategy):
    """apiextensions' strategy for one served version (subclassed per version with its schema): with a
    status subresource, create drops .status and only /status writes it; defaults on every write; any
    change outside metadata (and status, with the subresource) bumps generation."""

    uses_generation = True
    schema: Schema = {}

    def prepare_create(self, obj: dict[str, Any]) -> None:
        if self.status_subresource:
            obj.pop("status", None)
        apply_defaults(obj, self.schema)

    def prepare_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        apply_defaults(new, self.schema)
        return []

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        return validate_object(obj, self.schema)

    def validate_status_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        return validate_object(new, self.schema)

    def spec_changed(self, new: dict[str, Any], old: dict[str, Any]) -> bool:  # type: ignore[override]
        skip = ("metadata", "status") if self.status_subresource else ("metadata",)
        return {k: v for k, v in new.items() if k not in skip} != {k: v for k, v in old.items() if k not in skip}


# --- printer columns -------------------------------------------------------------------------------

def _lookup(obj: dict[str, Any], json_path: str) -> Any:
    value: Any = obj
    for part in json_path.strip(".").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _cell(column_type: str, value: Any) -> Any:
    """A Table cell as the CRD table convertor renders it: strings through JSONPath printing (lists and
    objects as compact JSON), other types only when the value has that type."""
    if value is None:
        return None
    if column_type == "string":
        if isinstance(value, (list, dict)):
            return json.dumps(value, separators=(",", ":"))
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if column_type == "boolean":
        return value if isinstance(value, bool) else None
    if column_type in ("integer", "number") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value) if column_type == "integer" else value
    if column_type == "date" and isinstance(value, str):
        try:
            then = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return "<invalid>"
        return tables.human_duration((_dt.datetime.now(_dt.timezone.utc) - then).total_seconds())
    return None


def printer(columns: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Callable[[dict[str, Any]], list[Any]]]:
    """Column definitions and the row function for a version's additionalPrinterColumns (Name first;
    no columns at all means an Age column, as the real server serves)."""
    columns = columns or [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    for column in columns:
        if not re.fullmatch(r"(\.[A-Za-z0-9_-]+)+", column["jsonPath"]):
            raise ValueError(f"printer column {column['name']}: only .dotted.paths are supported, "
                             f"not {column['jsonPath']!r}")
    definitions = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                    "description": "Name must be unique within a namespace."}]
    definitions += [{"name": c["name"], "type": c["type"], "format": c.get("format", ""),
                     "priority": c.get("priority", 0),
                     "description": c.get("description")
                     or f"Custom resource definition column (in JSONPath format): {c['jsonPath']}"}
                    for c in columns]

    def row(obj: dict[str, Any]) -> list[Any]:
        return [(obj.get("metadata") or {}).get("name", "")] + [_cell(c["type"], _lookup(obj, c["jsonPath"]))
                                                                 for c in columns]
    return definitions, row


# --- registration -------------------------------------------------------------------------------------

def load(path: Path = CRD_FILE) -> list[dict[str, Any]]:
    """The CustomResourceDefinitions of a (multi-document) manifest file."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) != ("apiextensions.k8s.io/v1", "CustomResourceDefinition"):
            raise ValueError(f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')} is not a v1 CRD")
    return docs


def _version_rank(name: str) -> tuple[int, int, int]:
    """Kube-aware version order (v1 > v1beta2 > v1beta1 > v1alpha1), which picks the preferred version."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", name)
    if match is None:
        return (0, 0, 0)
    stage = {"alpha": 1, "beta": 2, None: 3}[match.group(2)]
    return (stage, int(match.group(1)), int(match.group(3) or 0))


def resource_types(crd: dict[str, Any]) -> list[ResourceType]:
    """One resource type per served version, each with its own schema, sharing one storage."""
    spec, names = crd["spec"], crd["spec"]["names"]
    out = []
    for version in spec["versions"]:
        if not version.get("served"):
            continue
        subresources = tuple(sorted(version.get("subresources") or {}))
        if set(subresources) - {"status"}:
            raise ValueError(f"{crd['metadata']['name']}: the stand-in serves the status subresource only")
        strategy = type(f"{names['kind']}{version['name'].capitalize()}Strategy", (CustomResourceStrategy,),
                        {"schema": version["schema"]["openAPIV3Schema"], "status_subresource": bool(subresources)})
        out.append(ResourceType(spec["group"], version["name"], names["plural"],
                                names.get("singular") or names["kind"].lower(), names["kind"],
                                spec["scope"] == "Namespaced", strategy,
                                short_names=tuple(names.get("shortNames") or ()),
                                categories=tuple(names.get("categories") or ()), subresources=subresources,
                                storage=crd["metadata"]["name"],
                                extra={"schema": version["schema"]["openAPIV3Schema"],
                                       "columns": version.get("additionalPrinterColumns") or []}))
    return out


def register(path: Path = CRD_FILE) -> list[ResourceType]:
    """The resource types to serve for the CRDs in `path`, and the CRD list itself; hooks each version's
    pruning into schema.decode and its printer columns into tables. Newer versions first, so that
    discovery prefers them as the real server does."""
    served = sorted((r for crd in load(path) for r in resource_types(crd)),
                    key=lambda r: _version_rank(r.version), reverse=True)
    for rtype in served:
        schema.CUSTOM[(rtype.group, rtype.version, rtype.kind)] = functools.partial(
            prune_object, version_schema=rtype.extra["schema"], kind=rtype.kind, version=rtype.version)
        tables.TABLES[rtype.kind] = printer(rtype.extra["columns"])
    return [CRD_TYPE, *served]


def established(crd: dict[str, Any]) -> dict[str, Any]:
    """A CRD as the real server shows it once established: conversion defaulted, names accepted."""
    out = json.loads(json.dumps(crd))
    spec = out["spec"]
    spec.setdefault("conversion", {"strategy": "None"})
    now = now_seconds()
    out["status"] = {
        "acceptedNames": dict(spec["names"]),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now, "reason": "NoConflicts",
             "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": now, "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted"}],
        "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")],
    }
    return out


def install(store: Any, path: Path = CRD_FILE) -> None:
    """Put the CRDs into a fresh store, so `kubectl get crd` and clients waiting for Established see them."""
    for crd in load(path):
        store.put_raw(CRD_TYPE, established(crd))


# Served by every Store made once the package is imported (server.py imports this module).
RESOURCES.extend(register())
