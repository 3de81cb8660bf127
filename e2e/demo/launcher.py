"""`nftproxy demo` itself: it starts the demo in a worker process of its own session (`python -m e2e.demo
--worker`) and passes a Ctrl-C, SIGTERM or SIGHUP on to it once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from e2e.demo.signals import EXIT_CANNOT_RUN, EXIT_INTERRUPTED, SIGNALS, Stopped, raise_stopped
from e2e.netns.cluster import REPO_ROOT

READY_FD_ENV = "NFTPROXY_DEMO_READY_FD"


def run_demo(keep: bool = False) -> int:
    """`nftproxy demo [--keep]`: see the package's docstring. Returns the exit status.

    The demo runs in a worker process in its own session. Ctrl-C at a terminal signals the whole
    foreground process group, and would kill the harness's `ip` commands half-way (an interrupted
    `ip netns add` leaves a broken /run/netns entry no cleanup knows about). Here only this
    process sees the terminal's signals, and turns the first one into one orderly SIGINT (SIGTERM
    for SIGTERM/SIGHUP) for the worker, which then tears down everything it built.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "e2e.demo", "--worker", *(["--keep"] if keep else [])]
    worker: subprocess.Popen[bytes] | None = None
    ready = False  # the worker handles signals (before that, a Ctrl-C would break its start with a traceback)
    pending: int | None = None  # a signal that arrived before the worker was ready
    forwarded = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal forwarded, pending
        if worker is None or not ready:
            pending = signum
            return
        if forwarded:
            try:
                print("(cleaning up, one moment ...)", file=sys.stderr, flush=True)
            except OSError:
                pass
            return
        forwarded = True
        try:
            worker.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
        except OSError:
            pass

    # installed before the worker starts, so the worker never inherits an ignored SIGINT (as under `cmd &`)
    previous = {signum: signal.signal(signum, forward) for signum in SIGNALS}
    try:
        ready_r, ready_w = os.pipe()
        env[READY_FD_ENV] = str(ready_w)
        try:
            worker = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                      pass_fds=(ready_w,))
        except OSError as err:
            print(f"nftproxy demo: cannot start the demo: {err}", file=sys.stderr)
            return EXIT_CANNOT_RUN
        finally:
            os.close(ready_w)
        try:
            os.read(ready_r, 1)  # one byte once the worker handles signals; b"" if it exited before
        finally:
            os.close(ready_r)
        ready = True
        if pending is not None:
            forward(pending, None)
        code = worker.wait()  # retried after every signal handler (PEP 475)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - code if code < 0 else code


def worker_main(argv: list[str]) -> int:
    """The demo itself (started by run_demo in its own session)."""
    if argv[:1] != ["--worker"] or not set(argv[1:]) <= {"--keep"}:
        print("usage: nftproxy demo [--keep]  (e2e.demo --worker is internal)", file=sys.stderr)
        return EXIT_CANNOT_RUN
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, raise_stopped)
        ready_fd = os.environ.pop(READY_FD_ENV, None)
        if ready_fd:
            os.write(int(ready_fd), b"1")
            os.close(int(ready_fd))
        from e2e.demo.steps import Demo
        from e2e.demo.terminal import Terminal

        demo = Demo("--keep" in argv, Terminal(sys.stdout))
    except (KeyboardInterrupt, Stopped):  # before anything was built
        return EXIT_INTERRUPTED
    return demo.main()
