"""MetalLB's objects and a Service's LoadBalancer wishes, parsed into `lb.model`.

Errors name the object and the field (InvalidObject), so one broken pool is reported alone and never
costs other pools or Services their addresses. Fields nftproxy does not act on are listed by
`unsupported_fields`, so they can be reported once instead of silently ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from ..objects.model import PROTOCOLS
from ..objects.parse import _Checker, object_ref
from .model import (
    AddressPool,
    AddressRange,
    Family,
    L2Advertisement,
    LabelSelector,
    LBRequest,
    PortUse,
    Requirement,
)

POOL_KIND = "IPAddressPool"
L2_KIND = "L2Advertisement"
# What a Service may carry to ask for addresses, pools and sharing (MetalLB's and Cilium's spellings).
IP_ANNOTATIONS = ("metallb.io/loadBalancerIPs", "metallb.universe.tf/loadBalancerIPs",
                  "io.cilium/lb-ipam-ips", "lbipam.cilium.io/ips")
POOL_ANNOTATIONS = ("metallb.io/address-pool", "metallb.universe.tf/address-pool")
SHARING_ANNOTATIONS = ("metallb.io/allow-shared-ip", "metallb.universe.tf/allow-shared-ip",
                       "lbipam.cilium.io/sharing-key")
ALLOCATED_FROM_ANNOTATION = "metallb.io/ip-allocated-from-pool"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class _Fields(_Checker):
    """The proxy's field checker plus what MetalLB's objects need: string lists, booleans, selectors."""

    def strings(self, value: Any, field: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise self.fail(field, f"must be a list of strings, got {type(value).__name__}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(f"{field}[{i}]", f"must be a string, got {item!r}")
        return tuple(value)

    def boolean(self, value: Any, field: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false, got {value!r}")
        return value

    def string_map(self, value: Any, field: str) -> tuple[tuple[str, str], ...]:
        items = self.mapping(value, field)
        for key, val in items.items():
            if not isinstance(key, str) or not isinstance(val, str):
                raise self.fail(f"{field}.{key}", f"must map strings to strings, got {val!r}")
        return tuple(sorted(items.items()))

    def selectors(self, value: Any, field: str) -> tuple[LabelSelector, ...]:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise self.fail(field, f"must be a list of label selectors, got {type(value).__name__}")
        return tuple(self.selector(item, f"{field}[{i}]") for i, item in enumerate(value))

    def selector(self, value: Any, field: str) -> LabelSelector:
        raw = self.mapping(value, field)
        expressions = []
        exprs = raw.get("matchExpressions")
        if exprs is not None and not isinstance(exprs, list | tuple):
            raise self.fail(f"{field}.matchExpressions", "must be a list")
        for i, expr in enumerate(exprs or ()):
            where = f"{field}.matchExpressions[{i}]"
            expr = self.mapping(expr, where)
            key, op = expr.get("key"), expr.get("operator")
            if not isinstance(key, str) or not key:
                raise self.fail(f"{where}.key", "required")
            if op not in OPERATORS:
                raise self.fail(f"{where}.operator", f"unknown operator {op!r} (accepted: {', '.join(OPERATORS)})")
            values = self.strings(expr.get("values"), f"{where}.values")
            if op in ("In", "NotIn") and not values:
                raise self.fail(f"{where}.values", f"must not be empty for {op}")
            if op in ("Exists", "DoesNotExist") and values:
                raise self.fail(f"{where}.values", f"must be empty for {op}")
            expressions.append(Requirement(key, op, values))
        return LabelSelector(self.string_map(raw.get("matchLabels"), f"{field}.matchLabels"), tuple(expressions))


def parse_address_range(text: str) -> AddressRange:
    """A pool entry: a CIDR ("192.168.10.0/24", "fc00::/120") or a range ("192.168.9.1-192.168.9.5")."""
    text = text.strip()
    if "-" in text:
        first_text, _, last_text = text.partition("-")
        first, last = ipaddress.ip_address(first_text.strip()), ipaddress.ip_address(last_text.strip())
        if first.version != last.version:
            raise ValueError(f"{text!r} mixes IPv4 and IPv6")
        if int(last) < int(first):
            raise ValueError(f"{text!r} ends before it starts")
        return AddressRange(int(first), int(last), 4 if first.version == 4 else 6)
    network = ipaddress.ip_network(text, strict=False)
    return AddressRange(int(network.network_address), int(network.broadcast_address),
                        4 if network.version == 4 else 6)


def parse_pool(obj: Mapping[str, Any]) -> AddressPool:
    ref = object_ref(obj)
    f = _Fields(POOL_KIND, ref)
    if not ref.name:
        raise f.fail("metadata.name", "missing")
    spec = f.mapping(obj.get("spec"), "spec")
    entries = f.strings(spec.get("addresses"), "spec.addresses")
    if not entries:
        raise f.fail("spec.addresses", "required: at least one CIDR or range")
    ranges = []
    for i, entry in enumerate(entries):
        try:
            ranges.append(parse_address_range(entry))
        except ValueError as err:
            raise f.fail(f"spec.addresses[{i}]", f"not a CIDR or address range: {err}") from None
    _check_overlaps(f, ranges)
    allocation = spec.get("serviceAllocation")
    alloc = f.mapping(allocation, "spec.serviceAllocation")
    priority = alloc.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise f.fail("spec.serviceAllocation.priority", f"must be an integer, got {priority!r}")
    meta = f.mapping(obj.get("metadata"), "metadata")
    return AddressPool(
        ref=ref,
        ranges=tuple(ranges),
        auto_assign=f.boolean(spec.get("autoAssign"), "spec.autoAssign", True),
        avoid_buggy_ips=f.boolean(spec.get("avoidBuggyIPs"), "spec.avoidBuggyIPs", False),
        labels=f.string_map(meta.get("labels"), "metadata.labels"),
        restricted=allocation is not None,
        priority=priority,
        namespaces=f.strings(alloc.get("namespaces"), "spec.serviceAllocation.namespaces"),
        namespace_selectors=f.selectors(alloc.get("namespaceSelectors"), "spec.serviceAllocation.namespaceSelectors"),
        service_selectors=f.selectors(alloc.get("serviceSelectors"), "spec.serviceAllocation.serviceSelectors"),
    )


def _check_overlaps(f: _Fields, ranges: list[AddressRange]) -> None:
    ordered = sorted(enumerate(ranges), key=lambda item: (item[1].family, item[1].first))
    for (_, a), (j, b) in zip(ordered, ordered[1:]):
        if a.family == b.family and b.first <= a.last:
            raise f.fail(f"spec.addresses[{j}]", "overlaps another entry of this pool")


def parse_l2_advertisement(obj: Mapping[str, Any]) -> L2Advertisement:
    ref = object_ref(obj)
    f = _Fields(L2_KIND, ref)
    if not ref.name:
        raise f.fail("metadata.name", "missing")
    spec = f.mapping(obj.get("spec"), "spec")
    return L2Advertisement(
        ref=ref,
        pools=f.strings(spec.get("ipAddressPools"), "spec.ipAddressPools"),
        pool_selectors=f.selectors(spec.get("ipAddressPoolSelectors"), "spec.ipAddressPoolSelectors"),
        node_selectors=f.selectors(spec.get("nodeSelectors"), "spec.nodeSelectors"),
        interfaces=f.strings(spec.get("interfaces"), "spec.interfaces"),
    )


KNOWN_SPEC_FIELDS = {
    POOL_KIND: {"addresses", "autoAssign", "avoidBuggyIPs", "serviceAllocation"},
    L2_KIND: {"ipAddressPools", "ipAddressPoolSelectors", "nodeSelectors", "interfaces"},
    # BGP mode (lb/bgp_objects.py); not here, so reported: BGPPeer interface (unnumbered) and vrf
    "BGPPeer": {"myASN", "peerASN", "dynamicASN", "peerAddress", "peerPort", "sourceAddress", "holdTime",
                "keepaliveTime", "connectTime", "routerID", "nodeSelectors", "password", "passwordSecret",
                "bfdProfile", "enableGracefulRestart", "ebgpMultiHop", "disableMP", "dualStackAddressFamily"},
    "BGPAdvertisement": {"aggregationLength", "aggregationLengthV6", "localPref", "communities", "ipAddressPools",
                         "ipAddressPoolSelectors", "nodeSelectors", "peers"},
    "BFDProfile": {"receiveInterval", "transmitInterval", "detectMultiplier", "echoInterval", "echoMode",
                   "passiveMode", "minimumTtl"},
}
# Known fields reported all the same when set: BIRD has no BFD echo mode nor minimum TTL, and a session
# carries its own family only (IPv4 prefixes to IPv4 peers, IPv6 to IPv6)
UNSUPPORTED_WHEN_SET = {"BFDProfile": ("echoMode", "minimumTtl"), "BGPPeer": ("dualStackAddressFamily",)}


def unsupported_fields(kind: str, obj: Mapping[str, Any]) -> list[str]:
    """spec fields of a MetalLB object that nftproxy does not act on (reported once, not ignored)."""
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        return []
    known = KNOWN_SPEC_FIELDS.get(kind)
    if known is None:
        return [f"{kind} (only IPAddressPool, L2Advertisement, BGPPeer, BGPAdvertisement and BFDProfile "
                "are acted on)"]
    unhonoured = UNSUPPORTED_WHEN_SET.get(kind, ())
    return [f"spec.{key}" for key in sorted(spec)
            if key not in known or (key in unhonoured and spec[key] not in (None, False))]


def _annotation(annotations: Mapping[str, Any], names: Sequence[str]) -> tuple[str, str] | None:
    for name in names:
        value = annotations.get(name)
        if isinstance(value, str) and value.strip():
            return name, value.strip()
    return None


def handles(obj: Mapping[str, Any], load_balancer_class: str | None) -> bool:
    """Kubernetes' rule: a Service with a loadBalancerClass that is not ours belongs to someone else."""
    spec = obj.get("spec")
    if not isinstance(spec, Mapping) or spec.get("type") != "LoadBalancer":
        return False
    return spec.get("loadBalancerClass") in (None, "") if not load_balancer_class else \
        spec.get("loadBalancerClass") == load_balancer_class


