"""MetalLB's BGP objects, parsed unchanged into plain immutable data: `metallb.io/v1beta2` BGPPeer,
`metallb.io/v1beta1` BGPAdvertisement and BFDProfile.

As for the L2 objects (`parse`), errors name the object and the field, and fields nftproxy does not act
on are listed in `parse.KNOWN_SPEC_FIELDS` so the view reports them once. The meaning of each field is
MetalLB's; where nftproxy's default differs (graceful restart) the README says so.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..configfile import ConfigError, parse_duration
from ..objects.model import ObjectRef
from ..objects.parse import object_ref
from .model import AddressPool, Family, LabelSelector, any_matches, covers_pool
from .parse import _Fields

PEER_KIND = "BGPPeer"
BGP_ADVERTISEMENT_KIND = "BGPAdvertisement"
BFD_PROFILE_KIND = "BFDProfile"
MAX_ASN = 2**32 - 1
DEFAULT_HOLD = 90  # seconds: MetalLB's and RFC 4271's suggestion
DynamicASN = Literal["internal", "external"]


@dataclass(frozen=True, slots=True)
class Community:
    """A BGP community: standard (two 16-bit halves) or large (three 32-bit parts)."""

    values: tuple[int, ...]

    @property
    def large(self) -> bool:
        return len(self.values) == 3

    def __str__(self) -> str:
        text = ":".join(str(v) for v in self.values)
        return f"large:{text}" if self.large else text


def parse_community(text: str) -> Community:
    """MetalLB's spellings: "65000:100" and "large:65000:1:2"; ValueError otherwise."""
    body, large = (text[6:], True) if text.startswith("large:") else (text, False)
    parts = body.split(":")
    if len(parts) != (3 if large else 2) or not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is neither a community (65000:100) nor a large community (large:65000:1:2); "
                         "Community aliases are not supported")
    values = tuple(int(p) for p in parts)
    limit = MAX_ASN if large else 0xFFFF
    if any(v > limit for v in values):
        raise ValueError(f"{text!r}: each part must be at most {limit}")
    return Community(values)


@dataclass(frozen=True, slots=True)
class BGPPeer:
    """metallb.io/v1beta2 BGPPeer: one BGP session from every node its nodeSelectors pick."""

    ref: ObjectRef
    my_asn: int
    address: str
    peer_asn: int | None = None  # None with dynamic_asn
    dynamic_asn: DynamicASN | None = None
    port: int = 179
    source_address: str | None = None
    hold_time: int = DEFAULT_HOLD  # seconds, 0 or at least 3 (RFC 4271)
    keepalive_time: int | None = None  # None: a third of the hold time
    connect_time: int | None = None
    router_id: str | None = None
    node_selectors: tuple[LabelSelector, ...] = ()
    password: str | None = None
    password_secret: ObjectRef | None = None
    bfd_profile: str | None = None
    graceful_restart: bool = True  # enableGracefulRestart; nftproxy's default is on (see the README)
    ebgp_multihop: bool = False

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def family(self) -> Family:
        return 4 if ipaddress.ip_address(self.address).version == 4 else 6

    @property
    def internal(self) -> bool:
        """iBGP: both ends in one AS (LOCAL_PREF only travels on iBGP sessions)."""
        if self.dynamic_asn is not None:
            return self.dynamic_asn == "internal"
        return self.peer_asn == self.my_asn

    def allows_node(self, node_labels: Mapping[str, str]) -> bool:
        return any_matches(self.node_selectors, node_labels)


@dataclass(frozen=True, slots=True)
class BGPAdvertisement:
    """metallb.io/v1beta1 BGPAdvertisement: which pools are advertised, how, to which peers, from where."""

    ref: ObjectRef
    aggregation_length: int = 32
    aggregation_length_v6: int = 128
    local_pref: int | None = None
    communities: tuple[Community, ...] = ()
    pools: tuple[str, ...] = ()
    pool_selectors: tuple[LabelSelector, ...] = ()
    node_selectors: tuple[LabelSelector, ...] = ()
    peers: tuple[str, ...] = ()  # BGPPeer names; none: every peer

    def covers(self, pool: AddressPool) -> bool:
        return covers_pool(self.pools, self.pool_selectors, pool)

    def allows_node(self, node_labels: Mapping[str, str]) -> bool:
        return any_matches(self.node_selectors, node_labels)

    def allows_peer(self, peer: str) -> bool:
        return not self.peers or peer in self.peers

    def length(self, family: Family) -> int:
        return self.aggregation_length if family == 4 else self.aggregation_length_v6


