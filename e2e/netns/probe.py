"""Probe client of the namespace-cluster harness.

Run inside any network namespace::

    python3 -m e2e.netns.probe [--proto tcp|udp|sctp] [--count N] [--timeout S]
                               [--interval S] [--bind ADDR] [--source-port P] IP PORT

Makes ``count`` sequential requests from this one process (so thousands of
requests take seconds) and prints a JSON list with one object per request::

    {"ok": bool, "pod": str|None, "client": str|None, "client_port": int|None,
     "error": str|None}

``client``/``client_port`` are the source address/port *the server saw* (what
SNAT/masquerade tests look at). ``error`` is one of ``refused``, ``timeout``,
``unreachable``, ``reset``, ``closed`` (peer closed without answering),
``unsupported`` (protocol not available in this kernel), ``bad-reply: ...``, or
the errno text of any other failure.

* TCP/SCTP requests are HTTP/1.0 ``GET /`` on a fresh connection each time.
* UDP requests use a *connected* socket so that an ICMP port-unreachable shows
  up quickly as ``refused``. Without ``--source-port`` every datagram uses a
  new socket (new ephemeral port); with ``--source-port`` one socket bound to
  that port is reused for all datagrams, like a DNS resolver does.

``--persistent`` opens ONE TCP connection in line mode instead and serves a
tiny stdin/stdout protocol (used by ``NamespaceCluster.open_connection``): it
first prints one JSON object for the connect attempt, then for every line read
on stdin sends one line to the server and prints one JSON result object. After
the first failure it exits.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import socket
import sys
import time
from typing import Any

PING = b"ping\n"


def result(
    ok: bool,
    pod: str | None = None,
    client: str | None = None,
    client_port: int | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """One result object, as printed in the JSON output."""
    return {"ok": ok, "pod": pod, "client": client, "client_port": client_port, "error": error}


def classify(exc: BaseException) -> str:
    """Map a socket exception to the short error vocabulary of the harness."""
    if isinstance(exc, (socket.timeout, TimeoutError, BlockingIOError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return "reset"
    if isinstance(exc, OSError):
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "unreachable"
        if exc.errno == errno.EPROTONOSUPPORT:
            return "unsupported"
        if exc.errno is not None:
            return os.strerror(exc.errno)
    return f"{type(exc).__name__}: {exc}"


def parse_reply(line: bytes) -> dict[str, Any]:
    """Turn one JSON reply line of the echo server into a result object."""
    try:
        data = json.loads(line)
        return result(True, data.get("pod"), data.get("client"), data.get("client_port"))
    except (ValueError, AttributeError) as exc:
        return result(False, error=f"bad-reply: {exc}: {line[:200]!r}")


def family_of(ip: str) -> int:
    """AF_INET or AF_INET6 for a literal address (hostnames resolved)."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(ip.split("%")[0]).version == 6 else socket.AF_INET
    except ValueError:
        return socket.getaddrinfo(ip, None)[0][0]


def sockaddr(ip: str, port: int) -> tuple:
    """Socket address for ``ip`` (``fe80::1%eth0`` scope ids included)."""
    if "%" in ip:
        return socket.getaddrinfo(ip, port, socket.AF_INET6, 0, 0, socket.AI_NUMERICHOST)[0][4]
    return (ip, port)


