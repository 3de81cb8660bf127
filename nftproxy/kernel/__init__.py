"""Kernel: where transactions are applied (libnftables, a child nft, or an in-memory fake)."""

from __future__ import annotations

from typing import Protocol

from ..transaction.transaction import Transaction


class KernelError(RuntimeError):
    """The kernel refused a transaction; it still holds what it held before."""


class Kernel(Protocol):
    def apply(self, tx: Transaction) -> None: ...

    def delete_table(self) -> None: ...
