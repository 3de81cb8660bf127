"""Kernel: where transactions are applied (libnftables, a child nft, or an in-memory fake)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..transaction.transaction import Transaction


class KernelError(RuntimeError):
    """The kernel refused a transaction; it still holds what it held before."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What a kernel did with a transaction it accepted (a refused one raises KernelError)."""

    script_bytes: int = 0  # the nft script's size, 0 where no script was written (the in-memory fake)


class Kernel(Protocol):
    def apply(self, tx: Transaction) -> Applied: ...

    def delete_table(self) -> None: ...


@runtime_checkable
class StreamingKernel(Kernel, Protocol):
    """A kernel that takes a rebuild's script while it is being produced (see transaction/block.py)."""

    def apply_stream(self, chunks: Iterable[str]) -> Applied: ...
