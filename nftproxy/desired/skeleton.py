"""The static skeleton in rules/*.nft, and the names of what it declares."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

FAMILY = "inet"
TABLE = "nftproxy"
MASQUERADE_MARK = "0x00004000"
REJECT_VERDICT = "goto reject-chain"


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
