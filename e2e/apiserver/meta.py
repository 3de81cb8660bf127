"""Object-metadata rules every resource shares (ObjectMeta validation, times).

Kept apart from the per-kind strategies so the generic create/update path in
the store can enforce them the way apimachinery's ValidateObjectMeta does.
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
from typing import Any

from .errors import FieldError, bad_request, forbidden, invalid, required, too_many
from .selectors import label_key_error, label_value_error

_JSON_SCALARS = frozenset((str, int, float, bool, type(None)))


def json_copy(obj: Any) -> Any:
    """A deep copy of JSON-shaped data (dicts, lists, scalars), about 6x faster than copy.deepcopy,
    which every read and write of an object pays for; anything else is deep-copied as before."""
    t = type(obj)
    if t is dict:
        return {k: v if type(v) in _JSON_SCALARS else json_copy(v) for k, v in obj.items()}
    if t is list:
        return [v if type(v) in _JSON_SCALARS else json_copy(v) for v in obj]
    if t in _JSON_SCALARS:
        return obj
    return copy.deepcopy(obj)

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                  "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
                  "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
_LABEL1123_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
                  "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
                  "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
_LABEL1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                  "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
                  "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")


def name_errors(name: str, rule: str) -> list[str]:
    """Why `name` fails a naming rule: "subdomain", "label" (1123) or "label1035"."""
    out: list[str] = []
    if rule == "subdomain":
        if len(name) > 253:
            out.append("must be no more than 253 characters")
        if not DNS1123_SUBDOMAIN.match(name):
            out.append(_SUBDOMAIN_MSG)
    elif rule == "label":
        if len(name) > 63:
            out.append("must be no more than 63 characters")
        if not DNS1123_LABEL.match(name):
            out.append(_LABEL1123_MSG)
    elif rule == "label1035":
        if len(name) > 63:
            out.append("must be no more than 63 characters")
        if not DNS1035_LABEL.match(name):
            out.append(_LABEL1035_MSG)
    elif rule == "path":
        if name in (".", ".."):
            out.append(f"may not be '{name}'")
        for bad in ("/", "%"):
            if bad in name:
                out.append(f"may not contain '{bad}'")
    return out


def validate_object_meta(meta: dict[str, Any], namespaced: bool, name_rule: str) -> list[FieldError]:
    """apimachinery ValidateObjectMeta: name, namespace, labels, annotations."""
    errs: list[FieldError] = []
    name = meta.get("name") or ""
    if not name:
        errs.append(required("metadata.name", "name or generateName is required"))
    else:
        for msg in name_errors(name, name_rule):
            errs.append(invalid("metadata.name", name, msg))
    ns = meta.get("namespace") or ""
    if namespaced and not ns:
        errs.append(required("metadata.namespace"))
    elif namespaced:
        for msg in name_errors(ns, "label"):
            errs.append(invalid("metadata.namespace", ns, msg))
    elif ns:
        errs.append(forbidden("metadata.namespace", "not allowed on this type"))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        errs.append(invalid("metadata.labels", labels, "must be a map of strings"))
    else:
        for k, v in labels.items():
            kerr = label_key_error(k)
            if kerr:
                errs.append(invalid("metadata.labels", k, kerr))
            if not isinstance(v, str):
                errs.append(invalid("metadata.labels", v, "label values must be strings"))
            elif label_value_error(v):
                errs.append(invalid("metadata.labels", v, label_value_error(v) or ""))
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        errs.append(invalid("metadata.annotations", annotations, "must be a map of strings"))
    else:
        total = 0
        for k, v in annotations.items():
            kerr = label_key_error(k)
            if kerr:
                errs.append(invalid("metadata.annotations", k, kerr))
            if not isinstance(v, str):
                errs.append(invalid("metadata.annotations", v, "annotation values must be strings"))
            else:
                total += len(k) + len(v)
        if total > 256 * 1024:
            errs.append(FieldError("FieldValueTooLong", "metadata.annotations", "must have at most 262144 bytes",
                                   total))
    finalizers = meta.get("finalizers") or []
    if isinstance(finalizers, list) and len(set(finalizers)) != len(finalizers):
        errs.append(invalid("metadata.finalizers", finalizers, "no duplicate finalizers allowed"))
    if len(meta.get("ownerReferences") or []) > 10000:
        errs.append(too_many("metadata.ownerReferences", len(meta["ownerReferences"]), 10000))
    return errs


def validate_meta_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    """ValidateObjectMetaUpdate: identity fields are immutable."""
    errs: list[FieldError] = []
    for field in ("name", "namespace", "uid"):
        if (new.get(field) or "") != (old.get(field) or ""):
            errs.append(invalid(f"metadata.{field}", new.get(field) or "", "field is immutable"))
    return errs


# --- times --------------------------------------------------------------------

SECONDS_FIELDS = {"creationTimestamp", "deletionTimestamp", "lastTransitionTime", "lastHeartbeatTime",
                  "lastProbeTime", "firstTimestamp", "lastTimestamp", "startTime", "startedAt",
                  "finishedAt", "deprecatedFirstTimestamp", "deprecatedLastTimestamp", "time"}
MICRO_FIELDS = {"acquireTime", "renewTime", "eventTime", "lastObservedTime"}


def now_seconds() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_time(value: str, micro: bool) -> str:
    """Parse an RFC 3339 time like Go's metav1.Time and re-emit it in the server's UTC form."""
    text = value.strip()
    try:
        parsed = _dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise bad_request(f'parsing time "{value}" as "2006-01-02T15:04:05Z07:00": cannot parse '
                          f'"{value}" as "2006"') from None
    if parsed.tzinfo is None:
        raise bad_request(f'parsing time "{value}" as "2006-01-02T15:04:05Z07:00": cannot parse "" as '
                          f'"Z07:00"')
    parsed = parsed.astimezone(_dt.timezone.utc)
    if micro:
        return parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")


def normalize_times(obj: Any) -> Any:
    """Round-trip every known time field through Go's formats (Time: seconds, MicroTime: µs)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, str) and key in SECONDS_FIELDS | MICRO_FIELDS and value:
                if key == "time" and "T" not in value:
                    continue
                obj[key] = format_time(value, key in MICRO_FIELDS)
            else:
                normalize_times(value)
    elif isinstance(obj, list):
        for item in obj:
            normalize_times(item)
    return obj
