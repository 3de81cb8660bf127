"""Remove what kube-proxy left behind, so a node can switch to nftproxy: its nftables tables
(`ip kube-proxy`, `ip6 kube-proxy`) and its iptables chains (KUBE-SERVICES, KUBE-SVC-*, ...).

Chains that belong to the kubelet (KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT, KUBE-FIREWALL,
KUBE-MARK-DROP) stay. The iptables part is computed by a pure function from `iptables-save` output
into one `iptables-restore --noflush` script per family, which the kernel applies atomically per table.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

KUBELET_CHAINS = frozenset({"KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT", "KUBE-FIREWALL", "KUBE-MARK-DROP"})
_CHAIN_DECL = re.compile(r"^:(\S+) ")
_JUMP = re.compile(r"\s-[jg]\s+(KUBE-\S+)")


def is_kube_proxy_chain(name: str) -> bool:
    return name.startswith("KUBE-") and name not in KUBELET_CHAINS


def cleanup_script(saved: str) -> str:
    """An iptables-restore --noflush script removing kube-proxy's chains and every rule jumping to them."""
    out: list[str] = []
    table: str | None = None
    chains: list[str] = []
    deletes: list[str] = []
    for line in saved.splitlines():
        if line.startswith("*"):
            table, chains, deletes = line[1:].strip(), [], []
        elif line.startswith(":") and table:
            match = _CHAIN_DECL.match(line)
            if match and is_kube_proxy_chain(match.group(1)):
                chains.append(match.group(1))
        elif line.startswith("-A ") and table:
            owner = line.split()[1]
            target = _JUMP.search(line)
            if not is_kube_proxy_chain(owner) and target and is_kube_proxy_chain(target.group(1)):
                deletes.append("-D" + line[2:])
        elif line.strip() == "COMMIT" and table:
            if chains or deletes:
                out.append(f"*{table}")
                out += [f":{c} - [0:0]" for c in chains]  # declaring a chain with --noflush flushes it
                out += deletes
                out += [f"-X {c}" for c in chains]
                out.append("COMMIT")
            table = None
    return "\n".join(out) + ("\n" if out else "")


def _iptables_tools() -> list[tuple[str, str]]:
    """(save, restore) pairs on this machine: kube-proxy may have used the nft or the legacy backend."""
    pairs = []
    for prefix in ("iptables", "ip6tables"):
        variants = [v for v in ("-nft", "-legacy")
                    if shutil.which(f"{prefix}{v}-save") and shutil.which(f"{prefix}{v}-restore")]
        if not variants and shutil.which(f"{prefix}-save") and shutil.which(f"{prefix}-restore"):
            variants = [""]
        pairs += [(f"{prefix}{v}-save", f"{prefix}{v}-restore") for v in variants]
    return pairs


@dataclass(slots=True)
class Leftovers:
    """What a cleanup removed, and what it could not (each with the tool's own reason)."""

    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _hint(error: str) -> str:
    """A failure's remedy where one is known (iptables-legacy needs its lock file writable)."""
    if "xtables.lock" in error and "Read-only" in error:
        return (" (iptables-legacy locks /run/xtables.lock: mount the node's /run/xtables.lock into the "
                "container, as kube-proxy's DaemonSet does, or run this on the node itself)")
    return ""


def remove_kube_proxy_leftovers(delete_nft_table: Callable[[str, str], bool]) -> Leftovers:
    """Removes what is there; a step that fails is reported in `failed` and the others still run."""
    out = Leftovers()
    for family in ("ip", "ip6"):
        try:
            if delete_nft_table(family, "kube-proxy"):
                out.removed.append(f"nftables table {family} kube-proxy")
        except Exception as err:  # noqa: BLE001 - report and go on with the rest
            out.failed.append(f"nftables table {family} kube-proxy: {err}")
    for save, restore in _iptables_tools():
        tool = save.replace("-save", "")
        saved = subprocess.run([save], capture_output=True, text=True)
        if saved.returncode != 0:
            out.failed.append(f"{tool}: cannot read its rules ({save}: {saved.stderr.strip()})")
            continue
        script = cleanup_script(saved.stdout)
        if not script:
            continue
        chains = [line[3:] for line in script.splitlines() if line.startswith("-X ")]
        proc = subprocess.run([restore, "--noflush"], input=script, capture_output=True, text=True)
        if proc.returncode != 0:
            error = proc.stderr.strip()
            out.failed.append(f"{tool}: {len(chains)} KUBE-* chain(s) ({', '.join(chains[:5])}"
                              f"{', ...' if len(chains) > 5 else ''}) left in place: {error}{_hint(error)}")
            continue
        out.removed.append(f"{tool}: {len(chains)} KUBE-* chain(s)")
    return out
