"""Every set and map nftproxy writes to, declared once: name, family, key and value types, and
whether Services share its elements.

rules/nftproxy.nft declares the same sets for the kernel, with comments for the reader; a test
(tests/test_declarations.py) holds the two in agreement. Code names a set through these objects,
never by building its name: `SERVICE_IPS.name(4) == "service-ips-v4"`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .elements import SetDecl

FAMILIES = (4, 6)
_ADDR = {4: "ipv4_addr", 6: "ipv6_addr"}


@dataclass(frozen=True, slots=True)
class SetFamily:
    """One set or map per IP family, named `<base>-v4` and `<base>-v6`.

    `key`/`value` are type text with `{addr}` for the family's address type; `v6` overrides the IPv6
    declaration where it differs in shape (affinity entries are hashed there, see chains.py).
    `shared`: several Services may hold the same element by design (hairpin): never a conflict, and
    the element carries no value or comment that could differ between them.
    """

    base: str
    key: str
    value: str | None = None
    flags: tuple[str, ...] = ()
    size: int | None = None
    shared: bool = False
    v6: SetDecl | None = field(default=None, compare=False)
    names: dict[int, str] = field(init=False, repr=False, compare=False)  # by family: built once (hot path)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", {family: f"{self.base}-v{family}" for family in FAMILIES})

    def name(self, family: int) -> str:
        return self.names[family]

    def decl(self, family: int) -> SetDecl:
        if family == 6 and self.v6 is not None:
            return self.v6
        addr = _ADDR[family]
        value = self.value.format(addr=addr) if self.value is not None else None
        return SetDecl(self.name(family), self.key.format(addr=addr), value, flags=self.flags, size=self.size)


_FRONTEND = "{addr} . inet_proto . inet_service"
_NODEPORT = "inet_proto . inet_service"
_HASHED_ENTRY = "numgen random mod 1 . numgen random mod 1 . meta l4proto . th dport"  # see chains._HASH

# what the configuration puts in
SERVICE_CIDRS = SetFamily("service-cidrs", "{addr}", flags=("interval",))
CLUSTER_CIDRS = SetFamily("cluster-cidrs", "{addr}", flags=("interval",))
NODEPORT_CIDRS = SetFamily("nodeport-cidrs", "{addr}", flags=("interval",))
# what Services put in
CLUSTER_IPS = SetFamily("cluster-ips", "{addr}")
SERVICE_IPS = SetFamily("service-ips", _FRONTEND, "classid")
SERVICE_NODEPORTS = SetFamily("service-nodeports", _NODEPORT, "classid")
NO_ENDPOINT_SERVICES = SetFamily("no-endpoint-services", _FRONTEND)
NO_ENDPOINT_NODEPORTS = SetFamily("no-endpoint-nodeports", _NODEPORT)
HAIRPIN = SetFamily("hairpin", "{addr} . {addr}", shared=True)
EXTERNAL_LOCAL_DISPATCH = SetFamily("external-local-dispatch", _FRONTEND, "classid")
EXTERNAL_SHORT_CIRCUIT = SetFamily("external-short-circuit", _FRONTEND, "classid")
NODEPORT_LOCAL_DISPATCH = SetFamily("nodeport-local-dispatch", _NODEPORT, "classid")
NODEPORT_SHORT_CIRCUIT = SetFamily("nodeport-short-circuit", _NODEPORT, "classid")
FIREWALL_IPS = SetFamily("firewall-ips", _FRONTEND)
FIREWALL_ALLOW = SetFamily("firewall-allow", _FRONTEND + " . {addr}", flags=("interval",))
# sessionAffinity (entries are written by the packet path, the rest by Services)
_ENTRIES = ("dynamic", "timeout")
_ENTRIES_SIZE = 1 << 20
AFFINITY = SetFamily("affinity", "{addr} . " + _FRONTEND, "{addr} . inet_service", _ENTRIES, size=_ENTRIES_SIZE,
                     v6=SetDecl("affinity-v6", _HASHED_ENTRY, "ip6 daddr", True, _ENTRIES, _ENTRIES_SIZE))
AFFINITY_PORTS = SetFamily("affinity-ports", _FRONTEND, "inet_service")
AFFINITY_FRONTENDS = SetFamily("affinity-frontends", _FRONTEND)
AFFINITY_SERVICES = SetFamily("affinity-services", _FRONTEND, "classid")
AFFINITY_VALID = SetFamily("affinity-valid", _FRONTEND + " . {addr} . inet_service")
AFFINITY_NODEPORTS = SetFamily("affinity-nodeports", "{addr} . " + _NODEPORT, "{addr} . inet_service", _ENTRIES,
                               size=_ENTRIES_SIZE,
                               v6=SetDecl("affinity-nodeports-v6", _HASHED_ENTRY, "ip6 daddr", True, _ENTRIES,
                                          _ENTRIES_SIZE))
AFFINITY_NODEPORT_PORTS = SetFamily("affinity-nodeport-ports", _NODEPORT, "inet_service")
AFFINITY_NODEPORT_FRONTENDS = SetFamily("affinity-nodeport-frontends", _NODEPORT)
AFFINITY_NODEPORT_SERVICES = SetFamily("affinity-nodeport-services", _NODEPORT, "classid")
AFFINITY_NODEPORT_VALID = SetFamily("affinity-nodeport-valid", _NODEPORT + " . {addr} . inet_service")

PER_FAMILY: tuple[SetFamily, ...] = (
    SERVICE_CIDRS, CLUSTER_CIDRS, NODEPORT_CIDRS, CLUSTER_IPS, SERVICE_IPS, SERVICE_NODEPORTS,
    NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS, HAIRPIN, EXTERNAL_LOCAL_DISPATCH, EXTERNAL_SHORT_CIRCUIT,
    NODEPORT_LOCAL_DISPATCH, NODEPORT_SHORT_CIRCUIT, FIREWALL_IPS, FIREWALL_ALLOW, AFFINITY, AFFINITY_PORTS,
    AFFINITY_FRONTENDS, AFFINITY_SERVICES, AFFINITY_VALID, AFFINITY_NODEPORTS, AFFINITY_NODEPORT_PORTS,
    AFFINITY_NODEPORT_FRONTENDS, AFFINITY_NODEPORT_SERVICES, AFFINITY_NODEPORT_VALID,
)
# IPv6 affinity needs no port map for IPv4 (its entries hold the port): those exist for IPv6 only
IPV6_ONLY = frozenset({AFFINITY_PORTS.base, AFFINITY_NODEPORT_PORTS.base})

# class -> verdict: one element per dynamic chain (see skeleton.class_id), plus static ones
CLASSES = SetDecl("classes", "classid", "verdict")
LOCAL_CLASSES = SetDecl("local-classes", "classid", "verdict")
AFFINITY_CLASSES = SetDecl("affinity-classes", "classid", "verdict")


def skeleton_sets() -> dict[str, SetDecl]:
    """Every set and map rules/nftproxy.nft declares, by name."""
    declared = {d.name: d for d in (CLASSES, LOCAL_CLASSES, AFFINITY_CLASSES)}
    for family_set in PER_FAMILY:
        for family in FAMILIES:
            if family == 4 and family_set.base in IPV6_ONLY:
                continue
            decl = family_set.decl(family)
            declared[decl.name] = decl
    return declared


SHARED_SETS = frozenset(HAIRPIN.name(f) for f in FAMILIES)


def is_shared(set_name: str) -> bool:
    """Whether Services share this set's elements by design (never a conflict, never a value)."""
    return set_name in SHARED_SETS


def backends_map_name(kind: str, family: int, count: int) -> str:
    """backends-cluster-v4-3: the map of lb-cluster-v4-3."""
    return f"backends-{kind}-v{family}-{count}"


def backends_map(kind: str, family: int, count: int, frontend: str, endpoint: str) -> SetDecl:
    """The map of one lb chain: frontend . slot -> endpoint (typeof: nft 1.0.6 needs it for `th dport`)."""
    plural = "s" if count != 1 else ""
    return SetDecl(backends_map_name(kind, family, count), f"{frontend} . numgen random mod 1", endpoint, typeof=True,
                   comment=f"{kind} frontend . slot -> endpoint, for {count} slot{plural}")
