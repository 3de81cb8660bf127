"""`nftproxy status`: what the kernel holds, and how it differs from what the agent committed.

`read_table` takes one consistent snapshot of the table over netlink (every set's keys; comments and
values only where a summary needs them), retried while the ruleset generation moves. `summary` and
`drift` are pure over it. The agent computes drift on demand when asked (`/status`), never in a sync.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .layout import AFFINITY_DISPATCH, DISPATCH, LOCAL_DISPATCH, TABLE, Codec, lb_chain
from .netlink import SET_ANONYMOUS, SET_INTERVAL, SET_TIMEOUT, NetlinkReader

# Sets whose elements no sync writes: filled from the packet path (sessionAffinity entries).
DYNAMIC = SET_TIMEOUT
# Verdict maps whose elements come with the dynamic chains (the rest are the skeleton's own).
DISPATCH_MAPS = (DISPATCH, LOCAL_DISPATCH, AFFINITY_DISPATCH)
_FRONTENDS = ("service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports")
_CONFIG = ("cluster-cidrs", "service-cidrs", "nodeport-cidrs")


@dataclass(slots=True)
class Snapshot:
    generation: int
    keys: dict[str, list[str]]  # set -> element keys (dynamic sets left out)
    comments: dict[str, list[str]]  # frontend sets -> element comments
    values: dict[str, list[str]]  # dispatch maps -> element values, in `keys` order
    chains: list[str] = field(default_factory=list)
    endpoints: set[bytes] = field(default_factory=set)  # backends maps' values, raw: address . port
    counts: dict[str, int] = field(default_factory=dict)  # big sets read without their keys
    complete: bool = True  # every set read (else `elements` is not counted)


class SnapshotBusy(RuntimeError):
    """The ruleset kept changing while it was read."""


def read_table(reader: NetlinkReader, table: str = TABLE, attempts: int = 5, keys: bool = True) -> Snapshot:
    """Every non-dynamic set of the table, read between two equal generations. Without `keys` the big
    sets are only counted (a summary needs no drift): a third less work at 10,000 Services."""
    for _ in range(attempts):
        generation = reader.generation()
        try:
            snap = _read(reader, table, generation, keys)
        except InterruptedError:
            continue
        if reader.generation() == generation:
            return snap
    raise SnapshotBusy(f"the ruleset changed during {attempts} reads in a row")


def _read(reader: NetlinkReader, table: str, generation: int, with_keys: bool) -> Snapshot:
    snap = Snapshot(generation, {}, {}, {}, reader.chains(table))
    for name, info in reader.sets(table).items():
        if info.flags & (DYNAMIC | SET_ANONYMOUS):  # filled by packets; or a rule's own `{ tcp, udp }`
            continue
        base = name.rsplit("-v", 1)[0]
        codec = Codec.of(info)
        if base in _FRONTENDS or info.flags & SET_INTERVAL or name in DISPATCH_MAPS:
            elements = reader.elements(table, name, comments=base in _FRONTENDS)
            if base in _CONFIG:
                snap.keys[name] = [text for text, _ in codec.intervals(elements)]
            else:
                snap.keys[name] = codec.keys(elements)
            if base in _FRONTENDS:
                snap.comments[name] = [el.comment or "" for el in elements]
            if name in DISPATCH_MAPS:
                snap.values[name] = [codec.value(el) or "" for el in elements]
            continue
        # the big ones (backends, hairpin, affinity sets): keys by position, endpoints as raw bytes; a
        # summary alone reads only the backends maps of them
        if not with_keys and not name.startswith("backends-"):
            snap.complete = False
            continue
        keys, values = reader.plain_elements(table, name, info.key_len)
        snap.counts[name] = len(keys)
        if with_keys:
            snap.keys[name] = codec.raw_keys(keys)
        if name.startswith("backends-"):
            snap.endpoints.update(v for v in values if v is not None)
    return snap


# --- what the kernel says, without the agent ----------------------------------------------------------
def summary(snap: Snapshot) -> dict[str, Any]:
    """Services, frontends and endpoints as the kernel holds them, and the configuration's CIDRs."""
    services: set[str] = set()
    frontends: dict[str, int] = {}
    for name, comments in snap.comments.items():
        services.update(c.rsplit(":", 1)[0] for c in comments if c)
        frontends[name] = len(comments)
    without = {c.rsplit(":", 1)[0] for name, comments in snap.comments.items() if name.startswith("no-endpoint")
               for c in comments if c}
    return {
        "generation": snap.generation,
        "services": len(services),
        "services_without_endpoints": len(without),
        "frontends": dict(sorted(frontends.items())),
        "endpoints": len(snap.endpoints),
        "lb_chains": sorted(c for c in snap.chains if lb_chain("goto " + c) is not None),
        "config": {base: [k for f in (4, 6) for k in snap.keys.get(f"{base}-v{f}", [])] for base in _CONFIG},
        "elements": sum({**{name: len(keys) for name, keys in snap.keys.items()}, **snap.counts}.values())
        if snap.complete else None,
    }


