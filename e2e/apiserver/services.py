"""Service defaulting, validation and ClusterIP / NodePort allocation.

Mirrors the real registry (SetDefaults_Service, ValidateService, the IP and
port allocators, patchAllocatedValues and dropTypeDependentFields) closely
enough that a proxy under test sees the same Service shapes a real cluster
produces, and that "the API refused it" cases answer 422 the same way.

Allocations are not kept in separate bitmaps: what is in use is what the
stored Services say, so deletes and `put_raw` objects release and reserve
exactly as their stored contents say.  The store tells the allocator of every
stored Service (`Allocator.stored`), which counts the addresses and ports each
holds, so a write costs the same at 50,000 Services as at 5 (it used to scan
every stored Service per create and per update).
"""

from __future__ import annotations

import copy
import ipaddress
import random
import re
from collections import Counter
from typing import Any, Hashable, Iterable

from .errors import FieldError, duplicate, forbidden, invalid, not_supported, required
from .meta import DNS1123_SUBDOMAIN, name_errors

TYPES = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]
PROTOCOLS = ["SCTP", "TCP", "UDP"]
FAMILIES = ["IPv4", "IPv6"]
POLICIES = ["PreferDualStack", "RequireDualStack", "SingleStack"]
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_IP_MSG = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def family_of(ip: IPAddress | IPNetwork) -> str:
    return "IPv4" if ip.version == 4 else "IPv6"


def _parse_ip(text: Any) -> IPAddress | None:
    if not isinstance(text, str):
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def needs_cluster_ip(spec: dict[str, Any]) -> bool:
    return spec.get("type", "ClusterIP") != "ExternalName"


def needs_node_ports(spec: dict[str, Any]) -> bool:
    t = spec.get("type")
    if t == "NodePort":
        return True
    return t == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is not False


def needs_hc_node_port(spec: dict[str, Any]) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def externally_accessible(spec: dict[str, Any]) -> bool:
    t = spec.get("type")
    return t in ("NodePort", "LoadBalancer") or (t == "ClusterIP" and bool(spec.get("externalIPs")))


def is_headless(spec: dict[str, Any]) -> bool:
    ips = spec.get("clusterIPs") or []
    return spec.get("clusterIP") == "None" or (bool(ips) and ips[0] == "None")


