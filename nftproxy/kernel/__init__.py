"""Kernel: where transactions are applied (libnftables, a child nft, or an in-memory fake)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from ..transaction.transaction import Transaction


class KernelError(RuntimeError):
    """The kernel refused a transaction; it still holds what it held before."""


class Kernel(Protocol):
    def apply(self, tx: Transaction) -> None: ...

    def delete_table(self) -> None: ...


@runtime_checkable
class StreamingKernel(Kernel, Protocol):
    """A kernel that takes a rebuild's script while it is being produced (see transaction/block.py)."""

    def apply_stream(self, chunks: Iterable[str]) -> None: ...
