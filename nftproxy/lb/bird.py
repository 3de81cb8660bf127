"""BGP mode, the shell: BIRD 2 as this node's BGP speaker, configured and supervised by the agent.

- `render` writes a `bgp.Plan` as BIRD's configuration: per BGPPeer one routing table, one static
  protocol holding the advertised prefixes (blackhole routes carrying LOCAL_PREF and communities; no
  kernel protocol, so the node's own routing never sees them) and one BGP protocol exporting that
  table with the node as next hop. A change to the prefixes is a change to a static protocol only,
  which BIRD applies in place: sessions are not restarted, only the difference is sent.
- `BirdSupervisor` runs `bird -f -R` as a child of the agent (killed with it: PR_SET_PDEATHSIG),
  writes the configuration and asks for `configure` on the control socket when it changes, restarts
  BIRD when it dies (the configuration on disk brings every advertisement back; graceful restart
  keeps the routers forwarding meanwhile) and reads the sessions' state every second.
- `BirdControl` speaks the control socket's line protocol (what `birdc` speaks).

Graceful restart (RFC 4724, restart time 120 s by default): when the agent stops (a rollout) or dies,
BIRD is killed without a Cease, so routers keep our routes (marked stale) while the next agent starts
(the node's rules stay in its kernel meanwhile, so the routes still lead somewhere that forwards); it
starts BIRD in recovery mode (-R) with the complete configuration and the routers refresh the routes
without ever withdrawing them. A node that really dies stops answering keepalives: routers drop its
routes at the hold time (BFD: sooner), as without graceful restart (a hold timer expiry is no restart).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bgp import Plan, Route, Session

log = logging.getLogger("nftproxy.lb.bird")

CONNECT_RETRY = 5  # seconds between connection attempts when BGPPeer.connectTime is not set
RECOVERY_WAIT = 5  # seconds a restarted BIRD waits for End-of-RIB from its peers before it advertises anyway
RESTART_TIME = 120  # seconds routers keep our routes (stale) while the agent restarts: --lb-bgp-restart-time


# --- configuration ----------------------------------------------------------------------------------
def _route(route: Route) -> str:
    attrs = []
    if route.local_pref is not None:
        attrs.append(f"bgp_local_pref = {route.local_pref};")
    for c in route.communities:
        kind = "bgp_large_community" if c.large else "bgp_community"
        attrs.append(f"{kind}.add(({','.join(str(v) for v in c.values)}));")
    block = f" {{ {' '.join(attrs)} }}" if attrs else ""
    return f"\troute {route.prefix} blackhole{block};"


def _session(s: Session, restart_time: int) -> list[str]:
    peer = s.peer
    channel = f"ipv{peer.family}"
    table = f"{s.name}_t"
    neighbor = f"as {peer.peer_asn}" if peer.peer_asn is not None else peer.dynamic_asn
    lines = [f"{channel} table {table};",
             f"protocol static {s.name}_routes {{", f"\t{channel} {{ table {table}; }};",
             *(_route(r) for r in s.routes), "}",
             f"protocol bgp {s.name} {{",
             f'\tdescription "BGPPeer {peer.ref}";',
             f"\tlocal {peer.source_address + ' ' if peer.source_address else ''}as {peer.my_asn};",
             f"\tneighbor {peer.address} port {peer.port} {neighbor};",
             f"\thold time {peer.hold_time};"]
    if peer.keepalive_time is not None:
        lines.append(f"\tkeepalive time {peer.keepalive_time};")
    retry = peer.connect_time or CONNECT_RETRY
    lines += [f"\tconnect retry time {retry};", "\tconnect delay time 1;", f"\terror wait time 1, {max(retry, 2)};"]
    if peer.router_id:
        lines.append(f"\trouter id {peer.router_id};")
    if peer.ebgp_multihop and not peer.internal:
        lines.append("\tmultihop;")
    if s.password:
        lines.append(f'\tpassword "{s.password}";')  # quotes and backslashes refused when parsed
    if peer.graceful_restart:
        lines += ["\tgraceful restart on;", f"\tgraceful restart time {restart_time};"]
    else:
        lines.append("\tgraceful restart off;")
    if s.bfd is not None:
        b = s.bfd
        lines.append(f"\tbfd {{ min rx interval {b.receive_interval} ms; min tx interval {b.transmit_interval} ms; "
                     f"multiplier {b.detect_multiplier};{' passive on;' if b.passive else ''} }};")
    lines += [f"\t{channel} {{ table {table}; import none; export all; next hop self; }};", "}"]
    return lines


def render(plan: Plan, router_id: str, node: str, restart_time: int = RESTART_TIME) -> str:
    """BIRD 2 configuration for a plan (deterministic: the same plan gives the same text)."""
    lines = [f"# nftproxy: the BGP speaker of node {node}. Rewritten on every change: do not edit.",
             f"router id {router_id};",
             'timeformat protocol "%s";',
             "log stderr { info, warning, error, fatal, bug };",
             "protocol device { scan time 10; }"]
    if any(s.peer.graceful_restart for s in plan.sessions):
        # After a restart (-R) BIRD holds its exports until every graceful-restart peer sent End-of-RIB;
        # a peer that is down must not hold back the others for BIRD's default 240 s.
        lines.append(f"graceful restart wait {RECOVERY_WAIT};")
    if any(s.bfd is not None for s in plan.sessions):
        lines.append("protocol bfd nftproxy_bfd { }")
    for s in plan.sessions:
        lines += _session(s, restart_time)
    return "\n".join(lines) + "\n"


# --- the control socket -----------------------------------------------------------------------------
class BirdError(RuntimeError):
    pass


class BirdControl:
    """One command at a time over BIRD's control socket. Replies are lines "NNNN-text" (more follow),
    " text" (continuation) and "NNNN text" (the last); codes 8000 and up are errors."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path, self.timeout = path, timeout

    def command(self, text: str) -> list[tuple[int, str]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            stream = sock.makefile("rwb")
            self._reply(stream)  # the greeting, "0001 BIRD 2.0.12 ready."
            stream.write(text.encode() + b"\n")
            stream.flush()
            return self._reply(stream)

    @staticmethod
    def _reply(stream: Any) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        code = 0
        while True:
            raw = stream.readline()
            if not raw:
                raise BirdError("BIRD closed the control connection")
            line = raw.decode(errors="replace").rstrip("\n")
            if len(line) >= 5 and line[:4].isdigit() and line[4] in " -":
                code = int(line[:4])
                out.append((code, line[5:]))
                if line[4] == " ":
                    if code >= 8000:
                        raise BirdError(line[5:].strip() or f"error {code}")
                    return out
            else:
                out.append((code, line[1:] if line.startswith(" ") else line))


@dataclass(frozen=True, slots=True)
class ProtocolStatus:
    name: str
    proto: str
    state: str  # up, start, down, ...
    info: str  # for BGP: Established, Active, Connect, Idle, ...
    since: float | None = None
    bgp_state: str = ""
    last_error: str = ""
    exported: int = 0

    @property
    def established(self) -> bool:
        return self.state == "up" and (self.bgp_state or self.info).startswith("Established")


def parse_protocols(reply: list[tuple[int, str]]) -> dict[str, ProtocolStatus]:
    """`show protocols all`, as returned by BirdControl.command, per protocol name."""
    out: dict[str, ProtocolStatus] = {}
    current: dict[str, Any] | None = None

    def done() -> None:
        if current is not None:
            out[current["name"]] = ProtocolStatus(**current)

    for code, text in reply:
        if code == 1002:
            done()
            parts = text.split()
            if len(parts) < 4:
                current = None
                continue
            since = None
            rest = parts[4:]
            if rest and rest[0].replace(".", "", 1).isdigit():
                since, rest = float(rest[0]), rest[1:]
            current = {"name": parts[0], "proto": parts[1], "state": parts[3], "info": " ".join(rest),
                       "since": since}
        elif code == 1006 and current is not None:
            key, _, value = text.strip().partition(":")
            value = value.strip()
            if key == "BGP state":
                current["bgp_state"] = value
            elif key == "Last error":
                current["last_error"] = value
            elif key == "Routes":
                for part in value.split(","):
                    number, _, what = part.strip().partition(" ")
                    if what == "exported" and number.isdigit():
                        current["exported"] = current.get("exported", 0) + int(number)
    done()
    return out


# --- the supervisor ---------------------------------------------------------------------------------
def default_directory(node: str) -> str:
    """Where BIRD's configuration, control socket and pid file live: per node name and network namespace,
    so agents sharing a file system (one per namespace in the tests) never share a BIRD."""
    try:
        namespace = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        namespace = 0
    return f"/tmp/nftproxy-bgp-{node}-{namespace}"


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class SupervisorStats:
    starts: int = 0
    restarts: int = 0  # starts after BIRD died on its own
    configures: int = 0
    last_error: str = ""
    statuses: dict[str, ProtocolStatus] = field(default_factory=dict)


class BirdSupervisor:
    """Keeps one BIRD running with the latest configuration, from a thread of its own (the caller never
    waits on BIRD). `apply(text)` hands over a configuration, `apply(None)` stops BIRD (its sessions
    close with a Cease, so routers withdraw at once): no peers, no speaker."""

    def __init__(self, directory: str | os.PathLike[str], binary: str = "bird",
                 on_status: Callable[[Mapping[str, ProtocolStatus]], None] | None = None,
                 on_restart: Callable[[str], None] | None = None, poll: float = 1.0) -> None:
        self.directory = Path(directory)
        self.binary = binary
        self.config_path = self.directory / "bird.conf"
        self.socket_path = str(self.directory / "bird.ctl")
        self.pid_path = self.directory / "bird.pid"
        self.on_status = on_status
        self.on_restart = on_restart
        self.poll = poll
        self.control = BirdControl(self.socket_path)
        self.stats = SupervisorStats()
        self.process: subprocess.Popen[bytes] | None = None
        self._wanted: str | None = None
        self._written: str | None = None
        self._applied: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_mode = "graceful-restart"
        self._retry_at = 0.0
        self._backoff = 0.5
        self._thread: threading.Thread | None = None

    # --- from the agent ---------------------------------------------------------------------------
    def apply(self, config: str | None) -> None:
        with self._lock:
            self._wanted = config
        if self._thread is None and config is not None:
            self._thread = threading.Thread(target=self._run, name="bird-supervisor", daemon=True)
            self._thread.start()
        self._wake.set()

    def stop(self, graceful_restart: bool = True, timeout: float = 5.0) -> None:
        """Agent exit. With graceful restart BIRD is killed (no Cease: routers keep the routes, stale, for
        the restart time while the next agent starts); without, it shuts down and routers withdraw."""
        self._stop_mode = "graceful-restart" if graceful_restart else "withdraw"
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._terminate(kill=graceful_restart)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # --- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._turn()
            except Exception:  # noqa: BLE001 - the supervisor must outlive any one failure
                log.exception("BGP speaker supervisor: unexpected error (continuing)")
            self._wake.wait(self.poll)
            self._wake.clear()
        self._terminate(kill=self._stop_mode == "graceful-restart")

    def _turn(self) -> None:
        with self._lock:
            wanted = self._wanted
        if wanted is None:
            if self.running:
                log.info("no BGP session left on this node: stopping BIRD (its routes are withdrawn)")
                self._terminate(kill=False)
            self._applied = None
            return
        if wanted != self._written:
            self._write(wanted)
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            self.process = None
            self.stats.restarts += 1
            self.stats.last_error = f"BIRD exited with status {code}"
            log.warning("BIRD exited (status %s): starting it again with the same configuration", code)
            if self.on_restart is not None:
                self.on_restart(self.stats.last_error)
        if self.process is None:
            if time.monotonic() < self._retry_at:
                return
            if not self._start():
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, 10.0)
                return
            self._applied = wanted
        elif wanted != self._applied:
            try:
                self.control.command("configure")
                self.stats.configures += 1
                self._applied = wanted
            except (OSError, BirdError) as err:
                self.stats.last_error = f"configure: {err}"
                log.error("BIRD refused the new configuration (%s); it keeps the previous one", err)
                self._applied = wanted  # the same text would be refused again
        try:
            statuses = parse_protocols(self.control.command("show protocols all"))
        except (OSError, BirdError) as err:
            log.debug("BIRD status: %s", err)
            return
        self.stats.statuses = statuses
        if self.on_status is not None:
            self.on_status(statuses)

    def _write(self, text: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.config_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold TCP MD5 keys
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, self.config_path)
        self._written = text

    def _start(self) -> bool:
        self._kill_leftover()
        argv = [self.binary, "-f", "-R", "-c", str(self.config_path), "-s", self.socket_path,
                "-P", str(self.pid_path)]
        started = time.monotonic()
        try:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        except OSError as err:
            self.stats.last_error = f"cannot run {self.binary}: {err.strerror or err}"
            log.error("BGP speaker: %s (install BIRD 2: Debian's bird2)", self.stats.last_error)
            return False
        self.stats.starts += 1
        process = self.process
        threading.Thread(target=self._relay, args=(process,), name="bird-log", daemon=True).start()
        while time.monotonic() - started < 5.0:
            if process.poll() is not None:
                self.stats.last_error = f"BIRD exited at start (status {process.returncode})"
                log.error("%s; see its messages above", self.stats.last_error)
                self.process = None
                return False
            try:
                self.control.command("show status")
                self._backoff = 0.5
                log.info("BIRD started (pid %d) in %.0f ms", process.pid, (time.monotonic() - started) * 1000)
                return True
            except (OSError, BirdError):
                time.sleep(0.02)
        log.error("BIRD did not open its control socket within 5 s: killing it")
        self._terminate(kill=True)
        return False

    def _relay(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            level = logging.WARNING if any(w in line for w in ("<ERR>", "<WARN>", "<FATAL>", "<BUG>", "rror")) \
                else logging.INFO
            log.log(level, "bird: %s", line)
        self._wake.set()  # it exited: restart without waiting for the next poll

    def _kill_leftover(self) -> None:
        """A BIRD of an agent that could not take it along (it would hold port 179 and our routes)."""
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(self.config_path).encode() in cmdline:
            log.warning("killing a BIRD left by a previous agent (pid %d)", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.01)

    def _terminate(self, kill: bool) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()  # BIRD closes every session with a Cease: routers withdraw at once
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
