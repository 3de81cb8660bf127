"""IP address and CIDR parsing, the way Kubernetes reads them.

Older API servers accepted IPv4 addresses with leading zeros ("172.30.0.041"); upstream parses those
"sloppily" as decimal (netutils.ParseIPSloppy), so we do the same instead of rejecting the Service.
Addresses are normalised to Python's canonical text so they can serve as nftables keys.

Almost every address the API serves is already canonical: `ip_text` recognises those with two libc
calls (inet_pton, then inet_ntop gives the text back unchanged) and keeps the `ipaddress` parse, with
its leading-zero reading and error messages, for everything else. At 300,000 endpoint addresses that
is the difference between ~1.5 s and ~0.1 s of a cold start.
"""

from __future__ import annotations

import ipaddress
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressError(ValueError):
    """An address or CIDR that Kubernetes would not accept."""


def _sloppy_ipv4(text: str) -> ipaddress.IPv4Address | None:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and p.isascii() and 0 < len(p) <= 3 for p in parts):
        return None
    octets = [int(p, 10) for p in parts]
    if any(o > 255 for o in octets):
        return None
    return ipaddress.IPv4Address(".".join(str(o) for o in octets))


def parse_ip(text: object) -> IPAddress:
    """Parse one IP address; IPv4 may carry leading zeros (read as decimal)."""
    if not isinstance(text, str) or not text:
        raise AddressError(f"not an IP address: {text!r}")
    text = text.strip()
    if ":" in text:
        try:
            addr = ipaddress.IPv6Address(text)
        except ValueError:
            raise AddressError(f"not an IP address: {text!r}") from None
        if addr.scope_id is not None:
            raise AddressError(f"IPv6 address with a zone is not allowed: {text!r}")
        mapped = addr.ipv4_mapped
        return mapped if mapped is not None else addr
    addr4 = _sloppy_ipv4(text)
    if addr4 is None:
        raise AddressError(f"not an IP address: {text!r}")
    return addr4


def ip_text(text: object) -> str:
    """`str(parse_ip(text))`, without building an address object when `text` is canonical already.

    libc's text form of an IPv6 address is RFC 5952's, as Python's is, except that it writes an embedded
    IPv4 address in dotted form: text holding a dot therefore always takes the full parse.
    """
    if type(text) is str:
        try:
            if ":" in text:
                if "." not in text and inet_ntop(AF_INET6, inet_pton(AF_INET6, text)) == text:
                    return text
            elif inet_ntop(AF_INET, inet_pton(AF_INET, text)) == text:
                return text
        except (OSError, ValueError):  # ValueError: an embedded NUL
            pass  # not canonical (or not an address): the full parse decides, with its own message
    return str(parse_ip(text))


def parse_cidr(text: object) -> IPNetwork:
    """Parse a CIDR; host bits must be zero after sloppy IPv4 reading, as for --cluster-cidr."""
    if not isinstance(text, str) or "/" not in text:
        raise AddressError(f"not a CIDR: {text!r}")
    addr_text, _, prefix_text = text.strip().partition("/")
    addr = parse_ip(addr_text)
    if not prefix_text.isdigit():
        raise AddressError(f"not a CIDR: {text!r}")
    try:
        return ipaddress.ip_network(f"{addr}/{int(prefix_text)}", strict=False)
    except ValueError:
        raise AddressError(f"not a CIDR: {text!r}") from None


def family_of(addr: IPAddress | IPNetwork) -> int:
    """4 or 6."""
    return addr.version


def family_of_text(text: str) -> int:
    """4 or 6, for an address or CIDR as the parsed objects and the configuration hold it (valid text)."""
    return 6 if ":" in text else 4
