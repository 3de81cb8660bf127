"""The demo's exit statuses, and its signals: SIGTERM and SIGHUP tear down as Ctrl-C does, and none of
them interrupts the harness half-way through creating something."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_OK, EXIT_TRAFFIC, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 130


class Stopped(Exception):
    """SIGTERM or SIGHUP arrived: tear down as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM until the block is done, so the harness is never interrupted half-way through
    creating something it has not recorded yet (its own cleanup could not find it)."""
    got: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _frame: got.append(signum)) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if got:
        if got[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(got[0])
