"""Typed decoding of request bodies, borrowed from the `kubernetes` client's models.

The real server decodes JSON into Go structs: unknown fields are dropped
(or reported, per `fieldValidation`), nulls become zero values, and a value
of the wrong JSON type is a 400.  The Python client's generated models carry
the same field names and types, so they serve as the schema here.  Fields
typed `object` (IntOrString, RawExtension) are not checked.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from kubernetes.client import models as _models

from .errors import ApiError, bad_request

MODELS = {
    ("", "Service"): "V1Service",
    ("", "Node"): "V1Node",
    ("", "Namespace"): "V1Namespace",
    ("", "Pod"): "V1Pod",
    ("", "ConfigMap"): "V1ConfigMap",
    ("", "Endpoints"): "V1Endpoints",
    ("", "Event"): "CoreV1Event",
    ("discovery.k8s.io", "EndpointSlice"): "V1EndpointSlice",
    ("events.k8s.io", "Event"): "EventsV1Event",
    ("coordination.k8s.io", "Lease"): "V1Lease",
}
# Custom resources by (group, version, kind): prune a body in place, return the dropped paths (crds.py).
CUSTOM: dict[tuple[str, str, str], Callable[[dict[str, Any]], list[str]]] = {}
# map[string]Quantity fields take JSON numbers as well as strings.
_QUANTITY_MAPS = {"capacity", "allocatable", "limits", "requests", "hard", "used", "overhead"}
_GO = {"int": "int32", "str": "string", "bool": "bool", "float": "float64", "datetime": "Time"}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@functools.lru_cache(maxsize=None)
def _fields(model_name: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """A model's JSON field names -> attribute names, and its attribute types (once per model, not per body)."""
    cls = getattr(_models, model_name, None)
    if cls is None:
        return None
    return {v: k for k, v in cls.attribute_map.items()}, dict(cls.openapi_types)


class Decoder:
    """Walks a body against a model; collects unknown fields and type errors."""

    def __init__(self, kind: str, version: str) -> None:
        self.kind, self.version = kind, version
        self.unknown: list[str] = []

    def _type_error(self, value: Any, model: str, path: str, want: str) -> ApiError:
        struct = model[2:] if model.startswith("V1") else model
        return bad_request(f'{self.kind} in version "{self.version}" cannot be handled as a {self.kind}: json: '
                           f'cannot unmarshal {_json_type(value)} into Go struct field {struct}.{path} of type '
                           f'{_GO.get(want, want)}')

    def model(self, obj: dict[str, Any], model_name: str, path: str) -> None:
        fields = _fields(model_name)
        if fields is None:
            return
        by_json, types = fields
        for key in list(obj):
            value = obj[key]
            sub = f"{path}.{key}" if path else key
            if key not in by_json:
                self.unknown.append(sub)
                del obj[key]
                continue
            if value is None:
                del obj[key]
                continue
            obj[key] = self.value(value, types[by_json[key]], sub, model_name, key)

    def value(self, value: Any, typ: str, path: str, model: str, key: str) -> Any:
        if typ.startswith("List["):
            if not isinstance(value, list):
                raise self._type_error(value, model, path, "[]" + typ[5:-1].replace("str", "string"))
            inner = typ[5:-1]
            return [self.value(v, inner, f"{path}[{i}]", model, key) for i, v in enumerate(value)
                    if v is not None or inner not in _GO]
        if typ.startswith("Dict["):
            if not isinstance(value, dict):
                raise self._type_error(value, model, path, "map[string]string")
            inner = typ[typ.index(",") + 1:-1].strip()
            out = {}
            for k, v in value.items():
                if v is None:
                    out[k] = "" if inner == "str" else v
                elif inner == "str" and key in _QUANTITY_MAPS and isinstance(v, (int, float)) \
                        and not isinstance(v, bool):
                    out[k] = str(v)
                else:
                    out[k] = self.value(v, inner, f"{path}.{k}", model, key)
            return out
        if typ == "object":
            return value
        if typ in ("str", "datetime"):
            if not isinstance(value, str):
                raise self._type_error(value, model, path, typ)
            return value
        if typ == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise self._type_error(value, model, path, typ)
            return value
        if typ == "bool":
            if not isinstance(value, bool):
                raise self._type_error(value, model, path, typ)
            return value
        if typ == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise self._type_error(value, model, path, typ)
            return value
        if _fields(typ) is not None:
            if not isinstance(value, dict):
                raise self._type_error(value, model, path, typ)
            self.model(value, typ, path)
            return value
        return value


def decode(group: str, version: str, kind: str, body: dict[str, Any], mode: str) -> list[str]:
    """Prune `body` in place like Go decoding; return warnings, or raise 400 for Strict unknown fields."""
    model = MODELS.get((group, kind))
    custom = CUSTOM.get((group, version, kind))
    if (model is None and custom is None) or not isinstance(body, dict):
        return []
    if custom is not None:
        unknown = custom(body)
    else:
        dec = Decoder(kind, version)
        dec.model(body, model, "")
        unknown = dec.unknown
    if not unknown:
        return []
    messages = [f'unknown field "{f}"' for f in unknown]
    if mode == "Strict":
        raise bad_request("strict decoding error: " + ", ".join(messages))
    return messages if mode == "Warn" else []