def parse_request(obj: Mapping[str, Any]) -> LBRequest:
    """The addresses a LoadBalancer Service needs: families, ports, requested IPs, pool, sharing key."""
    ref = object_ref(obj)
    f = _Fields("Service", ref)
    spec = f.mapping(obj.get("spec"), "spec")
    meta = f.mapping(obj.get("metadata"), "metadata")
    annotations = f.mapping(meta.get("annotations"), "metadata.annotations")
    families = _families(f, spec)
    ports: list[PortUse] = []
    raw_ports = spec.get("ports")
    if not isinstance(raw_ports, list | tuple):
        raise f.fail("spec.ports", "must be a list")
    for i, raw in enumerate(raw_ports):
        raw = f.mapping(raw, f"spec.ports[{i}]")
        proto = PROTOCOLS.get(str(raw.get("protocol") or "TCP"))
        port = raw.get("port")
        if proto is None:
            raise f.fail(f"spec.ports[{i}].protocol", f"unknown protocol {raw.get('protocol')!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise f.fail(f"spec.ports[{i}].port", f"must be a port from 1 to 65535, got {port!r}")
        ports.append(PortUse(proto, port))
    requested = _requested(f, spec, annotations, families)
    pool = _annotation(annotations, POOL_ANNOTATIONS)
    sharing = _annotation(annotations, SHARING_ANNOTATIONS)
    backend = ""
    if spec.get("externalTrafficPolicy") == "Local":
        selector = f.mapping(spec.get("selector"), "spec.selector")
        backend = ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or f"{ref}"
    return LBRequest(
        ref=ref,
        families=families,
        ports=tuple(ports),
        requested=requested,
        pool=pool[1] if pool else None,
        sharing_key=sharing[1] if sharing else None,
        backend_key=backend,
        labels=f.string_map(meta.get("labels"), "metadata.labels"),
        creation=str(meta.get("creationTimestamp") or ""),
    )


def _families(f: _Fields, spec: Mapping[str, Any]) -> tuple[Family, ...]:
    declared = spec.get("ipFamilies")
    if declared is None:
        ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        if not isinstance(ips, list | tuple):  # a hostile or broken object: refused by name, never a crash
            raise f.fail("spec.clusterIPs", f"must be a list, got {type(ips).__name__}")
        declared = ["IPv6" if isinstance(ip, str) and ":" in ip else "IPv4" for ip in ips] or ["IPv4"]
    if not isinstance(declared, list | tuple) or not declared:
        raise f.fail("spec.ipFamilies", "must be a non-empty list")
    families: list[Family] = []
    for i, name in enumerate(declared):
        fam = {"IPv4": 4, "IPv6": 6}.get(name) if isinstance(name, str) else None
        if fam is None:
            raise f.fail(f"spec.ipFamilies[{i}]", f"unknown family {name!r} (accepted: IPv4, IPv6)")
        if fam not in families:
            families.append(fam)  # type: ignore[arg-type]  # fam is 4 or 6 by the lookup above
    return tuple(families)


def _requested(f: _Fields, spec: Mapping[str, Any], annotations: Mapping[str, Any],
               families: tuple[Family, ...]) -> tuple[str, ...]:
    found = _annotation(annotations, IP_ANNOTATIONS)
    field, text = (f"metadata.annotations[{found[0]}]", found[1]) if found else ("spec.loadBalancerIP", "")
    if not found:
        legacy = spec.get("loadBalancerIP")
        if legacy in (None, ""):
            return ()
        if not isinstance(legacy, str):
            raise f.fail(field, f"must be an IP address, got {legacy!r}")
        text = legacy
    addresses: list[str] = []
    seen: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            ip = ipaddress.ip_address(part)
        except ValueError:
            raise f.fail(field, f"{part!r} is not an IP address") from None
        if ip.version in seen:
            raise f.fail(field, f"at most one address per family, got {text!r}")
        if ip.version not in families:
            raise f.fail(field, f"{ip} is IPv{ip.version} but the Service's ipFamilies are "
                                f"{', '.join(f'IPv{x}' for x in families)}")
        seen.add(ip.version)
        addresses.append(str(ip))
    if addresses and len(addresses) != len(families):
        raise f.fail(field, f"names {len(addresses)} address(es) for a Service of {len(families)} families: "
                            "name one per family")
    return tuple(addresses)
