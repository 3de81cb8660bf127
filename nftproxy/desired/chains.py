"""The dynamic chains: one per lb kind, family and endpoint count, and one per affinity timeout.

Shared by every Service frontend with the same shape, so their number grows with the distinct endpoint
counts and timeouts, not with the Services. Each chain's content is a pure function of its name and
the configuration (see rules/nftproxy.nft for the packet path they sit on).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..config import ProxyConfig
from . import sets
from .elements import Chain, Element
from .sets import SetFamily
from .skeleton import MASQUERADE_MARK, class_id

MARK_FOR_MASQUERADE = f"meta mark set meta mark | {MASQUERADE_MARK}"
# every chain a class leads to first clears the class from `meta priority` (the packet's own priority
# is not kept: its first packet goes out with priority 0; IPv4 forwarding resets it anyway)
CLEAR_CLASS = "meta priority set none"
_IPX = {4: "ip", 6: "ip6"}
# lb chain kinds: (keyed by daddr?, masquerade)
KINDS = {
    "cluster": (True, "cluster"),
    "external": (True, "always"),
    "local": (True, "never"),
    "short": (True, "never"),
    "nodeport": (False, "always"),
    "nplocal": (False, "never"),
    "npshort": (False, "never"),
}
# the dispatch map of each lb chain kind: the externalTrafficPolicy Local chains, reached from @classes,
# have their own (the kernel refuses a chain that could reach itself)
KIND_CLASSES = {kind: sets.LOCAL_CLASSES.name if kind in ("local", "short", "nplocal", "npshort") else sets.CLASSES.name
                for kind in KINDS}
_PROTOCOLS = ("tcp", "udp", "sctp")


# nft 1.0.6 gives the key and the data of a map updated from the packet path one 16-byte register each
# (fixed upstream in 1.0.7 and 1.1.0). An IPv4 client . frontend (16 bytes) and endpoint (8) fit; IPv6
# ones do not, so an IPv6 entry is keyed by two 32-bit hashes of client (. address) followed by
# protocol . port (two different clients or addresses collide with odds ~2^-64), holds the endpoint
# address only, and the endpoint port comes from the frontend's @affinity-*ports-v6 map.
_HASH = ("mod 4294967295 seed 0x6e667031", "mod 4294967295 seed 0x6e667032")


@dataclass(frozen=True, slots=True)
class AffinityNames:
    """sessionAffinity for one kind of frontend: its maps, and how the frontend reads in a packet.

    A NodePort is keyed by protocol . port only, so a client sticks whichever local address it reached.
    """

    entries: SetFamily  # client . frontend -> endpoint, filled from the packet path
    frontends: SetFamily  # frontends whose Service has affinity now
    services: SetFamily  # frontend -> the record chain with the Service's timeout
    valid: SetFamily  # frontend . endpoint pairs an entry may point at
    ports: SetFamily  # IPv6: frontend -> endpoint port (see above)
    record_chain: str  # record chains' name prefix
    by_daddr: bool  # keyed by destination address . protocol . port (else protocol . port)

    def frontend(self, ipx: str, original: bool = False) -> str:
        """The frontend as the packet has it before DNAT, or as conntrack remembers it once DNAT rewrote it."""
        proto_port = "meta l4proto . ct original proto-dst" if original else "meta l4proto . th dport"
        daddr = f"ct original {ipx} daddr" if original else f"{ipx} daddr"
        return f"{daddr} . {proto_port}" if self.by_daddr else proto_port

    def key(self, family: int, original: bool = False) -> str:
        """client . frontend as the entries map is keyed."""
        ipx = _IPX[family]
        ct = "ct original " if original else ""
        if family == 4:
            return f"{ct}{ipx} saddr . {self.frontend(ipx, original)}"
        hashed = f"{ct}{ipx} saddr . {ct}{ipx} daddr" if self.by_daddr else f"{ct}{ipx} saddr"
        proto_port = "meta l4proto . ct original proto-dst" if original else "meta l4proto . th dport"
        return f"jhash {hashed} {_HASH[0]} . jhash {hashed} {_HASH[1]} . {proto_port}"

    def steer(self, family: int) -> str:
        """The lb chains' rule: a client with a live entry goes to its endpoint."""
        ipx = _IPX[family]
        frontend = self.frontend(ipx)
        target = f"{self.key(family)} map @{self.entries.name(family)}"
        if family == 6:
            target += f" : {frontend} map @{self.ports.name(family)}"
        # only frontends that have affinity now: entries of a Service that dropped it, or of a deleted
        # Service whose address was reused, must not steer anything
        return f"{frontend} @{self.frontends.name(family)} meta l4proto {{ tcp, udp, sctp }} dnat {ipx} to {target}"