class Deadline:
    """Per-request time budget shared by connect/send/recv."""

    def __init__(self, timeout: float) -> None:
        self.end = time.monotonic() + timeout

    def arm(self, sock: socket.socket) -> None:
        """Set the socket timeout to what is left of the budget."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline exceeded")
        sock.settimeout(left)


def make_socket(family: int, kind: int, proto: int, bind: str | None, source_port: int | None) -> socket.socket:
    """A socket, bound to ``bind``/``source_port`` if given."""
    sock = socket.socket(family, kind, proto)
    try:
        if bind or source_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
            sock.bind(sockaddr(bind or wildcard, source_port or 0))
    except BaseException:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------- #
# stream protocols
# --------------------------------------------------------------------------- #


def stream_request(
    ip: str, port: int, proto: int, timeout: float, bind: str | None, source_port: int | None
) -> dict[str, Any]:
    """One HTTP/1.0 GET over a new TCP/SCTP connection."""
    family = family_of(ip)
    deadline = Deadline(timeout)
    try:
        sock = make_socket(family, socket.SOCK_STREAM, proto, bind, source_port)
    except OSError as exc:
        return result(False, error=classify(exc))
    try:
        deadline.arm(sock)
        sock.connect(sockaddr(ip, port))
        deadline.arm(sock)
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {ip}\r\nUser-Agent: nfp-probe\r\n\r\n".encode())
        chunks = []
        while True:
            deadline.arm(sock)
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        if not data:
            return result(False, error="closed")
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
            return result(False, error=f"bad-reply: {head[:100]!r}")
        return parse_reply(body.strip())
    except OSError as exc:
        return result(False, error=classify(exc))
    finally:
        sock.close()


# --------------------------------------------------------------------------- #
# UDP
# --------------------------------------------------------------------------- #


def drain(sock: socket.socket) -> None:
    """Discard late replies/errors belonging to earlier (timed out) requests."""
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # a stale queued ICMP error: consumed, keep draining
    finally:
        sock.setblocking(True)


def udp_exchange(sock: socket.socket, timeout: float) -> dict[str, Any]:
    """Send one datagram on a connected socket and wait for the reply."""
    deadline = Deadline(timeout)
    try:
        deadline.arm(sock)
        sock.send(PING)
        deadline.arm(sock)
        return parse_reply(sock.recv(65536).strip())
    except OSError as exc:
        return result(False, error=classify(exc))


def udp_requests(
    ip: str, port: int, count: int, timeout: float, interval: float, bind: str | None, source_port: int | None
) -> list[dict[str, Any]]:
    """``count`` UDP request/replies (one shared socket when ``source_port``)."""
    family = family_of(ip)
    out: list[dict[str, Any]] = []
    shared: socket.socket | None = None
    try:
        for i in range(count):
            if i and interval:
                time.sleep(interval)
            if source_port:
                if shared is None:
                    try:
                        shared = make_socket(family, socket.SOCK_DGRAM, 0, bind, source_port)
                        shared.connect(sockaddr(ip, port))
                    except OSError as exc:
                        if shared is not None:
                            shared.close()
                            shared = None
                        out.append(result(False, error=classify(exc)))
                        continue
                drain(shared)
                out.append(udp_exchange(shared, timeout))
                continue
            try:
                sock = make_socket(family, socket.SOCK_DGRAM, 0, bind, None)
            except OSError as exc:
                out.append(result(False, error=classify(exc)))
                continue
            try:
                sock.connect(sockaddr(ip, port))
                out.append(udp_exchange(sock, timeout))
            except OSError as exc:
                out.append(result(False, error=classify(exc)))
            finally:
                sock.close()
    finally:
        if shared is not None:
            shared.close()
    return out


# --------------------------------------------------------------------------- #
# persistent line-mode connection
# --------------------------------------------------------------------------- #


def emit(obj: dict[str, Any]) -> None:
    """Print one JSON object per line, flushed (the harness reads it)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def persistent(ip: str, port: int, timeout: float, bind: str | None, source_port: int | None) -> int:
    """Hold one line-mode TCP connection; one exchange per stdin line."""
    family = family_of(ip)
    try:
        sock = make_socket(family, socket.SOCK_STREAM, 0, bind, source_port)
        sock.settimeout(timeout)
        sock.connect(sockaddr(ip, port))
    except OSError as exc:
        emit(result(False, error=classify(exc)))
        return 1
    local = sock.getsockname()
    emit({**result(True), "local": [local[0], local[1]]})
    rfile = sock.makefile("rb")
    for _command in sys.stdin:
        try:
            sock.settimeout(timeout)
            sock.sendall(PING)
            line = rfile.readline()
        except OSError as exc:
            emit(result(False, error=classify(exc)))
            return 1
        if not line:
            emit(result(False, error="closed"))
            return 1
        res = parse_reply(line.strip())
        emit(res)
        if not res["ok"]:
            return 1
    sock.close()
    return 0


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #


def main(argv: list[str] | None = None) -> int:
    """Entry point (see module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ip")
    parser.add_argument("port", type=int)
    parser.add_argument("--proto", choices=("tcp", "udp", "sctp"), default="tcp")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1.0, help="per request, seconds")
    parser.add_argument("--interval", type=float, default=0.0, help="pause between requests, seconds")
    parser.add_argument("--bind", default=None, help="source address")
    parser.add_argument("--source-port", type=int, default=None, help="fixed source port")
    parser.add_argument("--persistent", action="store_true", help="one long-lived line-mode TCP connection")
    args = parser.parse_args(argv)

    if args.persistent:
        return persistent(args.ip, args.port, args.timeout, args.bind, args.source_port)

    if args.proto == "udp":
        results = udp_requests(
            args.ip, args.port, args.count, args.timeout, args.interval, args.bind, args.source_port
        )
    else:
        proto_num = socket.IPPROTO_SCTP if args.proto == "sctp" else socket.IPPROTO_TCP
        results = []
        for i in range(args.count):
            if i and args.interval:
                time.sleep(args.interval)
            results.append(stream_request(args.ip, args.port, proto_num, args.timeout, args.bind, args.source_port))
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