@dataclass(frozen=True, slots=True)
class BFDProfile:
    """metallb.io/v1beta1 BFDProfile (intervals in milliseconds; MetalLB's defaults)."""

    ref: ObjectRef
    receive_interval: int = 300
    transmit_interval: int = 300
    detect_multiplier: int = 3
    passive: bool = False

    @property
    def name(self) -> str:
        return self.ref.name


class _BGPFields(_Fields):
    def integer(self, value: Any, field: str, low: int, high: int, default: int | None = None) -> int | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(field, f"must be an integer from {low} to {high}, got {value!r}")
        return value

    def seconds(self, value: Any, field: str) -> int | None:
        """A metav1.Duration ("90s", "1m30s") as whole seconds (BGP timers are whole seconds)."""
        if value is None:
            return None
        try:
            return math.ceil(parse_duration(field, value))
        except ConfigError as err:
            raise self.fail(field, str(err).split(": ", 1)[-1]) from None

    def address(self, value: Any, field: str) -> str | None:
        return None if value in (None, "") else self.ip(value, field)


def _opened(kind: str, obj: Mapping[str, Any]) -> tuple[ObjectRef, _BGPFields, Mapping[str, Any]]:
    ref = object_ref(obj)
    f = _BGPFields(kind, ref)
    if not ref.name:
        raise f.fail("metadata.name", "missing")
    return ref, f, f.mapping(obj.get("spec"), "spec")


def parse_bgp_peer(obj: Mapping[str, Any]) -> BGPPeer:
    ref, f, spec = _opened(PEER_KIND, obj)
    my_asn = f.integer(spec.get("myASN"), "spec.myASN", 1, MAX_ASN)
    if my_asn is None:
        raise f.fail("spec.myASN", "required")
    peer_asn = f.integer(spec.get("peerASN") or None, "spec.peerASN", 1, MAX_ASN)
    dynamic = spec.get("dynamicASN") or None
    if dynamic not in (None, "internal", "external"):
        raise f.fail("spec.dynamicASN", f"must be internal or external, got {dynamic!r}")
    if (peer_asn is None) == (dynamic is None):
        raise f.fail("spec.peerASN", "exactly one of peerASN and dynamicASN must be given")
    address = f.address(spec.get("peerAddress"), "spec.peerAddress")
    if address is None:
        raise f.fail("spec.peerAddress", "required (unnumbered sessions over spec.interface are not supported)")
    hold = f.seconds(spec.get("holdTime"), "spec.holdTime")
    keepalive = f.seconds(spec.get("keepaliveTime"), "spec.keepaliveTime")
    if hold is not None and hold != 0 and hold < 3:
        raise f.fail("spec.holdTime", f"must be 0 or at least 3s (RFC 4271), got {spec.get('holdTime')!r}")
    hold = DEFAULT_HOLD if hold is None else hold
    if keepalive is not None and hold and keepalive > hold:
        raise f.fail("spec.keepaliveTime", "must not be longer than holdTime")
    source = f.address(spec.get("sourceAddress"), "spec.sourceAddress")
    if source is not None and ipaddress.ip_address(source).version != ipaddress.ip_address(address).version:
        raise f.fail("spec.sourceAddress", f"{source} is not of peerAddress {address}'s family")
    router_id = spec.get("routerID") or None
    if router_id is not None:
        try:
            ipaddress.IPv4Address(router_id)
        except ValueError:
            raise f.fail("spec.routerID", f"must be an IPv4 address, got {router_id!r}") from None
    password = spec.get("password") or None
    if password is not None:
        _check_password(f, password, "spec.password")
    secret = f.mapping(spec.get("passwordSecret"), "spec.passwordSecret")
    secret_ref = None
    if secret.get("name"):
        if password is not None:
            raise f.fail("spec.passwordSecret", "give password or passwordSecret, not both")
        secret_ref = ObjectRef(str(secret.get("namespace") or ref.namespace), str(secret["name"]))
    graceful = spec.get("enableGracefulRestart")
    return BGPPeer(
        ref=ref,
        my_asn=my_asn,
        address=address,
        peer_asn=peer_asn,
        dynamic_asn=dynamic,
        port=f.integer(spec.get("peerPort"), "spec.peerPort", 1, 65535, 179) or 179,
        source_address=source,
        hold_time=hold,
        keepalive_time=keepalive,
        connect_time=f.integer(f.seconds(spec.get("connectTime"), "spec.connectTime"), "spec.connectTime",
                               1, 65535),
        router_id=router_id,
        node_selectors=f.selectors(spec.get("nodeSelectors"), "spec.nodeSelectors"),
        password=password,
        password_secret=secret_ref,
        bfd_profile=spec.get("bfdProfile") or None,
        graceful_restart=f.boolean(graceful, "spec.enableGracefulRestart", True),
        ebgp_multihop=f.boolean(spec.get("ebgpMultiHop"), "spec.ebgpMultiHop", False),
    )


