"""A Kubernetes-like cluster made of Linux network namespaces.

Everything lives in network namespaces named ``<prefix><id>-...`` (e.g.
``nfp-3fa2-node-1``); the host's own network namespace is never touched: veth
pairs are created directly between two namespaces, the LAN bridge lives in its
own namespace, and sysctls are only written inside namespaces.

Topology (defaults, RFC 2544 benchmarking addresses)::

                       nfp-<id>-lan  (bridge br0, "router" 198.18.0.1 / 2001:db8::1)
          ┌──────────────────┼──────────────────────┬─────────────────┐
     nfp-<id>-node-1    nfp-<id>-node-2   ...   nfp-<id>-client-X
     eth0 198.18.0.11   eth0 198.18.0.12        eth0 198.18.0.101
       │ vethN (gw 198.18.129.1/32, fe80::1)
     nfp-<id>-pod-web-1
     eth0 198.18.129.2/32, default via 198.18.129.1

* Nodes forward (v4 and v6), have rp_filter=0 and send_redirects=0, a /32
  (/128) route per local pod over the pod's host-side veth, a route to every
  other node's pod CIDR via that node's LAN IP, and (``node_default_route``) a
  default route to the LAN "router" address so that locally generated traffic
  to Service IPs has a route (as on a real node). The router address lives on
  the bridge of the LAN namespace, which does not forward: anything not DNAT-ed
  by the proxy goes nowhere.
* Pods are kindnet/ptp style: ``eth0`` holds the pod's /32 (/128); the default
  route points to the node-side veth, which carries the first address of the
  node's pod CIDR as a /32 (v6: link-local ``fe80::1``). Hairpin works: a
  packet DNAT-ed back to the sending pod is routed out of the same veth.
* Outside clients sit on the LAN with NO route to pod or Service CIDRs; add one
  with :meth:`NamespaceCluster.add_route` when a test needs it.

Every namespace carries an owner tag (``lo`` alias) naming the creating
process, which lets :func:`cleanup_stale` remove leftovers of crashed runs
without disturbing clusters of concurrently running test sessions.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import ipaddress
import itertools
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

#: Root of the repository (the directory holding the ``e2e`` package).
REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_PREFIX = "nfp-"
OWNER_TAG = "nfp-owner"
LAN_BRIDGE = "br0"
#: Link-local gateway of IPv6 pods (configured on every node-side pod veth).
POD_GATEWAY6 = "fe80::1"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #


class HarnessError(RuntimeError):
    """Anything that went wrong while building or driving the cluster."""


class CommandError(HarnessError):
    """A command run by the harness failed.

    Attributes mirror :class:`subprocess.CalledProcessError`, plus ``netns``.
    """

    def __init__(
        self, argv: Sequence[str], netns: str | None, returncode: int | None, stdout: str, stderr: str
    ) -> None:
        self.argv = list(argv)
        self.netns = netns
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        where = f"in netns {netns!r}" if netns else "on the host"
        status = "timed out" if returncode is None else f"exited {returncode}"
        super().__init__(
            f"command {self.argv!r} {where} {status}\n"
            f"--- stderr ---\n{(stderr or '').strip()}\n--- stdout ---\n{(stdout or '').strip()[:4000]}"
        )


# --------------------------------------------------------------------------- #
# low level helpers
# --------------------------------------------------------------------------- #


def _run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (inside ``netns`` via ``ip netns exec`` if given)."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    try:
        proc = subprocess.run(
            full,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise CommandError(argv, netns, None, out, err) from None
    if check and proc.returncode != 0:
        raise CommandError(argv, netns, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _ip_batch(netns: str, commands: Iterable[str]) -> None:
    """Run several ``ip`` commands inside ``netns`` in one process (stops at the first error)."""
    script = "".join(c + "\n" for c in commands)
    if script:
        _run(["ip", "-n", netns, "-batch", "-"], input=script)


def _sysctl(netns: str, settings: dict[str, Any]) -> None:
    """Write sysctls inside ``netns`` (never in the host namespace)."""
    if settings:
        _run(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())], netns=netns)


def _proc_start_time(pid: int) -> str | None:
    """Start time (clock ticks since boot) of ``pid``, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces; it is enclosed in parentheses
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_tag() -> str:
    pid = os.getpid()
    return f"{OWNER_TAG}:pid={pid}:start={_proc_start_time(pid)}"