# --- drift: the kernel against what the agent committed ----------------------------------------------------
@dataclass(frozen=True, slots=True)
class Drift:
    unexpected: dict[str, list[str]]  # set -> keys the kernel holds that the agent does not claim
    missing: dict[str, list[str]]  # set -> keys the agent committed that the kernel lacks
    chains_unexpected: list[str]
    chains_missing: list[str]

    @property
    def clean(self) -> bool:
        return not (self.unexpected or self.missing or self.chains_unexpected or self.chains_missing)

    def as_dict(self, limit: int = 20) -> dict[str, Any]:
        """Counts, and the first `limit` keys of each set (a drifted node may differ in thousands)."""
        def cut(d: dict[str, list[str]]) -> dict[str, Any]:
            return {name: {"count": len(keys), "keys": sorted(keys)[:limit]} for name, keys in sorted(d.items())}
        return {"clean": self.clean, "unexpected": cut(self.unexpected), "missing": cut(self.missing),
                "chains_unexpected": self.chains_unexpected, "chains_missing": self.chains_missing}


def drift(snap: Snapshot, claims: Mapping[str, Iterable[str]], chains: Iterable[str],
          chain_entries: Mapping[str, Iterable[str]]) -> Drift:
    """Compare keys set by set. `claims`: set -> keys the agent committed; `chains`: the dynamic chains
    it committed; `chain_entries`: dispatch map -> keys those chains own there. Dispatch map keys whose
    verdict names no dynamic chain are the skeleton's and always expected."""
    dynamic = {c for c in snap.chains if _is_dynamic(c)}
    expected_chains = set(chains)
    unexpected: dict[str, list[str]] = {}
    missing: dict[str, list[str]] = {}
    for name, keys in snap.keys.items():
        want = set(claims.get(name, ()))
        if name in DISPATCH_MAPS:
            values = snap.values.get(name, [])
            want |= set(chain_entries.get(name, ()))
            want |= {k for k, v in zip(keys, values) if not _is_dynamic(v.split(" ")[-1])}
        have = set(keys)
        _record(name, have - want, want - have, unexpected, missing)
    for name, claimed in claims.items():
        if name not in snap.keys and claimed:
            missing[name] = sorted(claimed)
    return Drift(unexpected, missing, sorted(dynamic - expected_chains), sorted(expected_chains - dynamic))


def _is_dynamic(chain: str) -> bool:
    return lb_chain("goto " + chain) is not None or "-record-v" in chain


def _record(name: str, extra: set[str], lacking: set[str], unexpected: dict[str, list[str]],
            missing: dict[str, list[str]]) -> None:
    """Keys that differ only in how they are written (`10.0.0.1/32` and `10.0.0.1`) are the same."""
    if extra and lacking:
        canon_extra = {_canonical(k): k for k in extra}
        canon_lacking = {_canonical(k): k for k in lacking}
        same = canon_extra.keys() & canon_lacking.keys()
        extra = {canon_extra[c] for c in canon_extra.keys() - same}
        lacking = {canon_lacking[c] for c in canon_lacking.keys() - same}
    if extra:
        unexpected[name] = sorted(extra)
    if lacking:
        missing[name] = sorted(lacking)


def _canonical(key: str) -> str:
    from ipaddress import ip_network

    out = []
    for part in key.split(" . "):
        try:
            out.append(str(ip_network(part, strict=False)))
        except ValueError:
            out.append(part)
    return " . ".join(out)
