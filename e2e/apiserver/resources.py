"""The resource types the stand-in serves and their per-kind strategies.

A `ResourceType` is one (group, version, plural) as discovery advertises it;
several may share one storage (core/v1 and events.k8s.io/v1 Events are the
same stored objects in the real server, converted on the way in and out).
A `Strategy` holds what the real registry strategy does on create/update:
defaulting, status handling, generation, validation.
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable

from . import services
from .errors import FieldError, invalid, not_supported, required, too_many
from .meta import json_copy, name_errors

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
META_FIELDS = ("metadata.name", "metadata.namespace")


class Strategy:
    """Default behaviour: no defaults, no status subresource, no generation."""

    name_rule = "subdomain"
    status_subresource = False  # main-resource writes keep the stored .status
    reset_status_on_create: dict[str, Any] | None = None  # replaces .status on create
    uses_generation = False
    return_deleted_object = False

    def __init__(self, ctx: Any = None) -> None:
        self.ctx = ctx

    def prepare_create(self, obj: dict[str, Any]) -> None:
        if self.reset_status_on_create is not None:
            obj["status"] = copy.deepcopy(self.reset_status_on_create)

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        return []

    def prepare_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        return []

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        return self.validate(new)

    def validate_status_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        """Checks on a /status write (built-in kinds here have none; custom resources check their schema)."""
        return []

    def allocate(self, obj: dict[str, Any], namespace: str, name: str) -> list[FieldError]:
        """Claim shared resources (IPs, ports) once validation passed."""
        return []

    @staticmethod
    def spec_changed(new: dict[str, Any], old: dict[str, Any]) -> bool:
        """Whether anything but metadata and status differs (what bumps generation)."""
        skip = ("metadata", "status")
        return ({k: v for k, v in new.items() if k not in skip}
                != {k: v for k, v in old.items() if k not in skip})


class ServiceStrategy(Strategy):
    name_rule = "label1035"
    status_subresource = True
    reset_status_on_create = {"loadBalancer": {}}
    return_deleted_object = True

    def prepare_create(self, obj: dict[str, Any]) -> None:
        super().prepare_create(obj)
        services.set_defaults(obj)

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        return services.validate(obj)

    def prepare_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        services.set_defaults(new)
        return services.prepare_update(new, old)

    def allocate(self, obj: dict[str, Any], namespace: str, name: str) -> list[FieldError]:
        return self.ctx.allocator.allocate(obj, key=(namespace, name))  # in use: from the store's counts


class NodeStrategy(Strategy):
    status_subresource = True


class NamespaceStrategy(Strategy):
    name_rule = "label"
    status_subresource = True
    reset_status_on_create = {"phase": "Active"}
    return_deleted_object = True

    def prepare_create(self, obj: dict[str, Any]) -> None:
        super().prepare_create(obj)
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            fins = spec.setdefault("finalizers", [])
            if "kubernetes" not in fins:
                fins.append("kubernetes")

    def prepare_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        # spec.finalizers is only writable through /finalize.
        new["spec"] = copy.deepcopy(old.get("spec") or {})
        return []


class PodStrategy(Strategy):
    status_subresource = True
    reset_status_on_create = {"phase": "Pending", "qosClass": "BestEffort"}
    uses_generation = True
    return_deleted_object = True

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        spec = obj.get("spec")
        if not isinstance(spec, dict) or not spec.get("containers"):
            return [required("spec.containers")]
        return []


class EndpointSliceStrategy(Strategy):
    uses_generation = True
    ADDRESS_TYPES = ["FQDN", "IPv4", "IPv6"]

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        errs: list[FieldError] = []
        at = obj.get("addressType")
        if not at:
            errs.append(required("addressType"))
        elif at not in self.ADDRESS_TYPES:
            errs.append(not_supported("addressType", at, self.ADDRESS_TYPES))
        eps = obj.get("endpoints") or []
        if not isinstance(eps, list):
            return errs + [invalid("endpoints", eps, "must be a list")]
        if len(eps) > 1000:
            errs.append(too_many("endpoints", len(eps), 1000))
        for i, ep in enumerate(eps):
            base = f"endpoints[{i}]"
            addrs = (ep or {}).get("addresses") or []
            if not addrs:
                errs.append(required(f"{base}.addresses", "must contain at least 1 address"))
            elif len(addrs) > 100:
                errs.append(too_many(f"{base}.addresses", len(addrs), 100))
            for j, addr in enumerate(addrs):
                errs += self._address(f"{base}.addresses[{j}]", addr, at)
            for key in ("nodeName", "hostname"):
                val = (ep or {}).get(key)
                if val and name_errors(val, "subdomain" if key == "nodeName" else "label"):
                    errs.append(invalid(f"{base}.{key}", val, name_errors(val, "subdomain")[0]
                                        if key == "nodeName" else name_errors(val, "label")[0]))
        ports = obj.get("ports") or []
        if len(ports) > 20000:
            errs.append(too_many("ports", len(ports), 20000))
        names: set[str] = set()
        for i, p in enumerate(ports):
            base = f"ports[{i}]"
            p = p or {}
            name = p.get("name") or ""
            if name:
                for msg in name_errors(name, "label"):
                    errs.append(invalid(f"{base}.name", name, msg))
            if name in names:
                errs.append(FieldError("FieldValueDuplicate", f"{base}.name", "", name))
            names.add(name)
            proto = p.get("protocol")
            if proto is not None and proto not in services.PROTOCOLS:
                errs.append(not_supported(f"{base}.protocol", proto, services.PROTOCOLS))
            num = p.get("port")
            if num is not None and (not isinstance(num, int) or isinstance(num, bool) or not 1 <= num <= 65535):
                errs.append(invalid(f"{base}.port", num, "must be between 1 and 65535, inclusive"))
        return errs

    @staticmethod
    def _address(path: str, addr: Any, at: Any) -> list[FieldError]:
        if not isinstance(addr, str):
            return [invalid(path, addr, "must be a string")]
        if at in ("IPv4", "IPv6"):
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                return [invalid(path, addr, f"must be a valid {at} address")]
            if (ip.version == 4) != (at == "IPv4"):
                return [invalid(path, addr, f"must be a valid {at} address")]
        elif at == "FQDN" and name_errors(addr.rstrip("."), "subdomain"):
            return [invalid(path, addr, name_errors(addr.rstrip("."), "subdomain")[0])]
        return []

    def prepare_create(self, obj: dict[str, Any]) -> None:
        super().prepare_create(obj)
        for p in obj.get("ports") or []:
            if isinstance(p, dict) and p.get("protocol") is None:
                p["protocol"] = "TCP"

    def prepare_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        self.prepare_create(new)
        if new.get("addressType") != old.get("addressType"):
            return [invalid("addressType", new.get("addressType"), "field is immutable")]
        return []


class LeaseStrategy(Strategy):
    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        errs: list[FieldError] = []
        spec = obj.get("spec") or {}
        dur = spec.get("leaseDurationSeconds")
        if dur is not None and (not isinstance(dur, int) or dur <= 0):
            errs.append(invalid("spec.leaseDurationSeconds", dur, "must be greater than 0"))
        tr = spec.get("leaseTransitions")
        if tr is not None and (not isinstance(tr, int) or tr < 0):
            errs.append(invalid("spec.leaseTransitions", tr, "must be greater than or equal to 0"))
        return errs


class CoreEventStrategy(Strategy):
    name_rule = "subdomain"

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        errs: list[FieldError] = []
        ns = (obj.get("metadata") or {}).get("namespace") or ""
        inv = obj.get("involvedObject") or {}
        ins = inv.get("namespace") or ""
        if ins and ns != ins and ns != "default":
            errs.append(invalid("involvedObject.namespace", ins, "does not match event.namespace"))
        etype = obj.get("type")
        if etype and etype not in ("Normal", "Warning"):
            errs.append(not_supported("type", etype, ["Normal", "Warning"]))
        return errs


class EventsV1Strategy(CoreEventStrategy):
    """events.k8s.io/v1 writes are validated strictly (ValidateEventCreate for new API versions)."""

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        errs = super().validate(obj)
        if not obj.get("eventTime"):
            errs.append(required("eventTime"))
        if not obj.get("reportingComponent"):
            errs.append(required("reportingController"))
        if not obj.get("reportingInstance"):
            errs.append(required("reportingInstance"))
        if not obj.get("action"):
            errs.append(required("action"))
        if not obj.get("reason"):
            errs.append(required("reason"))
        if not obj.get("type"):
            errs.append(required("type"))
        if len(obj.get("message") or "") > 1024:
            errs.append(FieldError("FieldValueTooLong", "note", "must have at most 1024 bytes",
                                   len(obj.get("message") or "")))
        return errs


# --- events.k8s.io/v1 <-> core/v1 Event conversion --------------------------------

_EVENT_RENAMES = [  # (events.k8s.io/v1, core/v1)
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
]
_EVENT_SHARED = ["metadata", "eventTime", "series", "related", "action", "reason", "reportingInstance", "type"]


def events_v1_to_core(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: copy.deepcopy(obj[k]) for k in _EVENT_SHARED if k in obj}
    for new, old in _EVENT_RENAMES:
        if new in obj:
            out[old] = copy.deepcopy(obj[new])
    out["apiVersion"], out["kind"] = "v1", "Event"
    return out


def core_to_events_v1(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "Event", "apiVersion": "events.k8s.io/v1"}
    for k in _EVENT_SHARED:
        if k in obj:
            out[k] = copy.deepcopy(obj[k])
    for new, old in _EVENT_RENAMES:
        if old in obj:
            out[new] = copy.deepcopy(obj[old])
    if isinstance(out.get("deprecatedSource"), dict) and not out["deprecatedSource"]:
        out.pop("deprecatedSource")
    # eventTime is a non-omitempty MicroTime: a zero value goes on the wire as null.
    out.setdefault("eventTime", None)
    return out


@dataclass(frozen=True)
class ResourceType:
    """One served resource as discovery lists it."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    strategy_cls: type[Strategy] = Strategy
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: tuple[str, ...] = ()
    storage: str = ""
    field_labels: tuple[str, ...] = META_FIELDS
    to_view: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    from_view: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def storage_key(self) -> str:
        return self.storage or self.plural

    def view(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The stored object as this API version shows it (a deep copy)."""
        if self.to_view:
            return self.to_view(obj)
        out = json_copy(obj)
        out["apiVersion"], out["kind"] = self.api_version, self.kind
        return out

    def unview(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A client-sent object converted to its stored form."""
        if self.from_view:
            return self.from_view(obj)
        out = json_copy(obj)
        out["apiVersion"], out["kind"] = self.api_version, self.kind
        return out


_EVENT_FIELDS = META_FIELDS + (
    "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
    "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
    "reason", "reportingComponent", "source", "type")
_EVENTS_V1_FIELDS = META_FIELDS + (
    "regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid", "regarding.apiVersion",
    "regarding.resourceVersion", "regarding.fieldPath", "reason", "reportingController", "type")

RESOURCES: list[ResourceType] = [
    ResourceType("", "v1", "namespaces", "namespace", "Namespace", False, NamespaceStrategy,
                 short_names=("ns",), verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
                 subresources=("status", "finalize"), field_labels=META_FIELDS + ("status.phase",)),
    ResourceType("", "v1", "nodes", "node", "Node", False, NodeStrategy, short_names=("no",),
                 subresources=("status",), field_labels=META_FIELDS + ("spec.unschedulable",)),
    ResourceType("", "v1", "services", "service", "Service", True, ServiceStrategy, short_names=("svc",),
                 categories=("all",), subresources=("status",),
                 field_labels=META_FIELDS + ("spec.clusterIP", "spec.type")),
    ResourceType("", "v1", "endpoints", "endpoints", "Endpoints", True, short_names=("ep",)),
    ResourceType("", "v1", "pods", "pod", "Pod", True, PodStrategy, short_names=("po",), categories=("all",),
                 subresources=("status",),
                 field_labels=META_FIELDS + ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                                             "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
                                             "status.podIP", "status.nominatedNodeName")),
    ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", True, short_names=("cm",)),
    ResourceType("", "v1", "events", "event", "Event", True, CoreEventStrategy, short_names=("ev",),
                 field_labels=_EVENT_FIELDS),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", True,
                 EndpointSliceStrategy),
    ResourceType("events.k8s.io", "v1", "events", "event", "Event", True, EventsV1Strategy, short_names=("ev",),
                 storage="events", field_labels=_EVENTS_V1_FIELDS,
                 to_view=core_to_events_v1, from_view=events_v1_to_core),
    ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", True, LeaseStrategy),
]  # + MetalLB's custom resources and the read-only CRD list, appended when crds.py is imported