def set_defaults(svc: dict[str, Any]) -> None:
    """SetDefaults_Service: what the real server fills in while decoding."""
    spec = svc.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    if not spec.get("type"):
        spec["type"] = "ClusterIP"
    if not spec.get("sessionAffinity"):
        spec["sessionAffinity"] = "None"
    if spec.get("sessionAffinity") == "None":
        spec.pop("sessionAffinityConfig", None)
    elif spec.get("sessionAffinity") == "ClientIP":
        cfg = spec.get("sessionAffinityConfig") or {}
        cip = cfg.get("clientIP") or {}
        if cip.get("timeoutSeconds") in (None, 0):
            cip["timeoutSeconds"] = 10800
        cfg["clientIP"] = cip
        spec["sessionAffinityConfig"] = cfg
    for port in spec.get("ports") or []:
        if not isinstance(port, dict):
            continue
        if not port.get("protocol"):
            port["protocol"] = "TCP"
        if port.get("targetPort") in (None, 0, ""):
            port["targetPort"] = port.get("port")
    if spec["type"] in ("NodePort", "LoadBalancer") and not spec.get("externalTrafficPolicy"):
        spec["externalTrafficPolicy"] = "Cluster"
    if spec["type"] != "ExternalName" and not spec.get("internalTrafficPolicy"):
        spec["internalTrafficPolicy"] = "Cluster"
    if spec["type"] == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is None:
        spec["allocateLoadBalancerNodePorts"] = True


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate(svc: dict[str, Any]) -> list[FieldError]:
    """The static part of ValidateService (no allocation state needed)."""
    errs: list[FieldError] = []
    spec = svc.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    stype = spec.get("type")
    if stype not in TYPES:
        errs.append(not_supported("spec.type", stype, TYPES))
        return errs
    ports = spec.get("ports") or []
    if not isinstance(ports, list):
        return [invalid("spec.ports", ports, "must be a list")]
    headless = is_headless(spec)
    if not ports and stype != "ExternalName" and not headless:
        errs.append(required("spec.ports"))
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    node_ports: dict[Any, Any] = {}
    for i, port in enumerate(ports):
        base = f"spec.ports[{i}]"
        if not isinstance(port, dict):
            errs.append(invalid(base, port, "must be an object"))
            continue
        name = port.get("name") or ""
        if len(ports) > 1 and not name:
            errs.append(required(f"{base}.name"))
        elif name:
            for msg in name_errors(name, "label") if isinstance(name, str) else ["must be a string"]:
                errs.append(invalid(f"{base}.name", name, msg))
            if name in names:
                errs.append(duplicate(f"{base}.name", name))
            names.add(name)
        num = port.get("port")
        if not _is_int(num) or not 1 <= num <= 65535:
            errs.append(invalid(f"{base}.port", num, "must be between 1 and 65535, inclusive"))
        proto = port.get("protocol")
        if proto not in PROTOCOLS:
            errs.append(not_supported(f"{base}.protocol", proto, PROTOCOLS))
        tp = port.get("targetPort")
        if _is_int(tp):
            if not 1 <= tp <= 65535:
                errs.append(invalid(f"{base}.targetPort", tp, "must be between 1 and 65535, inclusive"))
        elif isinstance(tp, str):
            if (len(tp) > 15 or not _IANA_SVC_NAME.match(tp) or "--" in tp
                    or not re.search(r"[a-z]", tp)):
                errs.append(invalid(f"{base}.targetPort", tp,
                                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"))
        else:
            errs.append(invalid(f"{base}.targetPort", tp, "must be an integer or a string"))
        np = port.get("nodePort")
        if np not in (None, 0):
            if not _is_int(np) or np < 0:
                errs.append(invalid(f"{base}.nodePort", np, "must be between 1 and 65535, inclusive"))
            elif stype in ("ClusterIP", "ExternalName"):
                errs.append(forbidden(f"{base}.nodePort", f"may not be used when `type` is '{stype}'"))
            else:
                key = (np, proto)
                if key in node_ports:
                    errs.append(duplicate(f"{base}.nodePort", np))
                node_ports[key] = i
        key2 = (num, proto)
        if key2 in seen:
            errs.append(duplicate(base, port))
        seen.add(key2)
    ips = list(spec.get("clusterIPs") or [])
    cip = spec.get("clusterIP") or ""
    if stype == "ExternalName":
        if cip or ips:
            errs.append(forbidden("spec.clusterIPs", "may not be set for ExternalName services"))
        ext = spec.get("externalName") or ""
        if not ext:
            errs.append(required("spec.externalName"))
        elif not DNS1123_SUBDOMAIN.match(ext.rstrip(".")) or len(ext) > 253:
            errs.append(invalid("spec.externalName", ext, name_errors(ext.rstrip("."), "subdomain")[0]
                                if name_errors(ext.rstrip("."), "subdomain") else "must be a DNS name"))
    else:
        if ips and cip and ips[0] != cip:
            errs.append(invalid("spec.clusterIPs", ips, "must be empty or the first value must match spec.clusterIP"))
        for i, ip in enumerate(ips or ([cip] if cip else [])):
            if ip == "None":
                if i != 0:
                    errs.append(invalid(f"spec.clusterIPs[{i}]", ip, "'None' must be the first and only value"))
                elif stype != "ClusterIP":
                    errs.append(invalid(f"spec.clusterIPs[{i}]", ip, f"may not be set to 'None' for {stype} services"))
            elif _parse_ip(ip) is None:
                errs.append(invalid(f"spec.clusterIPs[{i}]", ip, _IP_MSG))
        if len(ips) > 2:
            errs.append(invalid("spec.clusterIPs", ips, "may only hold up to 2 values"))
        if len(ips) == 2 and ips[0] != "None":
            a, b = _parse_ip(ips[0]), _parse_ip(ips[1])
            if a and b and a.version == b.version:
                errs.append(invalid("spec.clusterIPs", ips, "may specify no more than one IP for each IP family"))
    fams = spec.get("ipFamilies") or []
    for i, fam in enumerate(fams):
        if fam not in FAMILIES:
            errs.append(not_supported(f"spec.ipFamilies[{i}]", fam, FAMILIES))
        elif fam in fams[:i]:
            errs.append(duplicate(f"spec.ipFamilies[{i}]", fam))
    if len(fams) > 2:
        errs.append(invalid("spec.ipFamilies", fams, "may only hold up to 2 values"))
    pol = spec.get("ipFamilyPolicy")
    if pol is not None and pol not in POLICIES:
        errs.append(not_supported("spec.ipFamilyPolicy", pol, POLICIES))
    if pol == "SingleStack" and (len(fams) > 1 or len(ips) > 1):
        errs.append(invalid("spec.ipFamilyPolicy", pol,
                            "must be RequireDualStack or PreferDualStack when multiple IP families are specified"))
    for i, ip in enumerate(spec.get("externalIPs") or []):
        if _parse_ip(ip) is None:
            errs.append(invalid(f"spec.externalIPs[{i}]", ip, _IP_MSG))
    for i, cidr in enumerate(spec.get("loadBalancerSourceRanges") or []):
        try:
            ipaddress.ip_network(cidr.strip(), strict=False)
        except (ValueError, AttributeError):
            errs.append(invalid(f"spec.loadBalancerSourceRanges[{i}]", cidr,
                                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"))
    aff = spec.get("sessionAffinity")
    if aff not in ("ClientIP", "None"):
        errs.append(not_supported("spec.sessionAffinity", aff, ["ClientIP", "None"]))
    elif aff == "ClientIP":
        t = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
        if not _is_int(t) or not 0 < t <= 86400:
            errs.append(invalid("spec.sessionAffinityConfig.clientIP.timeoutSeconds", t,
                                "must be greater than 0 and less than 86400"))
    etp = spec.get("externalTrafficPolicy")
    if etp:
        if not externally_accessible(spec):
            errs.append(invalid("spec.externalTrafficPolicy", etp,
                                "may only be set for externally-accessible services"))
        elif etp not in ("Cluster", "Local"):
            errs.append(not_supported("spec.externalTrafficPolicy", etp, ["Cluster", "Local"]))
    itp = spec.get("internalTrafficPolicy")
    if stype != "ExternalName" and itp not in ("Cluster", "Local"):
        errs.append(not_supported("spec.internalTrafficPolicy", itp, ["Cluster", "Local"]))
    hc = spec.get("healthCheckNodePort")
    if hc not in (None, 0) and not needs_hc_node_port(spec):
        errs.append(invalid("spec.healthCheckNodePort", hc,
                            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"))
    if spec.get("allocateLoadBalancerNodePorts") is not None and stype != "LoadBalancer":
        errs.append(forbidden("spec.allocateLoadBalancerNodePorts",
                              "may only be used when `type` is 'LoadBalancer'"))
    selector = spec.get("selector") or {}
    if not isinstance(selector, dict):
        errs.append(invalid("spec.selector", selector, "must be a map of strings"))
    return errs


class _TakenByOthers:
    """A set of what the other Services hold: the counts of all stored Services, less one Service's own
    (what a write replaces), plus what this allocation has just picked."""

    __slots__ = ("counts", "own", "extra")

    def __init__(self, counts: Counter[Any], own: frozenset[Any], extra: Iterable[Hashable] = ()) -> None:
        self.counts, self.own, self.extra = counts, own, set(extra)

    def __contains__(self, value: object) -> bool:
        return value in self.extra or self.counts.get(value, 0) > (1 if value in self.own else 0)

    def add(self, value: Hashable) -> None:
        self.extra.add(value)

    def __or__(self, other: Iterable[Hashable]) -> "_TakenByOthers":
        return _TakenByOthers(self.counts, self.own, self.extra | set(other))


class Allocator:
    """ClusterIP and NodePort allocation over the configured ranges."""

    def __init__(self, cidrs: list[IPNetwork], node_ports: tuple[int, int], rng: random.Random) -> None:
        self.cidrs = cidrs
        self.node_ports = node_ports
        self.rng = rng
        # what each stored Service holds, and how many hold each address and port
        self._held: dict[tuple[str, str], tuple[frozenset[IPAddress], frozenset[int]]] = {}
        self._ip_count: Counter[IPAddress] = Counter()
        self._port_count: Counter[int] = Counter()

    def stored(self, key: tuple[str, str], svc: dict[str, Any] | None) -> None:
        """The Service at `key` is now `svc` (None: deleted): the store calls this on every write."""
        old = self._held.pop(key, None)
        if old is not None:
            for counts, values in ((self._ip_count, old[0]), (self._port_count, old[1])):
                for value in values:
                    counts[value] -= 1
                    if counts[value] <= 0:
                        del counts[value]
        if svc is None:
            return
        ips, ports = frozenset(self.used_ips((svc,))), frozenset(self.used_node_ports((svc,)))
        if ips or ports:
            self._held[key] = (ips, ports)
            self._ip_count.update(ips)
            self._port_count.update(ports)

    @property
    def families(self) -> list[str]:
        return [family_of(c) for c in self.cidrs]

    def cidr_for(self, family: str) -> IPNetwork | None:
        return next((c for c in self.cidrs if family_of(c) == family), None)

    def cidr_text(self) -> str:
        return ",".join(str(c) for c in self.cidrs)

    # --- what is taken ---------------------------------------------------------
    @staticmethod
    def used_ips(others: Iterable[dict[str, Any]]) -> set[IPAddress]:
        out: set[IPAddress] = set()
        for svc in others:
            spec = svc.get("spec")
            if not isinstance(spec, dict):  # put_raw stores anything: an unvalidated object holds no address
                continue
            ips = spec.get("clusterIPs")
            for ip in (ips if isinstance(ips, list) else []) + [spec.get("clusterIP") or ""]:
                addr = _parse_ip(ip)
                if addr:
                    out.add(addr)
        return out

    @staticmethod
    def used_node_ports(others: Iterable[dict[str, Any]]) -> set[int]:
        out: set[int] = set()
        for svc in others:
            spec = svc.get("spec")
            if not isinstance(spec, dict):  # put_raw stores anything
                continue
            ports = spec.get("ports")
            for p in ports if isinstance(ports, list) else []:
                if isinstance(p, dict) and _is_int(p.get("nodePort")) and p["nodePort"]:
                    out.add(p["nodePort"])
            if _is_int(spec.get("healthCheckNodePort")) and spec["healthCheckNodePort"]:
                out.add(spec["healthCheckNodePort"])
        return out

    # --- ranges ------------------------------------------------------------------
    @staticmethod
    def _usable(cidr: IPNetwork) -> tuple[int, int]:
        """First and last usable offsets (network and v4 broadcast are reserved)."""
        last = cidr.num_addresses - (2 if cidr.version == 4 else 1)
        return 1, max(1, last)

    def _in_range(self, cidr: IPNetwork, ip: IPAddress) -> bool:
        if ip not in cidr:
            return False
        lo, hi = self._usable(cidr)
        off = int(ip) - int(cidr.network_address)
        return lo <= off <= hi

    def _pick_ip(self, cidr: IPNetwork, used: set[IPAddress]) -> IPAddress | None:
        lo, hi = self._usable(cidr)
        size = min(hi - lo + 1, 1 << 20)
        hi = lo + size - 1
        # Like the real allocator: dynamic allocations prefer the upper band so
        # the lower band stays free for statically chosen IPs.
        band = min(max(16, size // 16), 256)
        for start, end in ((lo + band, hi), (lo, lo + band - 1)):
            if start > end:
                continue
            count = end - start + 1
            for _ in range(min(count, 64)):
                ip = cidr.network_address + start + self.rng.randrange(count)
                if ip not in used:
                    return ip
            for off in range(start, end + 1):
                ip = cidr.network_address + off
                if ip not in used:
                    return ip
        return None

    def _pick_port(self, used: set[int]) -> int | None:
        lo, hi = self.node_ports
        size = hi - lo + 1
        band = min(max(16, size // 32), 128)
        for start, end in ((lo + band, hi), (lo, lo + band - 1)):
            if start > end:
                continue
            count = end - start + 1
            for _ in range(min(count, 64)):
                port = start + self.rng.randrange(count)
                if port not in used:
                    return port
            for port in range(start, end + 1):
                if port not in used:
                    return port
        return None

    # --- the allocation step of create/update ------------------------------------
    def allocate(self, svc: dict[str, Any], others: list[dict[str, Any]] | None = None,
                 key: tuple[str, str] | None = None) -> list[FieldError]:
        """Fill clusterIPs, IP families, nodePorts and healthCheckNodePort; report conflicts.

        What is taken: what `others` hold, or (without `others`) what every stored Service but the one
        at `key` holds, from the counts `stored` keeps."""
        spec = svc["spec"]
        if others is not None:
            used_ips: Any = self.used_ips(others)
            used_ports: Any = self.used_node_ports(others)
        else:
            own = self._held.get(key) if key is not None else None
            used_ips = _TakenByOthers(self._ip_count, own[0] if own else frozenset())
            used_ports = _TakenByOthers(self._port_count, own[1] if own else frozenset())
        errs: list[FieldError] = []
        if needs_cluster_ip(spec):
            errs += self._allocate_ips(spec, used_ips)
        else:
            for name in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                spec.pop(name, None)
        if errs:
            return errs
        return self._allocate_ports(spec, used_ports)

    def _allocate_ips(self, spec: dict[str, Any], used: Any) -> list[FieldError]:
        errs: list[FieldError] = []
        ips = list(spec.get("clusterIPs") or [])
        if not ips and spec.get("clusterIP"):
            ips = [spec["clusterIP"]]
        fams = list(spec.get("ipFamilies") or [])
        policy = spec.get("ipFamilyPolicy")
        dual = len(self.cidrs) > 1
        if ips and ips[0] == "None":
            if policy is None:
                policy = "RequireDualStack" if dual and not spec.get("selector") else "SingleStack"
            if not fams:
                fams = list(self.families) if policy != "SingleStack" and dual else [self.families[0]]
            errs += self._check_families(fams, policy)
            if errs:
                return errs
            spec.update(clusterIP="None", clusterIPs=["None"], ipFamilies=fams, ipFamilyPolicy=policy)
            return errs
        addrs = [_parse_ip(ip) for ip in ips]
        for i, addr in enumerate(addrs):
            if addr is None:
                return [invalid(f"spec.clusterIPs[{i}]", ips[i], _IP_MSG)]
            if i < len(fams) and fams[i] in FAMILIES and fams[i] != family_of(addr):
                errs.append(invalid(f"spec.ipFamilies[{i}]", fams[i],
                                    f"must match the IP family of spec.clusterIPs[{i}]"))
        if errs:
            return errs
        if policy is None:
            policy = "RequireDualStack" if len(ips) > 1 or len(fams) > 1 else "SingleStack"
        if not fams:
            fams = [family_of(a) for a in addrs if a] or [self.families[0]]
        if policy != "SingleStack" and dual and len(fams) == 1:
            fams.append(next(f for f in self.families if f != fams[0]))
        errs += self._check_families(fams, policy)
        if errs:
            return errs
        bad_given: list[str] = []
        reasons: list[str] = []
        for addr in addrs:
            assert addr is not None
            cidr = self.cidr_for(family_of(addr))
            if cidr is None or not self._in_range(cidr, addr):
                bad_given.append(str(addr))
                reasons.append(f"failed to allocate IP {addr}: the provided IP ({addr}) is not in the valid "
                               f"range. The range of valid IPs is {cidr if cidr else self.cidr_text()}")
            elif addr in used:
                bad_given.append(str(addr))
                reasons.append(f"failed to allocate IP {addr}: provided IP is already allocated")
        if reasons:
            return [invalid("spec.clusterIPs", ips, reasons[0])]
        out = [str(a) for a in addrs]
        for fam in fams[len(addrs):]:
            cidr = self.cidr_for(fam)
            assert cidr is not None
            ip = self._pick_ip(cidr, used)
            if ip is None:
                return [invalid("spec.clusterIPs", ips, "failed to allocate a serviceIP: range is full")]
            used.add(ip)
            out.append(str(ip))
        spec.update(clusterIP=out[0], clusterIPs=out, ipFamilies=fams, ipFamilyPolicy=policy)
        return errs

    def _check_families(self, fams: list[str], policy: str) -> list[FieldError]:
        errs: list[FieldError] = []
        if policy == "RequireDualStack" and len(self.cidrs) < 2:
            errs.append(invalid("spec.ipFamilyPolicy", policy,
                                "this cluster is not configured for dual-stack services"))
        for i, fam in enumerate(fams):
            if fam not in self.families:
                errs.append(invalid(f"spec.ipFamilies[{i}]", fam, "not configured on this cluster"))
        return errs

    def _port_errors(self, field: str, port: int, used: set[int]) -> FieldError | None:
        lo, hi = self.node_ports
        if not lo <= port <= hi:
            return invalid(field, port, f"provided port is not in the valid range. The range of valid ports is "
                                        f"{lo}-{hi}")
        if port in used:
            return invalid(field, port, "provided port is already allocated")
        return None

    def _allocate_ports(self, spec: dict[str, Any], used: Any) -> list[FieldError]:
        errs: list[FieldError] = []
        ports = spec.get("ports") or []
        mine: set[int] = set()
        for i, p in enumerate(ports):
            np = p.get("nodePort")
            if np and np not in mine:
                err = self._port_errors(f"spec.ports[{i}].nodePort", np, used)
                if err:
                    errs.append(err)
                mine.add(np)
        if not errs and needs_node_ports(spec):
            by_number: dict[int, int] = {p["port"]: p["nodePort"] for p in ports if p.get("nodePort")}
            for p in ports:
                if p.get("nodePort"):
                    continue
                np = by_number.get(p["port"])
                if np is None:
                    np = self._pick_port(used | mine)
                    if np is None:
                        return [invalid("spec.ports", ports, "failed to allocate a nodePort: range is full")]
                    mine.add(np)
                    by_number[p["port"]] = np
                p["nodePort"] = np
        hc = spec.get("healthCheckNodePort")
        if not errs and needs_hc_node_port(spec):
            if hc:
                err = self._port_errors("spec.healthCheckNodePort", hc, used | mine)
                if err:
                    errs.append(err)
            else:
                np = self._pick_port(used | mine)
                if np is None:
                    return [invalid("spec.healthCheckNodePort", 0, "failed to allocate a nodePort: range is full")]
                spec["healthCheckNodePort"] = np
        return errs


def prepare_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    """patchAllocatedValues + dropTypeDependentFields + immutability checks of the real registry."""
    nspec, ospec = new.setdefault("spec", {}), old.get("spec") or {}
    if not isinstance(nspec, dict):
        return []
    ntype, otype = nspec.get("type"), ospec.get("type")
    # A PUT that omits allocated values keeps them (kubectl apply/replace rely on this).
    if needs_cluster_ip(ospec) and needs_cluster_ip(nspec):
        if not nspec.get("clusterIP") and not nspec.get("clusterIPs"):
            for key in ("clusterIP", "clusterIPs"):
                if key in ospec:
                    nspec[key] = copy.deepcopy(ospec[key])
        if nspec.get("clusterIPs") == ospec.get("clusterIPs"):
            for key in ("ipFamilies", "ipFamilyPolicy"):
                if not nspec.get(key) and key in ospec:
                    nspec[key] = copy.deepcopy(ospec[key])
    if needs_node_ports(ospec) and needs_node_ports(nspec):
        def used(spec: dict[str, Any]) -> set[int]:
            return {p.get("nodePort") for p in spec.get("ports") or [] if isinstance(p, dict) and p.get("nodePort")}
        taken = used(ospec) & used(nspec)
        by_name = {p.get("name") or "": p.get("nodePort") for p in ospec.get("ports") or [] if isinstance(p, dict)}
        for p in nspec.get("ports") or []:
            if isinstance(p, dict) and not p.get("nodePort"):
                old_np = by_name.get(p.get("name") or "")
                if old_np and old_np not in taken:
                    p["nodePort"] = old_np
    if needs_hc_node_port(ospec) and needs_hc_node_port(nspec) and not nspec.get("healthCheckNodePort"):
        if ospec.get("healthCheckNodePort"):
            nspec["healthCheckNodePort"] = ospec["healthCheckNodePort"]
    # Fields that only made sense for the old type are wiped when unchanged.
    if ntype != otype:
        if not needs_cluster_ip(nspec) and needs_cluster_ip(ospec):
            if nspec.get("clusterIPs") == ospec.get("clusterIPs") or (
                    nspec.get("clusterIP") == ospec.get("clusterIP") and not nspec.get("clusterIPs")):
                for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                    nspec.pop(key, None)
            if nspec.get("internalTrafficPolicy") == ospec.get("internalTrafficPolicy"):
                nspec.pop("internalTrafficPolicy", None)
        if not needs_node_ports(nspec):
            old_by_name = {p.get("name") or "": p.get("nodePort") for p in ospec.get("ports") or []
                           if isinstance(p, dict)}
            for p in nspec.get("ports") or []:
                if isinstance(p, dict) and p.get("nodePort") and p.get("nodePort") == old_by_name.get(
                        p.get("name") or ""):
                    p.pop("nodePort", None)
        if nspec.get("type") != "LoadBalancer":
            if nspec.get("allocateLoadBalancerNodePorts") == ospec.get("allocateLoadBalancerNodePorts"):
                nspec.pop("allocateLoadBalancerNodePorts", None)
    if not needs_hc_node_port(nspec) and nspec.get("healthCheckNodePort") == ospec.get("healthCheckNodePort"):
        nspec.pop("healthCheckNodePort", None)
    if not externally_accessible(nspec) and nspec.get("externalTrafficPolicy") == ospec.get("externalTrafficPolicy"):
        nspec.pop("externalTrafficPolicy", None)
    if nspec.get("type") in ("NodePort", "LoadBalancer") and not nspec.get("externalTrafficPolicy"):
        nspec["externalTrafficPolicy"] = "Cluster"
    if nspec.get("type") != "ExternalName" and not nspec.get("internalTrafficPolicy"):
        nspec["internalTrafficPolicy"] = "Cluster"
    errs: list[FieldError] = []
    if needs_cluster_ip(ospec) and needs_cluster_ip(nspec):
        old_ips = ospec.get("clusterIPs") or ([ospec["clusterIP"]] if ospec.get("clusterIP") else [])
        new_ips = nspec.get("clusterIPs") or ([nspec["clusterIP"]] if nspec.get("clusterIP") else [])
        if old_ips and new_ips and old_ips[0] != new_ips[0]:
            errs.append(invalid("spec.clusterIPs[0]", new_ips[0], "may not change once set"))
        elif old_ips and not new_ips:
            errs.append(invalid("spec.clusterIPs[0]", "", "may not change once set"))
    return errs
