"""Echo server used as the workload of the namespace-cluster harness.

Run inside a (pod or node) network namespace::

    python3 -m e2e.netns.echo --name web-1 --tcp 8080 --udp 5353 [--sctp 9999]

Every request is answered with ONE line of JSON::

    {"pod": NAME, "client": "<source ip seen>", "client_port": N,
     "proto": "tcp"|"udp"|"sctp", "port": <local port>}

Stream protocols (TCP, SCTP one-to-one style):

* If the first line starts with ``GET `` the connection is treated as
  HTTP/1.0: the request headers are read, ``HTTP/1.0 200 OK`` with a JSON body
  is sent and the connection is closed by the server.
* Otherwise the connection is in *line mode*: every received line is answered
  with the JSON line and the connection stays open until the client closes it.
  This is what long-lived-connection tests use.

UDP: every datagram is answered with the JSON line, sent from the address the
datagram was addressed to (``IP_PKTINFO``/``IPV6_PKTINFO``), so replies match
the conntrack entry even on hosts with several addresses.

Listens on all IPv4 and IPv6 addresses with one socket per family. If a
protocol/family is unavailable (e.g. no SCTP in the kernel) that listener is
skipped with a message on stderr. ``READY`` is printed on stdout once every
possible listener is bound.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import threading
from typing import Callable

#: Linux value of IP_PKTINFO (not exported by the Python socket module).
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)

#: Largest HTTP header block we accept before giving up on a client.
MAX_HEADER_BYTES = 64 * 1024


def normalize_ip(addr: str) -> str:
    """Strip a ``::ffff:`` IPv4-mapped prefix and any ``%scope`` suffix."""
    if addr.startswith("::ffff:") and "." in addr:
        return addr[len("::ffff:"):]
    return addr.split("%", 1)[0]


def reply_line(name: str, proto: str, peer: tuple, local_port: int) -> bytes:
    """The JSON reply (newline terminated) for one request."""
    return (
        json.dumps(
            {
                "pod": name,
                "client": normalize_ip(peer[0]),
                "client_port": peer[1],
                "proto": proto,
                "port": local_port,
            }
        ).encode()
        + b"\n"
    )


def log(msg: str) -> None:
    """Write a diagnostic line to stderr (never stdout: that carries READY)."""
    print(f"echo: {msg}", file=sys.stderr, flush=True)


def _spawn(target: Callable, *args: object) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()


# --------------------------------------------------------------------------- #
# stream protocols (TCP, SCTP)
# --------------------------------------------------------------------------- #


def handle_stream(conn: socket.socket, peer: tuple, name: str, proto: str, port: int) -> None:
    """Serve one TCP/SCTP connection (HTTP/1.0 or line mode)."""
    try:
        conn.settimeout(None)  # long-lived connections may idle for a long time
        rfile = conn.makefile("rb")
        first = rfile.readline()
        if not first:
            return
        line = reply_line(name, proto, peer, port)
        if first.startswith(b"GET "):
            seen = len(first)
            while True:
                header = rfile.readline()
                seen += len(header)
                if not header or header in (b"\r\n", b"\n") or seen > MAX_HEADER_BYTES:
                    break
            conn.sendall(
                b"HTTP/1.0 200 OK\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(line)}\r\n".encode()
                + b"Connection: close\r\n\r\n"
                + line
            )
            return
        # line mode: answer this and every further line until the client closes
        conn.sendall(line)
        for _ in iter(rfile.readline, b""):
            conn.sendall(line)
    except OSError:
        pass  # reset / timeout: nothing useful to do, the client sees it
    finally:
        try:
            conn.close()
        except OSError:
            pass


def accept_loop(sock: socket.socket, name: str, proto: str, port: int) -> None:
    """Accept connections forever, one thread per connection."""
    while True:
        try:
            conn, peer = sock.accept()
        except InterruptedError:
            continue
        except OSError as exc:
            log(f"{proto}/{port} accept failed: {exc}")
            continue
        _spawn(handle_stream, conn, peer, name, proto, port)


def open_stream_listener(family: int, proto_num: int, port: int) -> socket.socket:
    """A listening SOCK_STREAM socket on the wildcard address of ``family``."""
    sock = socket.socket(family, socket.SOCK_STREAM, proto_num)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("::", port))
        else:
            sock.bind(("0.0.0.0", port))
        sock.listen(4096)
    except BaseException:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------- #
# UDP
# --------------------------------------------------------------------------- #


def open_udp(family: int, port: int) -> socket.socket:
    """A UDP socket on the wildcard address that reports destination addresses."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            sock.bind(("::", port))
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.bind(("0.0.0.0", port))
    except BaseException:
        sock.close()
        raise
    return sock


