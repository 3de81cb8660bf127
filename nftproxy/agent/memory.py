"""The garbage collector's part in a sync.

A rebuild creates millions of small objects, and full collections over them cost as much as the
work: the cycle collector stays off while a sync allocates, and what a rebuild keeps (it lives
long) is frozen out of future collections.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cycle collector off for the block, then back as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def settle_after_rebuild() -> None:
    """Keep what a rebuild built out of future collections, and give the pages it freed back."""
    gc.freeze()
    _return_free_memory()


def _return_free_memory() -> None:
    """Give freed pages back to the system (glibc; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
