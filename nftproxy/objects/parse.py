"""Parse API objects (dicts exactly as the API serves them) into the immutable model.

Every check names the object and the offending field, so a bad Service is rejected alone with a
message a user can act on, and never reaches the translation that would break everyone's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .addresses import AddressError, family_of_text, ip_text, parse_cidr
from .model import (
    PROTOCOLS,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Family,
    Node,
    ObjectRef,
    Protocol,
    Service,
    ServicePort,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
WEIGHTS_ANNOTATION = "nftproxy.io/endpoint-weights"  # on a Service: {"<endpoint IP or Pod name>": weight, ...}
SLICE_WEIGHT_ANNOTATION = "nftproxy.io/weight"  # on an EndpointSlice: the weight of each of its endpoints
TOPOLOGY_ANNOTATIONS = ("service.kubernetes.io/topology-mode", "service.kubernetes.io/topology-aware-hints")
MAX_WEIGHT = 100
ZONE_LABEL = "topology.kubernetes.io/zone"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, as the API server defaults it
MAX_AFFINITY_TIMEOUT = 86400


class InvalidObject(ValueError):
    """An API object nftproxy refuses, with enough context to say so in one log line or Event."""

    def __init__(self, kind: str, ref: ObjectRef, field: str, message: str) -> None:
        self.kind = kind
        self.ref = ref
        self.field = field
        self.message = message
        super().__init__(f"{kind} {ref}: {field}: {message}")


# The one reading of who a raw object is (or names), before it is parsed. Each never fails: a
# malformed metadata gives an empty name (or no Service), which the parsers then refuse by name.


def object_ref(obj: Mapping[str, Any]) -> ObjectRef:
    """namespace/name of any object; a manifest without a namespace lands in "default" like kubectl."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return ObjectRef("default", "")
    name = meta.get("name")
    return ObjectRef(_namespace(meta), name if isinstance(name, str) else "")