def _check_password(f: _Fields, password: Any, field: str) -> None:
    if not isinstance(password, str) or not 0 < len(password) <= 80 or any(
            c in password for c in '"\\\n\r\0'):
        raise f.fail(field, "must be 1-80 characters without quotes, backslashes or line breaks (TCP MD5 key)")


def check_password(peer: ObjectRef, password: str) -> None:
    """A password read from a Secret, held to the same rules as spec.password (InvalidObject otherwise)."""
    _check_password(_BGPFields(PEER_KIND, peer), password, "spec.passwordSecret")


def parse_bgp_advertisement(obj: Mapping[str, Any]) -> BGPAdvertisement:
    ref, f, spec = _opened(BGP_ADVERTISEMENT_KIND, obj)
    communities = []
    for i, text in enumerate(f.strings(spec.get("communities"), "spec.communities")):
        try:
            communities.append(parse_community(text.strip()))
        except ValueError as err:
            raise f.fail(f"spec.communities[{i}]", str(err)) from None
    return BGPAdvertisement(
        ref=ref,
        aggregation_length=f.integer(spec.get("aggregationLength"), "spec.aggregationLength", 1, 32, 32) or 32,
        aggregation_length_v6=f.integer(spec.get("aggregationLengthV6"), "spec.aggregationLengthV6", 1, 128,
                                        128) or 128,
        local_pref=f.integer(spec.get("localPref") or None, "spec.localPref", 0, MAX_ASN),
        communities=tuple(sorted(set(communities), key=lambda c: (c.large, c.values))),
        pools=f.strings(spec.get("ipAddressPools"), "spec.ipAddressPools"),
        pool_selectors=f.selectors(spec.get("ipAddressPoolSelectors"), "spec.ipAddressPoolSelectors"),
        node_selectors=f.selectors(spec.get("nodeSelectors"), "spec.nodeSelectors"),
        peers=f.strings(spec.get("peers"), "spec.peers"),
    )


def parse_bfd_profile(obj: Mapping[str, Any]) -> BFDProfile:
    ref, f, spec = _opened(BFD_PROFILE_KIND, obj)
    return BFDProfile(
        ref=ref,
        receive_interval=f.integer(spec.get("receiveInterval"), "spec.receiveInterval", 10, 60000, 300) or 300,
        transmit_interval=f.integer(spec.get("transmitInterval"), "spec.transmitInterval", 10, 60000, 300) or 300,
        detect_multiplier=f.integer(spec.get("detectMultiplier"), "spec.detectMultiplier", 2, 255, 3) or 3,
        passive=f.boolean(spec.get("passiveMode"), "spec.passiveMode", False),
    )

