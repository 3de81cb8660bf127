"""Server-side printing (meta.k8s.io Table), which `kubectl get` asks for.

Without it kubectl still works but shows only NAME and AGE; with it a person
debugging an e2e run sees ClusterIPs, ports and endpoints as on a real
cluster.  Columns follow the real printers for the kinds served here.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Callable

from .resources import ResourceType

Row = Callable[[dict[str, Any]], list[Any]]


def wanted_table_version(accept: str) -> str | None:
    """"v1"/"v1beta1" when the Accept header asks for a Table, else None."""
    for part in accept.split(","):
        params = dict(p.strip().split("=", 1) for p in part.split(";")[1:] if "=" in p)
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            return params["v"]
    return None


def human_duration(seconds: float) -> str:
    """apimachinery duration.HumanDuration."""
    s = int(seconds)
    if seconds < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d{h % 24}h" if h % 24 else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    if h < 24 * 365 * 8:
        return f"{h // 24 // 365}y{(h // 24) % 365}d"
    return f"{h // 24 // 365}y"


def _age(obj: dict[str, Any], key: str = "creationTimestamp") -> str:
    ts = (obj.get("metadata") or {}).get(key) if key == "creationTimestamp" else obj.get(key)
    if not ts:
        return "<unknown>"
    try:
        then = _dt.datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    return human_duration((_dt.datetime.now(_dt.timezone.utc) - then).total_seconds())


def _name(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("name", "")


def _service(obj: dict[str, Any]) -> list[Any]:
    spec = obj.get("spec") or {}
    stype = spec.get("type", "ClusterIP")
    external = list(spec.get("externalIPs") or [])
    if stype == "LoadBalancer":
        ing = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        external = [i.get("ip") or i.get("hostname") for i in ing] + external
        ext = ",".join(e for e in external if e) or "<pending>"
    elif stype == "ExternalName":
        ext = spec.get("externalName", "")
    else:
        ext = ",".join(external) or "<none>"
    ports = []
    for p in spec.get("ports") or []:
        text = f"{p.get('port')}:{p['nodePort']}" if p.get("nodePort") else f"{p.get('port')}"
        ports.append(f"{text}/{p.get('protocol', 'TCP')}")
    sel = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items())) or "<none>"
    cip = spec.get("clusterIP") or "<none>"
    return [_name(obj), stype, cip, ext, ",".join(ports) or "<none>", _age(obj), sel]


def _node(obj: dict[str, Any]) -> list[Any]:
    status = obj.get("status") or {}
    ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = {"True": "Ready", "False": "NotReady"}.get(ready or "", "Unknown")
    if (obj.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = (obj.get("metadata") or {}).get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    addrs = status.get("addresses") or []
    ip = lambda t: next((a.get("address") for a in addrs if a.get("type") == t), "<none>")  # noqa: E731
    info = status.get("nodeInfo") or {}
    return [_name(obj), state, ",".join(roles) or "<none>", _age(obj), info.get("kubeletVersion", ""),
            ip("InternalIP"), ip("ExternalIP"), info.get("osImage", "<unknown>"),
            info.get("kernelVersion", "<unknown>"), info.get("containerRuntimeVersion", "<unknown>")]


def _slice(obj: dict[str, Any]) -> list[Any]:
    ports = ",".join(str(p.get("port")) for p in obj.get("ports") or [] if p.get("port") is not None) or "<unset>"
    addrs = [a for ep in obj.get("endpoints") or [] for a in ep.get("addresses") or []]
    eps = ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "") or "<unset>"
    return [_name(obj), obj.get("addressType", ""), ports, eps, _age(obj)]


def _pod(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    cs = status.get("containerStatuses") or []
    ready = sum(1 for c in cs if c.get("ready"))
    restarts = sum(int(c.get("restartCount") or 0) for c in cs)
    return [_name(obj), f"{ready}/{len(spec.get('containers') or [])}", status.get("phase", ""), restarts,
            _age(obj), status.get("podIP") or "<none>", spec.get("nodeName") or "<none>"]


def _event(obj: dict[str, Any]) -> list[Any]:
    inv = obj.get("involvedObject") or obj.get("regarding") or {}
    last = obj.get("lastTimestamp") or obj.get("deprecatedLastTimestamp") or obj.get("eventTime")
    seen = _age({"t": last}, "t") if last else _age(obj)
    return [seen, obj.get("type", ""), obj.get("reason", ""),
            f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}", obj.get("message") or obj.get("note") or ""]


def _col(name: str, typ: str = "string", fmt: str = "", priority: int = 0) -> dict[str, Any]:
    return {"name": name, "type": typ, "format": fmt, "description": name, "priority": priority}


_AGE = _col("Age")
TABLES: dict[str, tuple[list[dict[str, Any]], Row]] = {
    "Service": ([_col("Name", fmt="name"), _col("Type"), _col("Cluster-IP"), _col("External-IP"), _col("Port(s)"),
                 _AGE, _col("Selector", priority=1)], _service),
    "Node": ([_col("Name", fmt="name"), _col("Status"), _col("Roles"), _AGE, _col("Version"),
              _col("Internal-IP", priority=1), _col("External-IP", priority=1), _col("OS-Image", priority=1),
              _col("Kernel-Version", priority=1), _col("Container-Runtime", priority=1)], _node),
    "Namespace": ([_col("Name", fmt="name"), _col("Status"), _AGE],
                  lambda o: [_name(o), (o.get("status") or {}).get("phase", ""), _age(o)]),
    "EndpointSlice": ([_col("Name", fmt="name"), _col("AddressType"), _col("Ports"), _col("Endpoints"), _AGE],
                      _slice),
    "Pod": ([_col("Name", fmt="name"), _col("Ready"), _col("Status"), _col("Restarts", "integer"), _AGE,
             _col("IP", priority=1), _col("Node", priority=1)], _pod),
    "Event": ([_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")], _event),
    "Lease": ([_col("Name", fmt="name"), _col("Holder"), _AGE],
              lambda o: [_name(o), (o.get("spec") or {}).get("holderIdentity", ""), _age(o)]),
    "ConfigMap": ([_col("Name", fmt="name"), _col("Data", "integer"), _AGE],
                  lambda o: [_name(o), len(o.get("data") or {}) + len(o.get("binaryData") or {}), _age(o)]),
}


def table(rtype: ResourceType, version: str, items: list[dict[str, Any]], list_meta: dict[str, Any],
          include_object: str = "Metadata", with_columns: bool = True) -> dict[str, Any]:
    """Render objects (in their API-version form) as a meta.k8s.io Table."""
    columns, row = TABLES.get(rtype.kind, ([_col("Name", fmt="name"), _col("Created At", fmt="date")],
                                           lambda o: [_name(o), (o.get("metadata") or {}).get("creationTimestamp")]))
    rows = []
    for obj in items:
        entry: dict[str, Any] = {"cells": row(obj)}
        if include_object == "Object":
            entry["object"] = {**obj, "kind": rtype.kind, "apiVersion": rtype.api_version}
        elif include_object != "None":
            entry["object"] = {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{version}",
                               "metadata": obj.get("metadata") or {}}
        rows.append(entry)
    out: dict[str, Any] = {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}", "metadata": list_meta}
    if with_columns:
        out["columnDefinitions"] = columns
    out["rows"] = rows
    return out
