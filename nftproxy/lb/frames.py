"""ARP and NDP frames for L2 announcement: building, parsing, and what an address holder does with one.

Pure functions over bytes, so every decision of the responder (answer, ignore, report a conflict)
is testable without sockets; `responder` is only the socket and thread shell around `react`.

Choices that matter on the wire, all checked against Linux's receive path (net/ipv4/arp.c,
net/ipv6/ndisc.c):

* A gratuitous ARP *reply* carries our MAC as target hardware address too: Linux treats a reply as
  gratuitous (and overrides an existing neighbour entry within its 1 s locktime) only when
  THA == SHA. The gratuitous *request* carries a zero THA (RFC 5227 announcement).
* Neighbor Advertisements use the target address itself as IPv6 source, as Linux does for its own
  addresses, so no link-local address is needed; hop limit 255 or receivers drop them.
* An unsolicited NA goes to ff02::1 with Override and without Solicited (a multicast NA with S set
  is dropped by Linux); a solicited one has S and O and goes unicast to the asker.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import AbstractSet, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ARP_REQUEST = 1
ARP_REPLY = 2
IPPROTO_ICMPV6 = 58
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
NA_FLAG_ROUTER = 0x80
NA_FLAG_SOLICITED = 0x40
NA_FLAG_OVERRIDE = 0x20
OPT_SOURCE_LLADDR = 1
OPT_TARGET_LLADDR = 2

BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
UNSPECIFIED6 = ipaddress.IPv6Address("::")
UNSPECIFIED4 = ipaddress.IPv4Address("0.0.0.0")

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_ND = struct.Struct("!BBHB3x16s")  # type, code, checksum, NA flags (0 in NS) + reserved, target


# --------------------------------------------------------------------------- #
# addresses
# --------------------------------------------------------------------------- #


def mac_text(mac: bytes) -> str:
    """aa:bb:cc:dd:ee:ff, as `ip link` prints it."""
    return ":".join(f"{b:02x}" for b in mac)


def mac_bytes(text: str) -> bytes:
    """The 6 bytes of aa:bb:cc:dd:ee:ff; ValueError otherwise."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def solicited_node_group(ip: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """ff02::1:ffXX:XXXX, where NS for `ip` are sent (RFC 4291 2.7.1)."""
    return ipaddress.IPv6Address(b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + ip.packed[13:])


def multicast_mac(group: ipaddress.IPv6Address) -> bytes:
    """33:33 + the group's last 4 bytes (RFC 2464 7)."""
    return b"\x33\x33" + group.packed[12:]


# --------------------------------------------------------------------------- #
# ARP
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class Arp:
    """An Ethernet/IPv4 ARP packet with the Ethernet source it came from."""

    op: int
    sender_mac: bytes
    sender_ip: ipaddress.IPv4Address
    target_mac: bytes
    target_ip: ipaddress.IPv4Address
    eth_src: bytes = ZERO_MAC


def build_arp(
    op: int,
    sender_mac: bytes,
    sender_ip: ipaddress.IPv4Address,
    target_mac: bytes,
    target_ip: ipaddress.IPv4Address,
    eth_dst: bytes,
) -> bytes:
    """A whole Ethernet frame carrying one ARP packet, sent from `sender_mac`."""
    arp = _ARP.pack(1, 0x0800, 6, 4, op, sender_mac, sender_ip.packed, target_mac, target_ip.packed)
    return _ETH.pack(eth_dst, sender_mac, ETH_P_ARP) + arp


def parse_arp(frame: bytes) -> Arp | None:
    """The ARP packet of an Ethernet frame, or None if it is not Ethernet/IPv4 ARP."""
    if len(frame) < _ETH.size + _ARP.size:
        return None
    _dst, src, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, _ETH.size)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
        return None
    return Arp(op, sha, ipaddress.IPv4Address(spa), tha, ipaddress.IPv4Address(tpa), src)


def gratuitous_arp(mac: bytes, ip: ipaddress.IPv4Address) -> list[bytes]:
    """Broadcast request (RFC 5227 announcement) and reply (THA = SHA, see module doc) for `ip` at `mac`."""
    return [
        build_arp(ARP_REQUEST, mac, ip, ZERO_MAC, ip, BROADCAST_MAC),
        build_arp(ARP_REPLY, mac, ip, mac, ip, BROADCAST_MAC),
    ]


def arp_reply(request: Arp, mac: bytes) -> bytes:
    """Our answer to `request`, unicast to the asker as a host does (a DAD probe gets target IP 0.0.0.0)."""
    return build_arp(ARP_REPLY, mac, request.target_ip, request.sender_mac, request.sender_ip, request.sender_mac)


# --------------------------------------------------------------------------- #
# NDP
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class Ndp:
    """A valid Neighbor Solicitation or Advertisement (RFC 4861 7.1 checks passed)."""

    type: int
    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    target: ipaddress.IPv6Address
    flags: int  # NA_FLAG_*; 0 for NS
    source_mac: bytes | None  # source link-layer address option
    target_mac: bytes | None  # target link-layer address option
    eth_src: bytes = ZERO_MAC


def icmpv6_checksum(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, message: bytes) -> int:
    """RFC 4443 2.3 checksum over the pseudo header and `message` (whose checksum field counts as is)."""
    data = src.packed + dst.packed + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6) + message
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _options(data: bytes) -> list[tuple[int, bytes]] | None:
    """(type, body) of each ND option, or None if one has length 0 or overruns (drop the packet)."""
    found: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        if offset + 2 > len(data):
            return None
        kind, units = data[offset], data[offset + 1]
        end = offset + units * 8
        if units == 0 or end > len(data):
            return None
        found.append((kind, data[offset + 2 : end]))
        offset = end
    return found


