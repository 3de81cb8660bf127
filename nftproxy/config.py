"""Proxy configuration as one immutable value, parsed from flags (and later a config file).

Parsing is pure and raises ConfigError naming the flag or field and what it accepts, so a typo stops
startup with a message instead of programming a half-right ruleset.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from .objects.addresses import AddressError, IPNetwork, family_of_text, parse_cidr


class ConfigError(ValueError):
    """A flag or config-file field that cannot be used."""


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    node_name: str
    cluster_cidrs: tuple[str, ...] = ()  # at most one per family
    service_cidrs: tuple[str, ...] = ()  # at most one per family
    nodeport_cidrs: tuple[str, ...] = ()  # any number; none of a family = every local address of it
    masquerade_all: bool = False

    def cluster_cidr(self, family: int) -> str | None:
        return next((c for c in self.cluster_cidrs if family_of_text(c) == family), None)

    def service_cidrs_of(self, family: int) -> tuple[str, ...]:
        return tuple(c for c in self.service_cidrs if family_of_text(c) == family)

    def nodeport_cidrs_of(self, family: int) -> tuple[str, ...]:
        mine = tuple(c for c in self.nodeport_cidrs if family_of_text(c) == family)
        return mine or (("0.0.0.0/0",) if family == 4 else ("::/0",))


def parse_cidr_list(flag: str, text: str | list[str] | None, one_per_family: bool) -> tuple[str, ...]:
    """Comma-separated CIDRs (or a list from a config file), normalised, checked per family."""
    if text is None or text == "":
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    nets: list[IPNetwork] = []
    for item in items:
        try:
            nets.append(parse_cidr(item.strip() if isinstance(item, str) else item))
        except AddressError as err:
            raise ConfigError(f"{flag}: {err} (expected CIDRs such as 10.244.0.0/16,fd00:10:244::/56)") from None
    if one_per_family:
        for fam in (4, 6):
            same = [str(n) for n in nets if n.version == fam]
            if len(same) > 1:
                raise ConfigError(f"{flag}: at most one IPv{fam} CIDR, got {', '.join(same)}")
    return tuple(dict.fromkeys(str(n) for n in nets))


def default_node_name() -> str:
    return socket.gethostname().lower()