AFFINITY_IPS = AffinityNames(sets.AFFINITY, sets.AFFINITY_FRONTENDS, sets.AFFINITY_SERVICES, sets.AFFINITY_VALID,
                              sets.AFFINITY_PORTS, "affinity-record", True)
AFFINITY_NODEPORTS = AffinityNames(sets.AFFINITY_NODEPORTS, sets.AFFINITY_NODEPORT_FRONTENDS,
                                   sets.AFFINITY_NODEPORT_SERVICES, sets.AFFINITY_NODEPORT_VALID,
                                    sets.AFFINITY_NODEPORT_PORTS, "affinity-nodeport-record", False)


def lb_chain_name(kind: str, family: int, count: int) -> str:
    """lb-cluster-v4-3: load-balances over 3 endpoint slots for every ClusterIP frontend that has 3."""
    return f"lb-{kind}-v{family}-{count}"


@lru_cache(maxsize=4096)
def lb_chain(kind: str, family: int, count: int, config: ProxyConfig) -> Chain:
    """A shared load-balancing chain with its own backends map (see rules/nftproxy.nft for why)."""
    ipx = _IPX[family]
    by_daddr, masquerade = KINDS[kind]
    rules: list[str] = [CLEAR_CLASS]
    if masquerade == "always" or (masquerade == "cluster" and config.masquerade_all):
        rules.append(MARK_FOR_MASQUERADE)
    elif masquerade == "cluster" and config.cluster_cidr(family):
        rules.append(f"{ipx} saddr != {config.cluster_cidr(family)} {MARK_FOR_MASQUERADE}")
    affinity = AFFINITY_IPS if by_daddr else AFFINITY_NODEPORTS
    frontend = affinity.frontend(ipx)
    rules.append(affinity.steer(family))
    backends = sets.backends_map(kind, family, count, frontend, f"{ipx} daddr . th dport")
    rules.append(f"meta l4proto {{ tcp, udp, sctp }} dnat {ipx} to {frontend} . numgen random mod {count} "
                 f"map @{backends.name}")
    plural = "s" if count != 1 else ""
    name = lb_chain_name(kind, family, count)
    return Chain(name, tuple(rules), f"{kind} frontends with {count} endpoint slot{plural}", (backends,),
                 (Element(KIND_CLASSES[kind], class_id(kind, family, count), "goto " + name),))


@lru_cache(maxsize=1024)
def affinity_record_chain(family: int, timeout: int, names: AffinityNames = AFFINITY_IPS) -> Chain:
    """Records client . frontend -> endpoint with a Service's timeout; expires entries whose endpoint left."""
    ipx = _IPX[family]
    frontend, key = names.frontend(ipx, original=True), names.key(family, original=True)
    entries, valid = f"@{names.entries.name(family)}", f"@{names.valid.name(family)}"
    # where the connection went, read from conntrack's reply tuple rather than from the packet (`ip daddr
    # . th dport`): nft 1.0.6 lists a rule that reads `th dport` without the `meta l4proto` it needs for
    # `ct original proto-dst`, and then cannot load its own listing back (`nft list` | `nft -f`)
    endpoint = f"ct reply {ipx} saddr . ct reply proto-src"
    stored = endpoint if family == 4 else f"ct reply {ipx} saddr"  # IPv6: the port is the frontend's (see _HASH)
    rules = [CLEAR_CLASS]
    # the client's entry steered this connection to an endpoint that left: expire it, drop, the retry rebalances
    for proto in _PROTOCOLS:
        rules.append(f"meta l4proto {proto} {key} {entries} {frontend} . {endpoint} != {valid} "
                     f"update {entries} {{ {key} timeout 1s : {stored} }} drop")
    # only endpoints of this frontend are recorded (a NodePort key cannot tell a NodePort from another
    # frontend with the same port number)
    for proto in _PROTOCOLS:
        rules.append(f"meta l4proto {proto} {frontend} . {endpoint} {valid} "
                     f"update {entries} {{ {key} timeout {timeout}s : {stored} }}")
    kind = "" if names.by_daddr else "NodePorts, "
    name = f"{names.record_chain}-v{family}-{timeout}"
    return Chain(name, tuple(rules), f"sessionAffinity ClientIP, {kind}timeout {timeout}s",
                 entries=(Element(sets.AFFINITY_CLASSES.name, class_id(names.record_chain, family, timeout),
                                  "jump " + name),))