def _owner_alive(tag: str | None) -> bool:
    """Whether the process named by an owner tag still runs."""
    if not tag or not tag.startswith(OWNER_TAG + ":"):
        return False
    fields = dict(part.split("=", 1) for part in tag.split(":")[1:] if "=" in part)
    try:
        pid = int(fields["pid"])
    except (KeyError, ValueError):
        return False
    return _proc_start_time(pid) == fields.get("start")


def list_netns() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _netns_pids(netns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _kill_netns_processes(netns: str) -> None:
    """SIGKILL every process living in ``netns`` and wait briefly for them to go."""
    for _ in range(50):
        pids = _netns_pids(netns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def _delete_netns(netns: str) -> None:
    """Kill processes in ``netns`` and delete it (no error if it is already gone)."""
    _kill_netns_processes(netns)
    proc = _run(["ip", "netns", "del", netns], check=False)
    if proc.returncode != 0 and netns in list_netns():
        raise CommandError(["ip", "netns", "del", netns], None, proc.returncode, proc.stdout, proc.stderr)


def cleanup_stale(prefix: str = DEFAULT_PREFIX, force: bool = False) -> list[str]:
    """Remove leftover namespaces (and the processes in them) of crashed runs.

    Only namespaces whose name starts with ``prefix`` are considered. Unless
    ``force`` is true, namespaces whose owner process (recorded when the
    cluster was built) is still alive are kept, so concurrently running test
    sessions are not disturbed. Returns the names of the removed namespaces.
    """
    candidates = [ns for ns in list_netns() if ns.startswith(prefix)]
    if not force:
        tags = {ns: _netns_owner_tag(ns) for ns in candidates}
        if any(tag is None for tag in tags.values()):
            # an untagged namespace may be one another session is creating
            # right now (it is tagged milliseconds after creation): look again
            time.sleep(0.5)
            tags.update({ns: _netns_owner_tag(ns) for ns, tag in tags.items() if tag is None})
        candidates = [ns for ns in candidates if not _owner_alive(tags[ns])]
    removed = []
    for netns in candidates:
        if netns in list_netns():
            _delete_netns(netns)
            removed.append(netns)
    return removed


def _netns_owner_tag(netns: str) -> str | None:
    """The owner tag (alias of ``lo``) of a namespace, if any."""
    proc = _run(["ip", "-n", netns, "-j", "link", "show", "lo"], check=False)
    try:
        return json.loads(proc.stdout)[0].get("ifalias")
    except (ValueError, IndexError, AttributeError):
        return None


_preflight_ok = False


def require_root_and_netns() -> None:
    """Fail loudly (never skip) unless namespaces can be built here.

    Checks for root, the ``ip``/``sysctl`` tools and that a network namespace
    with a veth pair and a bridge can actually be created. Raises
    :class:`HarnessError` with an explanation otherwise. Cached after the
    first success.
    """
    global _preflight_ok
    if _preflight_ok:
        return
    if os.geteuid() != 0:
        raise HarnessError(
            "kernel tests need root (network namespaces, veth, nftables); run them as root "
            "(e.g. in the CI VM or with sudo) -- they are deliberately not skipped"
        )
    for tool in ("ip", "sysctl"):
        if shutil.which(tool) is None:
            raise HarnessError(f"kernel tests need the {tool!r} tool in PATH")
    probe = f"{DEFAULT_PREFIX}check-{secrets.token_hex(3)}"
    probe2 = probe + "-b"
    try:
        _run(["ip", "netns", "add", probe])
        _ip_batch(probe, [f"link set dev lo alias {_owner_tag()}"])
        _run(["ip", "netns", "add", probe2])
        _ip_batch(probe2, [f"link set dev lo alias {_owner_tag()}"])
        _ip_batch(
            probe,
            [
                "link add br0 type bridge",
                f"link add v0 type veth peer name v1 netns {probe2}",
                "link set v0 master br0",
            ],
        )
    except HarnessError as exc:
        raise HarnessError(f"cannot build network namespaces with veth/bridge here: {exc}") from exc
    finally:
        for ns in (probe, probe2):
            _run(["ip", "netns", "del", ns], check=False)
    _preflight_ok = True


class _LineReader:
    """Reads newline-terminated lines from a pipe with a deadline."""

    def __init__(self, fileobj: Any) -> None:
        self.fd = fileobj.fileno()
        self.buf = b""
        self.eof = False

    def readline(self, timeout: float) -> str | None:
        """Next line (without newline); None on timeout; '' on EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                rest, self.buf = self.buf, b""
                return rest.decode(errors="replace")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONSTARTUP", None)
    return env


def _nth_subnet(network: str, new_prefix: int, n: int) -> str:
    net = ipaddress.ip_network(network)
    if n >= 2 ** (new_prefix - net.prefixlen):
        raise HarnessError(f"{network} has no {n}th /{new_prefix} subnet")
    return str(next(itertools.islice(net.subnets(new_prefix=new_prefix), n, None)))


def _nth_addr(network: str, n: int) -> str:
    return str(ipaddress.ip_network(network)[n])


def _plen(network: str) -> int:
    return ipaddress.ip_network(network).prefixlen


# --------------------------------------------------------------------------- #
# public data types
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Node:
    """A cluster node: one network namespace attached to the LAN."""

    name: str
    index: int
    netns: str
    ip: str
    ip6: str | None
    pod_cidr: str
    pod_cidr6: str | None
    lan_ifname: str
    #: address the node-side pod veths carry; pods' default gateway
    pod_gateway: str
    pod_gateway6: str | None


@dataclasses.dataclass(eq=False)
class Server:
    """An echo server process running inside some namespace."""

    name: str
    netns: str
    process: subprocess.Popen[bytes]
    log_path: Path
    tcp: tuple[int, ...] = ()
    udp: tuple[int, ...] = ()
    sctp: tuple[int, ...] = ()

    @property
    def alive(self) -> bool:
        """True while the server process runs."""
        return self.process.poll() is None

    def log(self) -> str:
        """The server's stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 2 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout:
            self.process.stdout.close()


@dataclasses.dataclass(eq=False)
class Pod:
    """A pod: its own namespace, ``eth0`` point-to-point to its node."""

    name: str
    node: Node
    netns: str
    ip: str
    ip6: str | None
    #: name of the pod's veth on the node side (inside ``node.netns``)
    host_ifname: str
    server: Server | None = None


@dataclasses.dataclass(frozen=True)
class Client:
    """A machine outside the cluster, attached to the LAN."""

    name: str
    netns: str
    ip: str
    ip6: str | None
    lan_ifname: str


@dataclasses.dataclass(frozen=True)
class Router:
    """A forwarding namespace on the LAN with a network of its own behind it (``outside_cidr``), where
    :meth:`NamespaceCluster.add_client_behind` puts clients whose only route is the router."""

    name: str
    netns: str
    ip: str
    ip6: str | None
    lan_ifname: str
    outside_cidr: str
    outside_cidr6: str | None
    #: the router's address on its outside network (the clients' default gateway)
    outside_ip: str
    outside_ip6: str | None


@dataclasses.dataclass
class ProbeResult:
    """Outcome of one request (mirrors the JSON printed by ``e2e.netns.probe``).

    ``client``/``client_port`` are the source address/port the *server* saw.
    ``error`` is None on success, else ``refused``, ``timeout``,
    ``unreachable``, ``reset``, ``closed``, ``unsupported``, ``bad-reply: ...``
    or an errno text.
    """

    ok: bool
    pod: str | None = None
    client: str | None = None
    error: str | None = None
    client_port: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ProbeResult":
        """Build from one JSON object of the probe output."""
        return cls(
            ok=bool(data.get("ok")),
            pod=data.get("pod"),
            client=data.get("client"),
            error=data.get("error"),
            client_port=data.get("client_port"),
        )


def summarize(results: Iterable[ProbeResult]) -> collections.Counter[str]:
    """Count results by pod name (successes) or ``error:<kind>`` (failures).

    Handy in assertions: ``assert summarize(r) == {"web-1": 50, "web-2": 50}``.
    """
    return collections.Counter(r.pod if r.ok else f"error:{r.error}" for r in results)


NetnsLike = Union[str, Node, Pod, Client]


def _ns(target: NetnsLike) -> str:
    """Namespace name of a Node/Pod/Client, or the string itself."""
    ns = target if isinstance(target, str) else target.netns
    if not ns:
        raise HarnessError("a network namespace is required (the host namespace is never used)")
    return ns


class Connection:
    """A long-lived line-mode TCP connection held by a helper process in a namespace.

    Use :meth:`exchange` to send one line and read the server's JSON reply.
    Once an exchange fails the connection counts as broken and every further
    exchange returns ``ProbeResult(ok=False, error="closed")``.
    """

    def __init__(self, process: subprocess.Popen[bytes], netns: str, ip: str, port: int, timeout: float) -> None:
        self.process = process
        self.netns = netns
        self.ip = ip
        self.port = port
        self.timeout = timeout
        #: (address, port) of the client end of the connection
        self.local: tuple[str, int] | None = None
        self._reader = _LineReader(process.stdout)
        self._broken = False

    def _read_result(self, timeout: float) -> ProbeResult:
        line = self._reader.readline(timeout)
        if line is None:
            self._broken = True
            return ProbeResult(False, error="timeout")
        if not line:
            self._broken = True
            return ProbeResult(False, error="closed")
        try:
            data = json.loads(line)
        except ValueError:
            self._broken = True
            return ProbeResult(False, error=f"bad-reply: {line[:200]!r}")
        res = ProbeResult.from_json(data)
        if "local" in data:
            self.local = (data["local"][0], int(data["local"][1]))
        if not res.ok:
            self._broken = True
        return res

    def _connected(self) -> ProbeResult:
        return self._read_result(self.timeout + 10)

    @property
    def broken(self) -> bool:
        """True once an exchange failed or the connection was closed."""
        return self._broken

    def exchange(self, timeout: float | None = None) -> ProbeResult:
        """Send one line, return the server's reply (or the error)."""
        if self._broken or self.process.poll() is not None:
            self._broken = True
            return ProbeResult(False, error="closed")
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(b"x\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            self._broken = True
            return ProbeResult(False, error="closed")
        # the helper applies self.timeout to the socket; allow extra for scheduling
        return self._read_result((timeout if timeout is not None else self.timeout) + 2)

    def close(self) -> None:
        """Close the connection (the helper closes its socket and exits)."""
        self._broken = True
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(2)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(5)
        for f in (self.process.stdin, self.process.stdout):
            try:
                if f:
                    f.close()
            except OSError:
                pass

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- #
# the cluster
# --------------------------------------------------------------------------- #


class NamespaceCluster:
    """LAN + nodes (+ pods, clients) built from network namespaces.

    Use as a context manager; :meth:`close` tears everything down (it is also
    called if building fails and, as a last resort, at interpreter exit).

    Args:
        nodes: number of nodes (``node-1`` .. ``node-N``).
        dual_stack: also configure IPv6 addresses and routes.
        prefix: namespace name prefix; the namespaces are ``<prefix><id>-*``.
        lan_cidr / lan_cidr6: the LAN; node i gets host 10+i, client k 100+k,
            the LAN "router" (on the bridge) host 1.
        cluster_cidr / cluster_cidr6: pod network; node i gets the i-th
            ``/node_cidr_size`` (``/node_cidr_size6``) subnet.
        service_cidr / service_cidr6: only exposed as attributes.
        node_default_route: give nodes a default route to the LAN router so
            that node-local traffic to Service IPs is routable.
    """

    def __init__(
        self,
        nodes: int = 2,
        dual_stack: bool = False,
        *,
        prefix: str = DEFAULT_PREFIX,
        lan_cidr: str = "198.18.0.0/24",
        lan_cidr6: str = "2001:db8::/64",
        cluster_cidr: str = "198.18.128.0/17",
        cluster_cidr6: str = "2001:db8:1::/56",
        node_cidr_size: int = 24,
        node_cidr_size6: int = 64,
        service_cidr: str = "198.19.0.0/16",
        service_cidr6: str = "2001:db8:2::/112",
        node_default_route: bool = True,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.dual_stack = dual_stack
        self.lan_cidr = lan_cidr
        self.lan_cidr6 = lan_cidr6 if dual_stack else None
        self.cluster_cidr = cluster_cidr
        self.cluster_cidr6 = cluster_cidr6 if dual_stack else None
        self.service_cidr = service_cidr
        self.service_cidr6 = service_cidr6 if dual_stack else None
        self.node_cidr_size = node_cidr_size
        self.node_cidr_size6 = node_cidr_size6
        self.node_default_route = node_default_route
        #: the LAN "router" address on the bridge (nodes' default gateway)
        self.lan_gateway = _nth_addr(lan_cidr, 1)
        self.lan_gateway6 = _nth_addr(lan_cidr6, 1) if dual_stack else None

        self.nodes: list[Node] = []
        self.pods: dict[str, Pod] = {}
        self.clients: dict[str, Client] = {}
        self.servers: list[Server] = []
        self._connections: list[Connection] = []
        self._namespaces: list[str] = []
        self._pod_counter: dict[str, int] = {}
        self._closed = False
        self._tag = _owner_tag()
        self.logdir = Path(tempfile.mkdtemp(prefix="nfp-e2e-"))
        # last resort if a caller forgets close(): runs at interpreter exit
        atexit.register(self.close)

        try:
            self.id, self.lan_netns = self._create_lan(prefix)
            #: common prefix of all namespace names of this cluster, e.g. "nfp-3fa2"
            self.prefix = f"{prefix}{self.id}"
            self._build_lan()
            for i in range(1, nodes + 1):
                self._add_node(i)
            self._route_between_nodes()
        except BaseException:
            self.close()
            raise

    # -- building ---------------------------------------------------------- #

    def _create_lan(self, prefix: str) -> tuple[str, str]:
        """Pick a free random id by atomically creating ``<prefix><id>-lan``."""
        for _ in range(20):
            cid = secrets.token_hex(2)
            name = f"{prefix}{cid}-lan"
            proc = _run(["ip", "netns", "add", name], check=False)
            if proc.returncode == 0:
                self._namespaces.append(name)
                self._init_netns(name, router=False)
                return cid, name
            if "exists" not in proc.stderr:
                raise CommandError(["ip", "netns", "add", name], None, proc.returncode, proc.stdout, proc.stderr)
        raise HarnessError("could not find a free cluster id")

    def _new_netns(self, suffix: str, router: bool) -> str:
        name = f"{self.prefix}-{suffix}"
        _run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        self._init_netns(name, router)
        return name

    def _init_netns(self, name: str, router: bool) -> None:
        """Owner tag, lo up, sysctls (set before any interface exists so defaults apply)."""
        settings: dict[str, Any] = {
            "net.ipv6.conf.all.accept_dad": 0,
            "net.ipv6.conf.default.accept_dad": 0,
            "net.ipv4.conf.all.rp_filter": 0,
            "net.ipv4.conf.default.rp_filter": 0,
        }
        if router:
            settings.update(
                {
                    "net.ipv4.ip_forward": 1,
                    "net.ipv6.conf.all.forwarding": 1,
                    "net.ipv6.conf.default.forwarding": 1,
                    "net.ipv4.conf.all.send_redirects": 0,
                    "net.ipv4.conf.default.send_redirects": 0,
                }
            )
        # tag first: it is what keeps a concurrent cleanup_stale() away
        _ip_batch(name, [f"link set dev lo alias {self._tag}", "link set dev lo up"])
        _sysctl(name, settings)

    def _build_lan(self) -> None:
        cmds = [
            f"link add {LAN_BRIDGE} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
            f"link set {LAN_BRIDGE} up",
            f"addr add {self.lan_gateway}/{_plen(self.lan_cidr)} dev {LAN_BRIDGE}",
        ]
        if self.dual_stack:
            cmds.append(f"addr add {self.lan_gateway6}/{_plen(self.lan_cidr6)} dev {LAN_BRIDGE} nodad")
        _ip_batch(self.lan_netns, cmds)

    def _attach_to_lan(self, netns: str, lan_port: str, ip: str, ip6: str | None) -> str:
        """veth from the LAN bridge to ``netns`` (named eth0 there); returns that name."""
        _ip_batch(
            self.lan_netns,
            [
                f"link add {lan_port} type veth peer name eth0 netns {netns}",
                f"link set {lan_port} master {LAN_BRIDGE}",
                f"link set {lan_port} up",
            ],
        )
        cmds = ["link set eth0 up", f"addr add {ip}/{_plen(self.lan_cidr)} dev eth0"]
        if ip6:
            cmds.append(f"addr add {ip6}/{_plen(self.lan_cidr6)} dev eth0 nodad")
        _ip_batch(netns, cmds)
        return "eth0"

    def _add_node(self, i: int) -> None:
        name = f"node-{i}"
        netns = self._new_netns(name, router=True)
        ip = _nth_addr(self.lan_cidr, 10 + i)
        ip6 = _nth_addr(self.lan_cidr6, 10 + i) if self.dual_stack else None
        pod_cidr = _nth_subnet(self.cluster_cidr, self.node_cidr_size, i)
        pod_cidr6 = _nth_subnet(self.cluster_cidr6, self.node_cidr_size6, i) if self.dual_stack else None
        lan_ifname = self._attach_to_lan(netns, f"n{i}", ip, ip6)
        self.nodes.append(
            Node(
                name=name,
                index=i,
                netns=netns,
                ip=ip,
                ip6=ip6,
                pod_cidr=pod_cidr,
                pod_cidr6=pod_cidr6,
                lan_ifname=lan_ifname,
                pod_gateway=_nth_addr(pod_cidr, 1),
                pod_gateway6=POD_GATEWAY6 if self.dual_stack else None,
            )
        )
        self._pod_counter[name] = 1

    def _route_between_nodes(self) -> None:
        for node in self.nodes:
            cmds = []
            for other in self.nodes:
                if other is node:
                    continue
                cmds.append(f"route add {other.pod_cidr} via {other.ip} dev {node.lan_ifname}")
                if self.dual_stack:
                    cmds.append(f"route add {other.pod_cidr6} via {other.ip6} dev {node.lan_ifname}")
            if self.node_default_route:
                cmds.append(f"route add default via {self.lan_gateway} dev {node.lan_ifname}")
                if self.dual_stack:
                    cmds.append(f"route add ::/0 via {self.lan_gateway6} dev {node.lan_ifname}")
            _ip_batch(node.netns, cmds)

    # -- public API -------------------------------------------------------- #

    def node(self, name: str) -> Node:
        """The node called ``name`` (e.g. ``"node-2"``)."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def namespaces(self) -> list[str]:
        """All namespaces currently owned by this cluster."""
        return list(self._namespaces)

    def add_pod(
        self,
        node: Node,
        name: str,
        tcp: Sequence[int] = (8080,),
        udp: Sequence[int] = (5353,),
        sctp: Sequence[int] = (),
        *,
        ready_timeout: float = 10.0,
    ) -> Pod:
        """Create pod ``name`` on ``node`` and start its echo server.

        The pod gets the next free address of the node's pod CIDR (never
        reused within a cluster). With no ports at all no server is started.
        Returns once the server printed READY.
        """
        self._check_open()
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid pod name {name!r}")
        if name in self.pods:
            raise HarnessError(f"pod {name!r} already exists")
        self._pod_counter[node.name] += 1
        n = self._pod_counter[node.name]
        ip = _nth_addr(node.pod_cidr, n)
        ip6 = _nth_addr(node.pod_cidr6, n) if node.pod_cidr6 else None
        host_if = f"veth{n}"
        netns = self._new_netns(f"pod-{name}", router=False)
        pod = Pod(name=name, node=node, netns=netns, ip=ip, ip6=ip6, host_ifname=host_if)
        self.pods[name] = pod
        _ip_batch(node.netns, [f"link add {host_if} type veth peer name eth0 netns {netns}"])
        pod_cmds = [
            "link set eth0 up",
            f"addr add {ip}/32 dev eth0",
            f"route add {node.pod_gateway} dev eth0 scope link",
            f"route add default via {node.pod_gateway} dev eth0",
        ]
        node_cmds = [
            f"link set {host_if} up",
            f"addr add {node.pod_gateway}/32 dev {host_if}",
            f"route add {ip}/32 dev {host_if}",
        ]
        if ip6:
            pod_cmds += [f"addr add {ip6}/128 dev eth0 nodad", f"route add ::/0 via {POD_GATEWAY6} dev eth0"]
            node_cmds += [f"addr add {POD_GATEWAY6}/64 dev {host_if} nodad", f"route add {ip6}/128 dev {host_if}"]
        _ip_batch(netns, pod_cmds)
        _ip_batch(node.netns, node_cmds)
        if tcp or udp or sctp:
            pod.server = self.start_server(netns, name, tcp=tcp, udp=udp, sctp=sctp, ready_timeout=ready_timeout)
        return pod

    def stop_pod(self, pod: Pod) -> None:
        """Kill the pod's server and delete it (its veth and node route vanish at once)."""
        if pod.server:
            pod.server.stop()
        # deleting the host side first removes the pair synchronously (netns
        # teardown is asynchronous in the kernel)
        _run(["ip", "-n", pod.node.netns, "link", "del", pod.host_ifname], check=False)
        _delete_netns(pod.netns)
        if pod.netns in self._namespaces:
            self._namespaces.remove(pod.netns)
        self.pods.pop(pod.name, None)

    def add_client(self, name: str) -> Client:
        """An outside machine on the LAN (no routes to pod/Service CIDRs)."""
        self._check_open()
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid client name {name!r}")
        if name in self.clients:
            raise HarnessError(f"client {name!r} already exists")
        k = len(self.clients) + 1
        netns = self._new_netns(f"client-{name}", router=False)
        ip = _nth_addr(self.lan_cidr, 100 + k)
        ip6 = _nth_addr(self.lan_cidr6, 100 + k) if self.dual_stack else None
        lan_ifname = self._attach_to_lan(netns, f"c{k}", ip, ip6)
        client = Client(name=name, netns=netns, ip=ip, ip6=ip6, lan_ifname=lan_ifname)
        self.clients[name] = client
        return client

    def add_router(
        self, name: str, host: int = 254, outside_cidr: str = "203.0.113.0/24",
        outside_cidr6: str = "2001:db8:c::/64",
    ) -> Router:
        """A router on the LAN (host ``host`` of the LAN prefixes) forwarding to ``outside_cidr``, a network
        of its own that nothing else routes to: nodes and LAN hosts reach it only through routes a test
        adds (:meth:`add_route`), and its clients reach the cluster only through the router's routes."""
        self._check_open()
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid router name {name!r}")
        netns = self._new_netns(f"router-{name}", router=True)
        ip = _nth_addr(self.lan_cidr, host)
        ip6 = _nth_addr(self.lan_cidr6, host) if self.dual_stack else None
        lan_ifname = self._attach_to_lan(netns, f"r{host}", ip, ip6)
        return Router(name=name, netns=netns, ip=ip, ip6=ip6, lan_ifname=lan_ifname, outside_cidr=outside_cidr,
                      outside_cidr6=outside_cidr6 if self.dual_stack else None,
                      outside_ip=_nth_addr(outside_cidr, 1),
                      outside_ip6=_nth_addr(outside_cidr6, 1) if self.dual_stack else None)

    def add_client_behind(self, router: Router, name: str) -> Client:
        """A client on the router's outside network: its only route (default) goes through the router."""
        self._check_open()
        if not _NAME_RE.match(name) or name in self.clients:
            raise ValueError(f"invalid or duplicate client name {name!r}")
        behind = self.__dict__.setdefault("_behind", collections.Counter())
        behind[router.name] += 1
        k = behind[router.name]
        netns = self._new_netns(f"client-{name}", router=False)
        ip = _nth_addr(router.outside_cidr, 1 + k)
        ip6 = _nth_addr(router.outside_cidr6, 1 + k) if router.outside_cidr6 else None
        port = f"o{k}"
        _ip_batch(router.netns, [f"link add {port} type veth peer name eth0 netns {netns}", f"link set {port} up"]
                  + ([f"addr add {router.outside_ip}/{_plen(router.outside_cidr)} dev {port}"] if k == 1 else
                     [f"route add {ip}/32 dev {port}"]))
        cmds = ["link set eth0 up", f"addr add {ip}/{_plen(router.outside_cidr)} dev eth0",
                f"route add default via {router.outside_ip} dev eth0"]
        if ip6 and router.outside_ip6 and router.outside_cidr6:
            if k == 1:
                _ip_batch(router.netns, [f"addr add {router.outside_ip6}/{_plen(router.outside_cidr6)} dev {port} "
                                         "nodad"])
            else:
                _ip_batch(router.netns, [f"route add {ip6}/128 dev {port}"])
            cmds += [f"addr add {ip6}/{_plen(router.outside_cidr6)} dev eth0 nodad",
                     f"route add default via {router.outside_ip6} dev eth0"]
        _ip_batch(netns, cmds)
        client = Client(name=name, netns=netns, ip=ip, ip6=ip6, lan_ifname="eth0")
        self.clients[name] = client
        return client

    def add_route(self, netns: NetnsLike, prefix: str, via_ip: str) -> None:
        """Add a route for ``prefix`` via ``via_ip`` inside ``netns`` (v4 or v6)."""
        self._check_open()
        _run(["ip", "-n", _ns(netns), "route", "add", prefix, "via", via_ip])

    def exec(
        self,
        netns: NetnsLike,
        argv: Sequence[str],
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``netns``; text output.

        Raises :class:`CommandError` (argv, netns, stderr in the message) on a
        non-zero exit status when ``check`` is true, and always on timeout.
        """
        return _run(list(argv), netns=_ns(netns), input=input, check=check, timeout=timeout)

    def start_server(
        self,
        netns: NetnsLike,
        name: str,
        tcp: Sequence[int] = (),
        udp: Sequence[int] = (),
        sctp: Sequence[int] = (),
        *,
        ready_timeout: float = 10.0,
    ) -> Server:
        """Start an echo server answering as ``name`` in any namespace (e.g. hostNetwork on a node)."""
        self._check_open()
        ns = _ns(netns)
        argv = [sys.executable, "-m", "e2e.netns.echo", "--name", name]
        for flag, ports in (("--tcp", tcp), ("--udp", udp), ("--sctp", sctp)):
            for port in ports:
                argv += [flag, str(int(port))]
        log_path = self.logdir / f"server-{len(self.servers)}-{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                cwd=REPO_ROOT,
                env=_python_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        server = Server(name, ns, process, log_path, tuple(tcp), tuple(udp), tuple(sctp))
        self.servers.append(server)
        assert process.stdout is not None
        line = _LineReader(process.stdout).readline(ready_timeout)
        if line != "READY":
            server.stop()
            state = "timed out" if line is None else f"said {line!r}"
            raise HarnessError(
                f"echo server {name!r} in {ns} {state} instead of READY (exit {process.returncode})\n{server.log()}"
            )
        return server

    def stop_server(self, server: Server) -> None:
        """Stop a server started with :meth:`start_server`."""
        server.stop()

    def probe(
        self,
        netns: NetnsLike,
        ip: str,
        port: int,
        proto: str = "tcp",
        count: int = 1,
        timeout: float = 1.0,
        source_port: int | None = None,
        *,
        bind: str | None = None,
        interval: float = 0.0,
    ) -> list[ProbeResult]:
        """Make ``count`` requests from ``netns`` to ``ip:port`` (one process, sequential)."""
        self._check_open()
        argv = [
            sys.executable, "-m", "e2e.netns.probe", ip, str(port),
            "--proto", proto, "--count", str(count), "--timeout", str(timeout),
        ]  # fmt: skip
        if source_port:
            argv += ["--source-port", str(source_port)]
        if bind:
            argv += ["--bind", bind]
        if interval:
            argv += ["--interval", str(interval)]
        budget = count * (timeout + interval) + 30
        proc = _run(argv, netns=_ns(netns), env=_python_env(), cwd=REPO_ROOT, timeout=budget)
        try:
            return [ProbeResult.from_json(item) for item in json.loads(proc.stdout)]
        except (ValueError, TypeError) as exc:
            raise CommandError(argv, _ns(netns), proc.returncode, proc.stdout,
                               f"unparsable output: {exc}\n{proc.stderr}") from exc

    def open_connection(
        self,
        netns: NetnsLike,
        ip: str,
        port: int,
        *,
        timeout: float = 2.0,
        bind: str | None = None,
        source_port: int | None = None,
    ) -> Connection:
        """Open a long-lived line-mode TCP connection from ``netns``.

        Raises :class:`HarnessError` if the connection cannot be established.
        """
        self._check_open()
        ns = _ns(netns)
        argv = [sys.executable, "-m", "e2e.netns.probe", "--persistent", ip, str(port), "--timeout", str(timeout)]
        if bind:
            argv += ["--bind", bind]
        if source_port:
            argv += ["--source-port", str(source_port)]
        log_path = self.logdir / f"conn-{len(self._connections)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                cwd=REPO_ROOT,
                env=_python_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        conn = Connection(process, ns, ip, port, timeout)
        self._connections.append(conn)
        first = conn._connected()
        if not first.ok:
            conn.close()
            raise HarnessError(
                f"cannot connect from {ns} to {ip}:{port}: {first.error}\n{log_path.read_text(errors='replace')}"
            )
        return conn

    # -- teardown ---------------------------------------------------------- #

    def _check_open(self) -> None:
        if self._closed:
            raise HarnessError("cluster is closed")

    def close(self) -> None:
        """Stop every process and delete every namespace of this cluster (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors: list[str] = []
        for conn in self._connections:
            try:
                conn.close()
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                errors.append(f"connection: {exc}")
        for server in self.servers:
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"server {server.name}: {exc}")
        for netns in reversed(self._namespaces):
            try:
                _delete_netns(netns)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{netns}: {exc}")
        self._namespaces.clear()
        shutil.rmtree(self.logdir, ignore_errors=True)
        if errors:
            raise HarnessError("teardown incomplete:\n" + "\n".join(errors))

    def __enter__(self) -> "NamespaceCluster":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.close()
        except HarnessError:
            if exc_type is None:
                raise
            # do not mask the test's own exception; the teardown problem is secondary

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.nodes)} nodes, {len(self.pods)} pods"
        return f"<NamespaceCluster {getattr(self, 'prefix', '?')} {state}>"


__all__ = [
    "Client",
    "CommandError",
    "Connection",
    "HarnessError",
    "NamespaceCluster",
    "Node",
    "Pod",
    "ProbeResult",
    "Server",
    "cleanup_stale",
    "list_netns",
    "require_root_and_netns",
    "summarize",
]