def parse_ndp(frame: bytes) -> Ndp | None:
    """The NS or NA of an Ethernet frame, or None if it is something else or fails validation."""
    if len(frame) < _ETH.size + _IPV6.size + _ND.size:
        return None
    _dst, eth_src, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_IPV6:
        return None
    vtc, length, next_header, hop_limit, src_b, dst_b = _IPV6.unpack_from(frame, _ETH.size)
    start = _ETH.size + _IPV6.size
    message = frame[start : start + length]
    if vtc >> 28 != 6 or next_header != IPPROTO_ICMPV6 or hop_limit != 255 or len(message) != length:
        return None
    if length < _ND.size:
        return None
    kind, code, _checksum, flags, target_b = _ND.unpack_from(message)
    if kind not in (ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT) or code != 0:
        return None
    src, dst = ipaddress.IPv6Address(src_b), ipaddress.IPv6Address(dst_b)
    target = ipaddress.IPv6Address(target_b)
    if target.is_multicast or icmpv6_checksum(src, dst, message) != 0:
        return None
    options = _options(message[_ND.size :])
    if options is None:
        return None
    lladdr = {kind_: body[:6] for kind_, body in options if kind_ in (OPT_SOURCE_LLADDR, OPT_TARGET_LLADDR)}
    source_mac = lladdr.get(OPT_SOURCE_LLADDR)
    if kind == ND_NEIGHBOR_SOLICIT:
        flags = 0
        if src == UNSPECIFIED6 and (source_mac is not None or dst != solicited_node_group(target)):
            return None
    elif dst.is_multicast and flags & NA_FLAG_SOLICITED:
        return None
    return Ndp(kind, src, dst, target, flags, source_mac, lladdr.get(OPT_TARGET_LLADDR), eth_src)


def neighbor_advertisement(
    mac: bytes,
    target: ipaddress.IPv6Address,
    dst: ipaddress.IPv6Address,
    dst_mac: bytes,
    flags: int,
) -> bytes:
    """A whole Ethernet frame: NA for `target` at `mac` with a target link-layer address option."""
    body = bytes([OPT_TARGET_LLADDR, 1]) + mac
    message = _ND.pack(ND_NEIGHBOR_ADVERT, 0, 0, flags, target.packed) + body
    checksum = icmpv6_checksum(target, dst, message)
    message = message[:2] + struct.pack("!H", checksum) + message[4:]
    header = _IPV6.pack(6 << 28, len(message), IPPROTO_ICMPV6, 255, target.packed, dst.packed)
    return _ETH.pack(dst_mac, mac, ETH_P_IPV6) + header + message


def unsolicited_advertisement(mac: bytes, ip: ipaddress.IPv6Address) -> bytes:
    """NA with Override to all nodes: neighbours holding `ip` switch to `mac` without asking."""
    return neighbor_advertisement(mac, ip, ALL_NODES, multicast_mac(ALL_NODES), NA_FLAG_OVERRIDE)


def announcements(mac: bytes, ip: IPAddress) -> list[bytes]:
    """The frames that tell a LAN `ip` is now at `mac`."""
    if isinstance(ip, ipaddress.IPv4Address):
        return gratuitous_arp(mac, ip)
    return [unsolicited_advertisement(mac, ip)]


# --------------------------------------------------------------------------- #
# what the holder of some addresses does with a received frame
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class Reaction:
    """What to do about one frame: send `reply` (answering for `answered`), report `conflict`."""

    reply: bytes | None = None
    answered: IPAddress | None = None
    conflict: tuple[IPAddress, bytes] | None = None  # (our address, the other MAC claiming it)


def _react_arp(arp: Arp, mac: bytes, held: AbstractSet[IPAddress]) -> Reaction | None:
    if arp.eth_src == mac or arp.sender_mac == mac:
        return None
    conflict = (arp.sender_ip, arp.sender_mac) if arp.sender_ip in held else None
    if arp.op == ARP_REQUEST and arp.target_ip in held and arp.sender_ip != arp.target_ip:
        return Reaction(arp_reply(arp, mac), arp.target_ip, conflict)
    return Reaction(conflict=conflict) if conflict else None


def _react_ndp(ndp: Ndp, mac: bytes, held: AbstractSet[IPAddress]) -> Reaction | None:
    if ndp.eth_src == mac or ndp.target not in held:
        return None
    if ndp.type == ND_NEIGHBOR_ADVERT:
        other = ndp.target_mac or ndp.eth_src
        return Reaction(conflict=(ndp.target, other)) if other != mac else None
    if ndp.src == UNSPECIFIED6:  # duplicate address detection: defend, as the owner does
        reply = unsolicited_advertisement(mac, ndp.target)
    else:
        dst_mac = ndp.source_mac or ndp.eth_src
        reply = neighbor_advertisement(mac, ndp.target, ndp.src, dst_mac, NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE)
    return Reaction(reply, ndp.target)


def react(frame: bytes, mac: bytes, held: AbstractSet[IPAddress]) -> Reaction | None:
    """What a host at `mac` holding `held` does with `frame`; None when it is none of its business.

    Answers ARP requests and Neighbor Solicitations for held addresses unless they come from `mac`
    itself. Reports a conflict when another MAC claims a held address: any ARP packet with it as
    sender (replies and gratuitous ARP alike, RFC 5227 2.4) or an NA for it. A gratuitous request
    from another MAC is not answered, only reported.
    """
    arp = parse_arp(frame)
    if arp is not None:
        return _react_arp(arp, mac, held)
    ndp = parse_ndp(frame)
    if ndp is not None:
        return _react_ndp(ndp, mac, held)
    return None