def slice_service_ref(obj: Mapping[str, Any]) -> ObjectRef | None:
    """The Service an EndpointSlice belongs to (its service-name label, in the slice's namespace), or None."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    labels = meta.get("labels")
    name = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, Mapping) else None
    return ObjectRef(_namespace(meta), str(name)) if name else None


def creation_timestamp(obj: Mapping[str, Any]) -> str:
    """metadata.creationTimestamp as text ("" when absent): the oldest Service wins a conflict."""
    meta = obj.get("metadata")
    return str(meta.get("creationTimestamp") or "") if isinstance(meta, Mapping) else ""


def _namespace(meta: Mapping[str, Any]) -> str:
    namespace = meta.get("namespace")
    return namespace if isinstance(namespace, str) and namespace else "default"


class _Checker:
    """Field access that raises InvalidObject naming kind, object and field path."""

    def __init__(self, kind: str, ref: ObjectRef) -> None:
        self.kind = kind
        self.ref = ref

    def fail(self, field: str, message: str) -> InvalidObject:
        return InvalidObject(self.kind, self.ref, field, message)

    def mapping(self, value: Any, field: str) -> Mapping[str, Any]:
        if type(value) is dict:  # what JSON and YAML give: skip the slow abstract-class check
            return value
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(field, f"must be an object, got {type(value).__name__}")
        return value

    def sequence(self, value: Any, field: str) -> Sequence[Any]:
        if type(value) is list:
            return value
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise self.fail(field, f"must be a list, got {type(value).__name__}")
        return value

    def text(self, value: str, field: str) -> None:
        """Text that becomes part of the nftables script (comments): it must encode as UTF-8. JSON escapes
        can carry lone surrogates ("\\ud800"), which Python decodes and no encoder takes back."""
        try:
            value.encode()
        except UnicodeEncodeError:
            raise self.fail(field, "not valid Unicode text (holds a lone surrogate)") from None

    def port(self, value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be an integer port, got {value!r}")
        if not 1 <= value <= 65535:
            raise self.fail(field, f"port {value} is outside 1-65535")
        return value

    def protocol(self, value: Any, field: str) -> Protocol:
        if value is None:
            return "tcp"
        if not isinstance(value, str) or value not in PROTOCOLS:  # a list or dict is no key: refuse, not crash
            raise self.fail(field, f"unknown protocol {value!r} (accepted: TCP, UDP, SCTP)")
        return PROTOCOLS[value]

    def ip(self, value: Any, field: str) -> str:
        try:
            return ip_text(value)
        except AddressError as err:
            raise self.fail(field, str(err)) from None


def parse_service(obj: Mapping[str, Any]) -> Service | None:
    """A Service with rules to program, or None for ExternalName and headless Services (no rules)."""
    ref = object_ref(obj)
    check = _Checker("Service", ref)
    check.mapping(obj.get("metadata"), "metadata")
    if not ref.name:
        raise check.fail("metadata.name", "missing or not a string")
    check.text(ref.namespace, "metadata.namespace")
    check.text(ref.name, "metadata.name")
    spec = check.mapping(obj.get("spec"), "spec")
    svc_type = spec.get("type") or "ClusterIP"
    if svc_type == "ExternalName":
        return None
    if svc_type not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise check.fail("spec.type",
                         f"unknown type {svc_type!r} (accepted: ClusterIP, NodePort, LoadBalancer, ExternalName)")

    raw_ips = check.sequence(spec.get("clusterIPs"), "spec.clusterIPs") or (
        [spec["clusterIP"]] if spec.get("clusterIP") else []
    )
    if raw_ips and raw_ips[0] == "None":
        return None
    if not raw_ips:
        raise check.fail("spec.clusterIP", "missing (the API server allocates one; a manifest must name it)")
    cluster_ips = tuple(check.ip(ip, f"spec.clusterIPs[{i}]") for i, ip in enumerate(raw_ips))
    families = [family_of_text(ip) for ip in cluster_ips]
    if len(set(families)) != len(families):
        raise check.fail("spec.clusterIPs", f"at most one address per family, got {list(cluster_ips)}")
    declared = check.sequence(spec.get("ipFamilies"), "spec.ipFamilies")
    for i, fam in enumerate(declared[: len(cluster_ips)]):
        want = {"IPv4": 4, "IPv6": 6}.get(fam) if isinstance(fam, str) else None
        if want is None:
            raise check.fail(f"spec.ipFamilies[{i}]", f"unknown family {fam!r} (accepted: IPv4, IPv6)")
        if want != families[i]:
            raise check.fail(f"spec.clusterIPs[{i}]", f"{cluster_ips[i]} is not an {fam} address")

    node_ports_wanted = svc_type in ("NodePort", "LoadBalancer")
    ports: list[ServicePort] = []
    raw_ports = check.sequence(spec.get("ports"), "spec.ports")
    if not raw_ports:
        raise check.fail("spec.ports", "a Service with a cluster IP needs at least one port")
    seen_names: set[str] = set()
    seen_ports: set[tuple[str, int]] = set()
    seen_node_ports: set[tuple[str, int]] = set()
    for i, raw in enumerate(raw_ports):
        raw = check.mapping(raw, f"spec.ports[{i}]")
        name = raw.get("name") or ""
        if not isinstance(name, str):
            raise check.fail(f"spec.ports[{i}].name", f"must be a string, got {name!r}")
        check.text(name, f"spec.ports[{i}].name")
        if name in seen_names:
            raise check.fail(f"spec.ports[{i}].name", f"duplicate port name {name!r}")
        if len(raw_ports) > 1 and not name:
            raise check.fail(f"spec.ports[{i}].name", "required when a Service has more than one port")
        seen_names.add(name)
        protocol = check.protocol(raw.get("protocol"), f"spec.ports[{i}].protocol")
        port = check.port(raw.get("port"), f"spec.ports[{i}].port")
        if (protocol, port) in seen_ports:
            raise check.fail(f"spec.ports[{i}]", f"duplicate {protocol.upper()} port {port}")
        seen_ports.add((protocol, port))
        target = raw.get("targetPort")
        if target is not None and not isinstance(target, str):
            check.port(target, f"spec.ports[{i}].targetPort")
        node_port = None
        if node_ports_wanted and raw.get("nodePort") not in (None, 0):
            node_port = check.port(raw.get("nodePort"), f"spec.ports[{i}].nodePort")
            if (protocol, node_port) in seen_node_ports:
                raise check.fail(f"spec.ports[{i}].nodePort", f"duplicate {protocol.upper()} nodePort {node_port}")
            seen_node_ports.add((protocol, node_port))
        ports.append(ServicePort(name=name, protocol=protocol, port=port, node_port=node_port))

    external_ips = tuple(
        check.ip(ip, f"spec.externalIPs[{i}]")
        for i, ip in enumerate(check.sequence(spec.get("externalIPs"), "spec.externalIPs"))
    )
    lb_ips: list[str] = []
    if svc_type == "LoadBalancer":
        status = check.mapping(obj.get("status"), "status")
        lb = check.mapping(status.get("loadBalancer"), "status.loadBalancer")
        for i, ing in enumerate(check.sequence(lb.get("ingress"), "status.loadBalancer.ingress")):
            ing = check.mapping(ing, f"status.loadBalancer.ingress[{i}]")
            if not ing.get("ip") or ing.get("ipMode") == "Proxy":
                continue  # hostname-only, or the load balancer proxies itself: nothing to capture
            lb_ips.append(check.ip(ing["ip"], f"status.loadBalancer.ingress[{i}].ip"))

    etp = spec.get("externalTrafficPolicy")
    if etp not in (None, "", "Cluster", "Local"):
        raise check.fail("spec.externalTrafficPolicy", f"unknown policy {etp!r} (accepted: Cluster, Local)")
    itp = spec.get("internalTrafficPolicy")
    if itp not in (None, "", "Cluster", "Local"):
        raise check.fail("spec.internalTrafficPolicy", f"unknown policy {itp!r} (accepted: Cluster, Local)")
    hc_port = None
    if spec.get("healthCheckNodePort") not in (None, 0):
        hc_port = check.port(spec.get("healthCheckNodePort"), "spec.healthCheckNodePort")

    affinity_timeout = None
    affinity = spec.get("sessionAffinity") or "None"
    if affinity == "ClientIP":
        cfg = check.mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig")
        client_ip = check.mapping(cfg.get("clientIP"), "spec.sessionAffinityConfig.clientIP")
        timeout = client_ip.get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= MAX_AFFINITY_TIMEOUT:
            raise check.fail(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                f"must be an integer from 1 to {MAX_AFFINITY_TIMEOUT}, got {timeout!r}",
            )
        affinity_timeout = timeout
    elif affinity != "None":
        raise check.fail("spec.sessionAffinity", f"unknown affinity {affinity!r} (accepted: None, ClientIP)")

    source_ranges: list[str] = []
    for i, cidr in enumerate(check.sequence(spec.get("loadBalancerSourceRanges"), "spec.loadBalancerSourceRanges")):
        try:
            source_ranges.append(str(parse_cidr(cidr.strip() if isinstance(cidr, str) else cidr)))
        except AddressError as err:
            raise check.fail(f"spec.loadBalancerSourceRanges[{i}]", str(err)) from None

    meta = check.mapping(obj.get("metadata"), "metadata")
    annotations = check.mapping(meta.get("annotations"), "metadata.annotations")
    weights = _parse_weights(check, annotations.get(WEIGHTS_ANNOTATION))
    topology_auto = any(str(annotations.get(a, "")).lower() == "auto" for a in TOPOLOGY_ANNOTATIONS)
    return Service(
        ref=ref,
        type=svc_type,
        cluster_ips=cluster_ips,
        ports=tuple(ports),
        external_ips=tuple(dict.fromkeys(external_ips)),
        load_balancer_ips=tuple(dict.fromkeys(lb_ips)),
        external_traffic_local=etp == "Local" and (node_ports_wanted or bool(external_ips)),
        internal_traffic_local=itp == "Local",
        health_check_node_port=hc_port,
        affinity_timeout=affinity_timeout,
        source_ranges=tuple(dict.fromkeys(source_ranges)),
        publish_not_ready=bool(spec.get("publishNotReadyAddresses")),
        prefer_close=spec.get("trafficDistribution") == "PreferClose" or topology_auto,
        creation=creation_timestamp(obj),
        weights=weights,
    )


def _weight(check: _Checker, field: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WEIGHT:
        raise check.fail(field, f"weight must be an integer from 0 to {MAX_WEIGHT}, got {value!r}")
    return value


def _parse_weights(check: _Checker, text: Any) -> tuple[tuple[str, int], ...]:
    """{"198.18.129.2": 3, "web-7d9f": 1}: keys are endpoint IPs or Pod names (targetRef.name)."""
    if text is None:
        return ()
    field = f"metadata.annotations[{WEIGHTS_ANNOTATION}]"
    try:
        data = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError as err:
        raise check.fail(field, f"not JSON: {err}") from None
    if not isinstance(data, dict):
        raise check.fail(field, 'expected a JSON object such as {"10.0.0.5": 3, "web-0": 1}')
    out: list[tuple[str, int]] = []
    for key, value in data.items():
        try:
            key = ip_text(key)
        except AddressError:
            pass  # a Pod name
        out.append((str(key), _weight(check, f"{field}.{key}", value)))
    return tuple(sorted(out))


def parse_endpoint_slice(obj: Mapping[str, Any]) -> EndpointSlice | None:
    """An EndpointSlice of a Service, or None for FQDN slices and slices that belong to no Service."""
    ref = object_ref(obj)
    check = _Checker("EndpointSlice", ref)
    meta = check.mapping(obj.get("metadata"), "metadata")
    check.mapping(meta.get("labels"), "metadata.labels")
    service = slice_service_ref(obj)
    if service is None:
        return None
    address_type = obj.get("addressType")
    if address_type == "FQDN":
        return None
    families: dict[Any, Family] = {"IPv4": 4, "IPv6": 6}
    if not isinstance(address_type, str) or address_type not in families:
        raise check.fail("addressType", f"unknown address type {address_type!r} (accepted: IPv4, IPv6, FQDN)")
    family = families[address_type]
    annotations = check.mapping(meta.get("annotations"), "metadata.annotations")
    slice_weight = 1
    if annotations.get(SLICE_WEIGHT_ANNOTATION) is not None:
        slice_weight = _weight(check, f"metadata.annotations[{SLICE_WEIGHT_ANNOTATION}]",
                               annotations[SLICE_WEIGHT_ANNOTATION])

    ports: list[EndpointPort] = []
    seen: set[str] = set()
    for i, raw in enumerate(check.sequence(obj.get("ports"), "ports")):
        raw = check.mapping(raw, f"ports[{i}]")
        name = raw.get("name") or ""
        if not isinstance(name, str):
            raise check.fail(f"ports[{i}].name", f"must be a string, got {name!r}")
        if name in seen:
            raise check.fail(f"ports[{i}].name", f"duplicate port name {name!r}")
        seen.add(name)
        if raw.get("port") is None:
            continue  # "all ports": nothing a proxy can map
        ports.append(
            EndpointPort(
                name=name,
                protocol=check.protocol(raw.get("protocol"), f"ports[{i}].protocol"),
                port=check.port(raw.get("port"), f"ports[{i}].port"),
            )
        )

    raw_endpoints = check.sequence(obj.get("endpoints"), "endpoints")
    skipped: list[tuple[str, str]] = []
    try:
        endpoints = [_endpoint(check, i, raw, family, address_type, slice_weight)
                     for i, raw in enumerate(raw_endpoints)]
    except InvalidObject:
        # Upstream (endpointslicecache) skips an endpoint with no address or of the wrong family, and
        # keeps the others: one bad endpoint must not make the whole Service reject its traffic.
        endpoints = []
        for i, raw in enumerate(raw_endpoints):
            try:
                endpoints.append(_endpoint(check, i, raw, family, address_type, slice_weight))
            except InvalidObject as err:
                skipped.append((err.field, err.message))
    return EndpointSlice(
        ref=ref,
        service=service,
        family=family,
        ports=tuple(ports),
        endpoints=tuple(endpoints),
        skipped=tuple(skipped),
    )


def _endpoint(check: _Checker, i: int, raw: Any, family: Family, address_type: str, weight: int) -> Endpoint:
    """One endpoint of a slice: the inner loop of a cold start (300,000 times at 30,000 Services x 10).

    Plain dicts and lists take the direct path, and a field's path is spelt out only to report it.
    """
    if type(raw) is not dict:
        raw = check.mapping(raw, f"endpoints[{i}]")
    addresses = raw.get("addresses")
    if type(addresses) is not list:
        addresses = check.sequence(addresses, f"endpoints[{i}].addresses")
    if not addresses:
        raise check.fail(f"endpoints[{i}].addresses", "must hold at least one address")
    try:
        address = ip_text(addresses[0])
    except AddressError as err:
        raise check.fail(f"endpoints[{i}].addresses[0]", str(err)) from None
    if family_of_text(address) != family:
        raise check.fail(f"endpoints[{i}].addresses[0]", f"{address} is not an {address_type} address")
    conditions = raw.get("conditions")
    if type(conditions) is not dict:
        conditions = check.mapping(conditions, f"endpoints[{i}].conditions")
    ready = conditions.get("ready")  # unset conditions default as the API documents them
    ready = True if ready is None else bool(ready)
    serving = conditions.get("serving")
    terminating = conditions.get("terminating")
    zone_hints = None
    hints = raw.get("hints")
    if hints is not None:
        hints = check.mapping(hints, f"endpoints[{i}].hints")
        if "forZones" in hints:
            zone_hints = tuple(
                str(check.mapping(z, f"endpoints[{i}].hints.forZones[{j}]").get("name") or "")
                for j, z in enumerate(check.sequence(hints.get("forZones"), f"endpoints[{i}].hints.forZones"))
            )
    node_name, zone = raw.get("nodeName") or None, raw.get("zone") or None
    if node_name is not None and type(node_name) is not str:
        raise check.fail(f"endpoints[{i}].nodeName", f"must be a string, got {node_name!r}")
    if zone is not None and type(zone) is not str:
        raise check.fail(f"endpoints[{i}].zone", f"must be a string, got {zone!r}")
    target_name = None
    target = raw.get("targetRef")
    if target is not None:
        target_name = str(check.mapping(target, f"endpoints[{i}].targetRef").get("name") or "") or None
    return Endpoint(  # positional, in field order (keywords cost a quarter of the construction)
        address,
        family,
        ready,
        ready if serving is None else bool(serving),
        False if terminating is None else bool(terminating),
        node_name,
        zone,
        zone_hints,
        target_name,
        weight,
    )


def parse_node(obj: Mapping[str, Any]) -> Node:
    ref = ObjectRef("", object_ref(obj).name)  # a Node has no namespace
    check = _Checker("Node", ref)
    meta = check.mapping(obj.get("metadata"), "metadata")
    if not ref.name:
        raise check.fail("metadata.name", "missing or not a string")
    labels = check.mapping(meta.get("labels"), "metadata.labels")
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise check.fail(f"metadata.labels[{key}]", f"labels map strings to strings, got {value!r}")
    return Node(
        name=ref.name,
        zone=labels.get(ZONE_LABEL) or None,
        labels=tuple(sorted(labels.items())),
    )