def group_versions() -> dict[str, list[ResourceType]]:
    """Resources keyed by group/version ("v1" for the core group), in discovery order."""
    out: dict[str, list[ResourceType]] = {}
    for r in RESOURCES:
        out.setdefault(r.group_version, []).append(r)
    return out


def storage_type(storage: str) -> ResourceType:
    """The resource whose form is the stored form of `storage` (the core one for events)."""
    return next(r for r in RESOURCES if r.storage_key == storage and r.to_view is None)


def find(resource: str) -> ResourceType:
    """Resolve 'services', 'svc', 'endpointslices.discovery.k8s.io' or 'events.k8s.io/v1/events'."""
    text = resource.strip().lower()
    if text.count("/") == 2:
        group, version, plural = text.split("/")
        for r in RESOURCES:
            if (r.group, r.version, r.plural) == (group, version, plural):
                return r
    if text.count("/") == 1:
        version, plural = text.split("/")
        for r in RESOURCES:
            if (r.group, r.version, r.plural) == ("", version, plural):
                return r
    for r in RESOURCES:
        qualified = f"{r.plural}.{r.group}" if r.group else r.plural
        if text in (qualified, r.kind.lower() + (f".{r.group}" if r.group else "")):
            return r
    for r in RESOURCES:  # unqualified: the first (core) match wins, like kubectl
        if text in (r.plural, r.singular, r.kind.lower()) or text in r.short_names:
            return r
    raise KeyError(f"unknown resource {resource!r}")
