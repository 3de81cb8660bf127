"""The static skeleton in rules/*.nft, and the names of what it declares."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

FAMILY = "inet"
TABLE = "nftproxy"
MASQUERADE_MARK = "0x00004000"

# A frontend's map value is a class: a tc handle (major:minor, hex) that @classes (prerouting, output)
# or @affinity-classes (postrouting) turns into a verdict, carried there in `meta priority` within one
# rule. Major: family, kind, value bits 16-23; minor: value bits 0-15 (endpoint slots, timeout).
# Adding a goto/jump element makes the kernel re-validate every verdict map element of the table, so
# per-Service elements are data and only these few class elements are verdicts.
CLASS_KINDS = {"cluster": 0x1, "external": 0x2, "local": 0x3, "short": 0x4, "nodeport": 0x5, "nplocal": 0x6,
               "npshort": 0x7, "affinity-record": 0x8, "affinity-nodeport-record": 0x9,
               "external-local": 0xa, "nodeport-local": 0xb, "drop": 0xf}


def class_id(kind: str, family: int, value: int = 0) -> str:
    """e.g. class_id("cluster", 4, 3) == "4100:3" (lb-cluster-v4-3); static ones are in rules/nftproxy.nft."""
    if not 0 <= value < 1 << 24:
        raise ValueError(f"class value {value} out of range")
    return f"{family << 12 | CLASS_KINDS[kind] << 8 | value >> 16:x}:{value & 0xffff:x}"


def rules_dir() -> Path:
    """rules/ as installed inside the package, or at the top of a source checkout."""
    packaged = resources.files("nftproxy").joinpath("rules")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "rules"


@cache
def skeleton_text() -> str:
    """The skeleton files, in name order, as one nft script."""
    files = sorted(rules_dir().glob("*.nft"))
    if not files:
        raise FileNotFoundError(f"no nftables skeleton (*.nft) in {rules_dir()}")
    return "\n".join(f.read_text() for f in files)


def set_name(base: str, family: int) -> str:
    """e.g. set_name("service-ips", 4) == "service-ips-v4"."""
    return f"{base}-v{family}"