def _reply_ancillary(family: int, ancdata: list) -> list:
    """Ancillary data making the reply leave from the request's destination."""
    for level, ctype, data in ancdata:
        if family == socket.AF_INET and level == socket.IPPROTO_IP and ctype == IP_PKTINFO:
            # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
            _ifindex, _spec_dst, dst = struct.unpack("i4s4s", data[:12])
            return [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("i4s4s", 0, dst, b"\0" * 4))]
        if family == socket.AF_INET6 and level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO:
            # struct in6_pktinfo { in6_addr addr; unsigned int ifindex; }
            dst, ifindex = struct.unpack("16sI", data[:20])
            link_local = dst[:2] == b"\xfe\x80"
            return [
                (socket.IPPROTO_IPV6, IPV6_PKTINFO, struct.pack("16sI", dst, ifindex if link_local else 0))
            ]
    return []


def udp_loop(sock: socket.socket, family: int, name: str, port: int) -> None:
    """Answer every datagram with the JSON line."""
    while True:
        try:
            _data, ancdata, _flags, peer = sock.recvmsg(65535, 256)
        except InterruptedError:
            continue
        except OSError as exc:
            # e.g. ICMP errors queued for an earlier reply: just keep serving
            log(f"udp/{port} recv: {exc}")
            continue
        try:
            sock.sendmsg([reply_line(name, "udp", peer, port)], _reply_ancillary(family, ancdata), 0, peer)
        except OSError as exc:
            log(f"udp/{port} reply to {peer[0]} failed: {exc}")


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #

FAMILIES = ((socket.AF_INET, "ipv4"), (socket.AF_INET6, "ipv6"))


def start(name: str, tcp: list[int], udp: list[int], sctp: list[int]) -> int:
    """Bind every listener and start its thread; returns how many were started.

    A listener that cannot be created for a reason other than "address in use"
    (missing protocol, IPv6 disabled, ...) is skipped with a stderr message.
    "Address in use" is fatal because it means the test set-up is wrong.
    """
    started = 0
    for proto, ports, proto_num in (("tcp", tcp, socket.IPPROTO_TCP), ("sctp", sctp, socket.IPPROTO_SCTP)):
        for port in ports:
            for family, fam_name in FAMILIES:
                try:
                    sock = open_stream_listener(family, proto_num, port)
                except OSError as exc:
                    if exc.errno == 98:  # EADDRINUSE
                        raise
                    log(f"skipping {proto}/{port} {fam_name} listener: {exc}")
                    continue
                _spawn(accept_loop, sock, name, proto, port)
                started += 1
    for port in udp:
        for family, fam_name in FAMILIES:
            try:
                sock = open_udp(family, port)
            except OSError as exc:
                if exc.errno == 98:
                    raise
                log(f"skipping udp/{port} {fam_name} listener: {exc}")
                continue
            _spawn(udp_loop, sock, family, name, port)
            started += 1
    return started


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse arguments, start listeners, print READY, serve forever."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="reported as 'pod' in every reply")
    parser.add_argument("--tcp", type=int, action="append", default=[], help="TCP port (repeatable)")
    parser.add_argument("--udp", type=int, action="append", default=[], help="UDP port (repeatable)")
    parser.add_argument("--sctp", type=int, action="append", default=[], help="SCTP port (repeatable)")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        start(args.name, args.tcp, args.udp, args.sctp)
    except OSError as exc:
        log(f"cannot listen: {exc}")
        return 1
    print("READY", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
