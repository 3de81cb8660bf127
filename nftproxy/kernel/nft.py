"""Apply transactions to the real kernel.

Small transactions (the steady state: a few element operations) go through libnftables in-process,
a few milliseconds each. Large ones (a full rebuild) go to a child `nft -f -`: libnftables keeps the
memory it used to parse a big script (~790 MB for 30,000 Services x 10 endpoints), a child gives it
back when it exits.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from ..desired.skeleton import FAMILY, TABLE
from ..transaction.transaction import Transaction
from . import KernelError

CHILD_THRESHOLD_BYTES = 512 * 1024


class NftablesKernel:
    def __init__(self, child_threshold_bytes: int = CHILD_THRESHOLD_BYTES, netns: str | None = None) -> None:
        """`netns`: run every transaction as `ip netns exec NETNS nft -f -` (tests driving a namespace)."""
        self.child_threshold_bytes = child_threshold_bytes
        self.netns = netns
        self._lib: Any = None
        self.last_script_bytes = 0

    def apply(self, tx: Transaction) -> None:
        if tx.is_empty():
            return
        self.run_script(tx.render())

    def run_script(self, script: str) -> None:
        self.last_script_bytes = len(script)
        if self.netns is not None or len(script) >= self.child_threshold_bytes:
            self._run_child(script)
        else:
            self._run_library(script)

    def delete_table(self) -> None:
        """Remove nftproxy's table and nothing else (add first, so a missing table is no error)."""
        self.run_script(f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")

    def delete_foreign_table(self, family: str, name: str) -> bool:
        """Delete another program's table if it exists (cleanup only, never in the sync path)."""
        proc = subprocess.run(["nft", "list", "tables", family], capture_output=True, text=True)
        if f"table {family} {name}" not in proc.stdout.splitlines():
            return False
        self.run_script(f"delete table {family} {name}\n")
        return True

    def _library(self) -> Any:
        if self._lib is None:
            try:
                import nftables  # pip-nftables; needs Debian's libnftables1
            except ImportError as err:  # pragma: no cover - depends on the machine
                raise KernelError(f"libnftables binding not importable ({err}); install pip-nftables and libnftables1") from err
            try:
                lib = nftables.Nftables()
            except OSError as err:
                raise KernelError(f"cannot load libnftables ({err}); install Debian's libnftables1") from err
            self._lib = lib
        return self._lib

    def _run_library(self, script: str) -> None:
        rc, _out, err = self._library().cmd(script)
        if rc != 0:
            raise KernelError(_explain(err, script))

    def _run_child(self, script: str) -> None:
        nft = shutil.which("nft")
        if nft is None:
            raise KernelError("the nft command is not installed (Debian package nftables)")
        argv = [nft, "-f", "-"]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        proc = subprocess.run(argv, input=script, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelError(_explain(proc.stderr, script))
        if self.netns is None and self._lib is None:
            self._library()  # load libnftables now, so the first small change does not pay for it


def _explain(err: str, script: str) -> str:
    lines = script.count("\n")
    return f"nftables transaction of {lines} lines refused: {err.strip()[:2000]}"
