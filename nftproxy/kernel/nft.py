"""Apply transactions to the real kernel.

Small transactions (the steady state: a few element operations) go through libnftables in-process,
a few milliseconds each. Large ones (a full rebuild) go to a child `nft -f`: libnftables keeps the
memory it used to parse a big script (~790 MB for 30,000 Services x 10 endpoints), a child gives it
back when it exits.

A rebuild is streamed to its child while it is produced (`apply_stream`), so nft parses while Python
translates. The child reads `/proc/self/fd/0`, not `-`: nft 1.0.6 reads `-` and `/dev/stdin` whole
before it starts parsing, a path it reads as it comes. The script must be one that nft refuses when it
ends early (see transaction/block.py): then a writer that dies half way leaves the kernel as it was.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from typing import Any

from ..desired.skeleton import FAMILY, TABLE
from ..transaction.transaction import Transaction
from . import Applied, KernelError

CHILD_THRESHOLD_BYTES = 512 * 1024
STREAM_WRITE_BYTES = 256 * 1024  # chunks are gathered into writes of about this size
STREAM_PIPE_BYTES = 1 << 20  # the pipe to a streaming child, so Python can run ahead of nft's parser
_F_SETPIPE_SZ = 1031


class NftablesKernel:
    def __init__(self, child_threshold_bytes: int = CHILD_THRESHOLD_BYTES, netns: str | None = None) -> None:
        """`netns`: run every transaction as `ip netns exec NETNS nft -f -` (tests driving a namespace)."""
        self.child_threshold_bytes = child_threshold_bytes
        self.netns = netns
        self._lib: Any = None

    def apply(self, tx: Transaction) -> Applied:
        if tx.is_empty():
            return Applied()
        return self.run_script(tx.render())

    def run_script(self, script: str) -> Applied:
        if self.netns is not None or len(script) >= self.child_threshold_bytes:
            self._run_child(script)
        else:
            self._run_library(script)
        return Applied(len(script))

    def apply_stream(self, chunks: Iterable[str]) -> Applied:
        """Feed a script to a child nft while `chunks` produces it: one transaction, as `apply`.

        The first chunk (the header) is written alone, and must be shorter than PIPE_BUF: it reaches
        nft whole or not at all. If producing a chunk raises, the child is killed before it can read
        the end of its input, and the error is raised as it is.
        """
        argv = self._child_argv("/proc/self/fd/0")
        written = 0
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
            assert proc.stdin is not None
            fd = proc.stdin.fileno()
            try:
                fcntl.fcntl(fd, _F_SETPIPE_SZ, STREAM_PIPE_BYTES)
            except OSError:
                pass  # a smaller pipe only means less read-ahead
            try:
                stream = iter(chunks)
                header = next(stream, "").encode()
                if len(header) > select.PIPE_BUF:
                    raise ValueError(f"a streamed script's header must be at most {select.PIPE_BUF} bytes")
                written += _write_all(fd, header)
                batch: list[str] = []
                size = 0
                for chunk in stream:
                    batch.append(chunk)
                    size += len(chunk)
                    if size >= STREAM_WRITE_BYTES:
                        written += _write_all(fd, "".join(batch).encode())
                        batch, size = [], 0
                written += _write_all(fd, "".join(batch).encode())
            except BrokenPipeError:
                pass  # nft stopped reading: it failed, and says why on stderr
            except BaseException:
                proc.kill()  # before it sees the end of its input
                proc.wait()
                raise
            finally:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
            rc = proc.wait()
            if rc != 0:
                err.seek(0)
                raise KernelError(f"nftables transaction of {written} bytes refused: "
                                  f"{err.read().decode(errors='replace').strip()[:2000]}")
        if self.netns is None and self._lib is None:
            self._library()  # load libnftables now, so the first small change does not pay for it
        return Applied(written)

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
                raise KernelError(f"libnftables binding not importable ({err}); "
                                  "install pip-nftables and libnftables1") from err
            try:
                lib = nftables.Nftables()
            except OSError as err:
                raise KernelError(f"cannot load libnftables ({err}); install Debian's libnftables1") from err
            self._lib = lib
        return self._lib

    def _run_library(self, script: str) -> None:
        rc, _out, err = self._library().cmd(script)
        if rc != 0:
            # A refused batch can leave the handle unusable for good (its netlink socket overflowed:
            # "No buffer space available", then "cache initialization failed: Protocol error" on every
            # later command). A fresh handle costs a millisecond: never reuse one that failed.
            self._lib = None
            raise KernelError(_explain(err, script))

    def _child_argv(self, source: str) -> list[str]:
        nft = shutil.which("nft")
        if nft is None:
            raise KernelError("the nft command is not installed (Debian package nftables)")
        argv = [nft, "-f", source]
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns is not None else argv

    def _run_child(self, script: str) -> None:
        """nft reads the script from a file written whole before it starts: through a pipe, nft commits
        the statements it read when the writer dies at a statement boundary (half a transaction)."""
        with tempfile.NamedTemporaryFile("w", prefix="nftproxy-", suffix=".nft", dir=_scratch_dir()) as f:
            f.write(script)
            f.flush()
            proc = subprocess.run(self._child_argv(f.name), capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelError(_explain(proc.stderr, script))
        if self.netns is None and self._lib is None:
            self._library()  # load libnftables now, so the first small change does not pay for it


def _scratch_dir() -> str | None:
    """Memory-backed when there is one (a read-only root leaves /tmp as the writable place otherwise)."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)


def _explain(err: str, script: str) -> str:
    lines = script.count("\n")
    return f"nftables transaction of {lines} lines refused: {err.strip()[:2000]}"
