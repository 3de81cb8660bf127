"""L2 announcement data plane: ARP/NDP frames (pure), and the responder against real Linux neighbours.

The kernel tests run each responder in its node's namespace (a child process, as the agent runs)
and judge it by what a client's kernel learns: its neighbour table, never end-to-end traffic,
since no interface holds the announced addresses.
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.netns import NamespaceCluster, require_root_and_netns
from e2e.netns.cluster import Client, Node, cleanup_stale
from nftproxy.lb import frames
from nftproxy.lb.frames import (
    ARP_REPLY,
    ARP_REQUEST,
    NA_FLAG_OVERRIDE,
    NA_FLAG_SOLICITED,
    Arp,
    build_arp,
    mac_bytes,
    mac_text,
    parse_arp,
    parse_ndp,
    react,
)
from nftproxy.lb import links
from nftproxy.lb.responder import L2Responder, filter_program

REPO = Path(__file__).resolve().parents[1]
OUR_MAC = mac_bytes("02:00:00:00:00:aa")
OTHER_MAC = mac_bytes("02:00:00:00:00:bb")
ASKER_MAC = mac_bytes("02:00:00:00:00:cc")
V4 = ipaddress.IPv4Address("198.18.0.200")
V6 = ipaddress.IPv6Address("2001:db8::200")
ASKER4 = ipaddress.IPv4Address("198.18.0.101")
ASKER6 = ipaddress.IPv6Address("2001:db8::101")
HELD: frozenset[frames.IPAddress] = frozenset({V4, V6})


# --------------------------------------------------------------------------- #
# independent helpers: NS/NA built and checked without nftproxy's code
# --------------------------------------------------------------------------- #


def ones_complement_ok(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, message: bytes) -> bool:
    """A valid ICMPv6 checksum makes the one's complement sum over pseudo header + message 0xffff."""
    data = src.packed + dst.packed + len(message).to_bytes(4, "big") + bytes([0, 0, 0, 58]) + message
    data += b"\x00" * (len(data) % 2)
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    return total % 0xFFFF == 0 and total != 0


def checksummed(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, message: bytes) -> bytes:
    """`message` with its checksum field filled in (by searching the value that validates: slow but independent)."""
    data = src.packed + dst.packed + len(message).to_bytes(4, "big") + bytes([0, 0, 0, 58]) + message
    data += b"\x00" * (len(data) % 2)
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)) % 0xFFFF
    checksum = 0xFFFF - total
    result = message[:2] + checksum.to_bytes(2, "big") + message[4:]
    assert ones_complement_ok(src, dst, result)
    return result


def ndp_frame(
    kind: int,
    src: ipaddress.IPv6Address,
    dst: ipaddress.IPv6Address,
    target: ipaddress.IPv6Address,
    eth_src: bytes,
    eth_dst: bytes,
    *,
    flags: int = 0,
    options: bytes = b"",
    hop_limit: int = 255,
    corrupt: bool = False,
) -> bytes:
    """An NS (135) or NA (136) frame assembled by hand."""
    message = bytes([kind, 0, 0, 0, flags, 0, 0, 0]) + target.packed + options
    message = checksummed(src, dst, message)
    if corrupt:
        message = message[:-1] + bytes([message[-1] ^ 1])
    ipv6 = bytes([0x60, 0, 0, 0]) + len(message).to_bytes(2, "big") + bytes([58, hop_limit]) + src.packed + dst.packed
    return eth_dst + eth_src + b"\x86\xdd" + ipv6 + message


def lladdr_option(kind: int, mac: bytes) -> bytes:
    return bytes([kind, 1]) + mac


def solicitation(src: ipaddress.IPv6Address = ASKER6, unicast: bool = False, with_option: bool = True) -> bytes:
    """NS for V6 from the asker: to the solicited-node group, or a unicast NUD probe to V6 at our MAC."""
    dst = V6 if unicast else ipaddress.IPv6Address("ff02::1:ff00:200")
    eth_dst = OUR_MAC if unicast else mac_bytes("33:33:ff:00:02:00")
    options = lladdr_option(1, ASKER_MAC) if with_option else b""
    return ndp_frame(135, src, dst, V6, ASKER_MAC, eth_dst, options=options)


def split_na(frame: bytes) -> dict[str, Any]:
    """The fields of an NA frame, read by hand."""
    assert frame[12:14] == b"\x86\xdd"
    ip = frame[14:54]
    message = frame[54:]
    src, dst = ipaddress.IPv6Address(ip[8:24]), ipaddress.IPv6Address(ip[24:40])
    assert int.from_bytes(ip[4:6], "big") == len(message)
    return {
        "eth_dst": frame[0:6], "eth_src": frame[6:12], "next_header": ip[6], "hop_limit": ip[7],
        "src": src, "dst": dst, "type": message[0], "code": message[1], "flags": message[4],
        "target": ipaddress.IPv6Address(message[8:24]), "options": message[24:],
        "checksum_ok": ones_complement_ok(src, dst, message),
    }  # fmt: skip


# --------------------------------------------------------------------------- #
# ARP frames
# --------------------------------------------------------------------------- #


def test_gratuitous_arp_is_a_broadcast_request_and_a_reply_linux_counts_as_gratuitous() -> None:
    request, reply = frames.gratuitous_arp(OUR_MAC, V4)
    assert request.hex() == (
        "ffffffffffff" "0200000000aa" "0806" "0001" "0800" "06" "04" "0001"
        "0200000000aa" "c61200c8" "000000000000" "c61200c8"
    )  # fmt: skip
    parsed = parse_arp(reply)
    assert parsed == Arp(ARP_REPLY, OUR_MAC, V4, OUR_MAC, V4, OUR_MAC)  # THA == SHA: Linux's arp_is_garp
    assert reply[:6] == frames.BROADCAST_MAC


def test_arp_request_for_a_held_address_gets_a_unicast_reply() -> None:
    request = build_arp(ARP_REQUEST, ASKER_MAC, ASKER4, frames.ZERO_MAC, V4, frames.BROADCAST_MAC)
    reaction = react(request, OUR_MAC, HELD)
    assert reaction is not None and reaction.answered == V4 and reaction.conflict is None
    assert reaction.reply is not None
    assert reaction.reply[:12] == ASKER_MAC + OUR_MAC
    assert parse_arp(reaction.reply) == Arp(ARP_REPLY, OUR_MAC, V4, ASKER_MAC, ASKER4, OUR_MAC)


def test_arp_requests_not_ours_or_from_our_own_mac_are_ignored() -> None:
    other_ip = ipaddress.IPv4Address("198.18.0.201")
    assert react(build_arp(ARP_REQUEST, ASKER_MAC, ASKER4, frames.ZERO_MAC, other_ip, frames.BROADCAST_MAC),
                 OUR_MAC, HELD) is None  # fmt: skip
    assert react(build_arp(ARP_REQUEST, OUR_MAC, ASKER4, frames.ZERO_MAC, V4, frames.BROADCAST_MAC),
                 OUR_MAC, HELD) is None  # fmt: skip
    assert react(build_arp(ARP_REQUEST, ASKER_MAC, ASKER4, frames.ZERO_MAC, V4, frames.BROADCAST_MAC),
                 OUR_MAC, frozenset()) is None  # fmt: skip


def test_arp_probe_for_a_held_address_is_defended() -> None:
    probe = build_arp(ARP_REQUEST, ASKER_MAC, frames.UNSPECIFIED4, frames.ZERO_MAC, V4, frames.BROADCAST_MAC)
    reaction = react(probe, OUR_MAC, HELD)
    assert reaction is not None and reaction.reply is not None
    assert parse_arp(reaction.reply) == Arp(ARP_REPLY, OUR_MAC, V4, ASKER_MAC, frames.UNSPECIFIED4, OUR_MAC)


@pytest.mark.parametrize("gratuitous", [0, 1], ids=["request", "reply"])
def test_another_mac_claiming_a_held_address_is_a_conflict_and_not_answered(gratuitous: int) -> None:
    claim = frames.gratuitous_arp(OTHER_MAC, V4)[gratuitous]
    reaction = react(claim, OUR_MAC, HELD)
    assert reaction is not None and reaction.reply is None and reaction.conflict == (V4, OTHER_MAC)
    assert react(frames.gratuitous_arp(OUR_MAC, V4)[gratuitous], OUR_MAC, HELD) is None
    assert react(claim, OUR_MAC, frozenset({V6})) is None


def test_arp_parser_refuses_non_ethernet_ipv4_arp() -> None:
    good = build_arp(ARP_REQUEST, ASKER_MAC, ASKER4, frames.ZERO_MAC, V4, frames.BROADCAST_MAC)
    assert parse_arp(good[:-1]) is None
    assert parse_arp(good[:14] + b"\x00\x06" + good[16:]) is None  # hardware type IEEE 802
    assert parse_arp(good[:12] + b"\x08\x00" + good[14:]) is None  # IPv4 ethertype
    assert parse_arp(good + b"\x00" * 18) is not None  # Ethernet padding to 60 bytes


# --------------------------------------------------------------------------- #
# NDP frames
# --------------------------------------------------------------------------- #


def test_solicited_node_group_and_its_mac() -> None:
    group = frames.solicited_node_group(ipaddress.IPv6Address("2001:db8::12:3456:789a"))
    assert group == ipaddress.IPv6Address("ff02::1:ff56:789a")
    assert mac_text(frames.multicast_mac(group)) == "33:33:ff:56:78:9a"


def test_checksum_matches_an_independent_computation() -> None:
    frame = solicitation()
    message = frame[54:]
    assert frames.icmpv6_checksum(ASKER6, ipaddress.IPv6Address("ff02::1:ff00:200"), message) == 0
    zeroed = message[:2] + b"\x00\x00" + message[4:]
    value = frames.icmpv6_checksum(ASKER6, ipaddress.IPv6Address("ff02::1:ff00:200"), zeroed)
    assert value.to_bytes(2, "big") == message[2:4]


@pytest.mark.parametrize("unicast", [False, True], ids=["multicast", "unicast-nud"])
def test_neighbor_solicitation_gets_a_solicited_override_advertisement(unicast: bool) -> None:
    reaction = react(solicitation(unicast=unicast), OUR_MAC, HELD)
    assert reaction is not None and reaction.answered == V6 and reaction.reply is not None
    na = split_na(reaction.reply)
    assert na["checksum_ok"]
    assert (na["eth_dst"], na["eth_src"], na["src"], na["dst"]) == (ASKER_MAC, OUR_MAC, V6, ASKER6)
    assert (na["next_header"], na["hop_limit"], na["type"], na["code"], na["target"]) == (58, 255, 136, 0, V6)
    assert na["flags"] == NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE
    assert na["options"] == lladdr_option(2, OUR_MAC)


def test_solicitation_without_source_option_is_answered_to_the_frame_source() -> None:
    reaction = react(solicitation(unicast=True, with_option=False), OUR_MAC, HELD)
    assert reaction is not None and reaction.reply is not None
    assert split_na(reaction.reply)["eth_dst"] == ASKER_MAC


def test_duplicate_address_detection_is_answered_to_all_nodes_without_solicited() -> None:
    dad = solicitation(src=frames.UNSPECIFIED6, with_option=False)
    reaction = react(dad, OUR_MAC, HELD)
    assert reaction is not None and reaction.reply is not None
    na = split_na(reaction.reply)
    assert (na["dst"], mac_text(na["eth_dst"]), na["flags"]) == (
        frames.ALL_NODES, "33:33:00:00:00:01", NA_FLAG_OVERRIDE)
    assert na["checksum_ok"]


def test_unsolicited_advertisement_overrides_and_goes_to_all_nodes() -> None:
    (frame,) = frames.announcements(OUR_MAC, V6)
    na = split_na(frame)
    assert na["checksum_ok"] and na["hop_limit"] == 255
    assert (na["src"], na["dst"], na["target"], na["flags"]) == (V6, frames.ALL_NODES, V6, NA_FLAG_OVERRIDE)
    assert mac_text(na["eth_dst"]) == "33:33:00:00:00:01" and na["options"] == lladdr_option(2, OUR_MAC)
    assert len(frames.announcements(OUR_MAC, V4)) == 2


def test_invalid_solicitations_are_dropped() -> None:
    assert parse_ndp(solicitation()) is not None
    assert parse_ndp(ndp_frame(135, ASKER6, V6, V6, ASKER_MAC, OUR_MAC, corrupt=True)) is None
    assert parse_ndp(ndp_frame(135, ASKER6, V6, V6, ASKER_MAC, OUR_MAC, hop_limit=254)) is None
    assert parse_ndp(ndp_frame(135, ASKER6, V6, V6, ASKER_MAC, OUR_MAC, options=b"\x01\x00" + b"\x00" * 6)) is None
    assert parse_ndp(ndp_frame(135, ASKER6, V6, V6, ASKER_MAC, OUR_MAC, options=b"\x01\x02" + b"\x00" * 6)) is None
    dad_with_option = ndp_frame(135, frames.UNSPECIFIED6, ipaddress.IPv6Address("ff02::1:ff00:200"), V6,
                                ASKER_MAC, OUR_MAC, options=lladdr_option(1, ASKER_MAC))  # fmt: skip
    assert parse_ndp(dad_with_option) is None
    multicast_target = ipaddress.IPv6Address("ff02::1")
    assert parse_ndp(ndp_frame(135, ASKER6, V6, multicast_target, ASKER_MAC, OUR_MAC)) is None
    solicited_to_all = ndp_frame(136, ASKER6, frames.ALL_NODES, V6, ASKER_MAC, OUR_MAC, flags=NA_FLAG_SOLICITED)
    assert parse_ndp(solicited_to_all) is None
    assert parse_ndp(solicitation() + b"\x00" * 4) is not None  # trailing bytes beyond the payload length


def test_advertisement_from_another_mac_for_a_held_address_is_a_conflict() -> None:
    (theirs,) = frames.announcements(OTHER_MAC, V6)
    reaction = react(theirs, OUR_MAC, HELD)
    assert reaction is not None and reaction.reply is None and reaction.conflict == (V6, OTHER_MAC)
    (ours,) = frames.announcements(OUR_MAC, V6)
    assert react(ours, OUR_MAC, HELD) is None
    no_option = ndp_frame(136, V6, frames.ALL_NODES, V6, OTHER_MAC, mac_bytes("33:33:00:00:00:01"),
                          flags=NA_FLAG_OVERRIDE)
    assert react(no_option, OUR_MAC, HELD).conflict == (V6, OTHER_MAC)  # type: ignore[union-attr]
    assert react(solicitation(), OUR_MAC, frozenset({V4})) is None


# --------------------------------------------------------------------------- #
# the socket filter, run on a small classic-BPF interpreter
# --------------------------------------------------------------------------- #


def run_bpf(program: bytes, frame: bytes, pkttype: int) -> int:
    """Interpret the opcodes the filter uses (ld w/h/b abs incl. the pkttype ancillary, jeq/jgt/jge k, ret k)."""
    code = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        if op in (0x20, 0x28, 0x30):
            size = {0x20: 4, 0x28: 2, 0x30: 1}[op]
            if k == 0xFFFFF004:
                acc = pkttype
            elif k + size > len(frame):
                return 0  # out-of-bounds loads drop the packet
            else:
                acc = int.from_bytes(frame[k : k + size], "big")
            pc += 1
        elif op in (0x15, 0x25, 0x35):
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k}[op]
            pc += 1 + (jt if taken else jf)
        elif op == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")


def test_filter_passes_only_arp_and_neighbor_discovery_for_this_host() -> None:
    program = filter_program()
    arp = build_arp(ARP_REQUEST, ASKER_MAC, ASKER4, frames.ZERO_MAC, V4, frames.BROADCAST_MAC)
    (na,) = frames.announcements(OTHER_MAC, V6)
    echo = ndp_frame(128, ASKER6, V6, V6, ASKER_MAC, OUR_MAC)  # ICMPv6 echo request, same layout
    ipv4_udp = OUR_MAC + ASKER_MAC + b"\x08\x00" + b"\x45" + b"\x00" * 60
    for frame in (arp, solicitation(), na):
        for pkttype in (0, 1, 2):  # to us, broadcast, multicast
            assert run_bpf(program, frame, pkttype) > 0
        for pkttype in (3, 4):  # to another host (promiscuous), our own send
            assert run_bpf(program, frame, pkttype) == 0
    for frame in (echo, ipv4_udp, arp[:13]):
        assert run_bpf(program, frame, 0) == 0


# --------------------------------------------------------------------------- #
# netlink messages (pure)
# --------------------------------------------------------------------------- #


def test_netlink_link_message_gives_name_and_carrier() -> None:
    def newlink(flags: int) -> bytes:
        body = struct.pack("=BxHiII", 0, 1, 7, flags, 0) + links.attribute(links.IFLA_IFNAME, b"eth0\x00")
        return links.request(links.RTM_NEWLINK, 0, 42, body)

    up = newlink(0x1 | links.IFF_LOWER_UP)
    [(kind, seq, payload)] = list(links.messages(up + newlink(0x1)[:-1]))  # a truncated second is skipped
    assert (kind, seq) == (links.RTM_NEWLINK, 42)
    assert links.link_carrier(payload) == ("eth0", True)
    assert links.link_carrier(list(links.messages(newlink(0x1)))[0][2]) == ("eth0", False)


def test_netlink_address_message_gives_index_and_addresses() -> None:
    local = ipaddress.IPv4Address("198.18.0.11")
    peer = ipaddress.IPv4Address("198.18.0.99")
    body = struct.pack("=BBBBI", 2, 24, 0, 0, 5)
    body += links.attribute(links.IFA_ADDRESS, peer.packed) + links.attribute(links.IFA_LOCAL, local.packed)
    assert links.address_entry(body) == (5, {local, peer})
    v6 = struct.pack("=BBBBI", 10, 64, 0, 0, 3) + links.attribute(links.IFA_ADDRESS, V6.packed)
    assert links.address_entry(v6) == (3, {V6})


# --------------------------------------------------------------------------- #
# the responder's API without sockets
# --------------------------------------------------------------------------- #


def test_responder_api_before_start() -> None:
    with pytest.raises(ValueError):
        L2Responder(schedule=(0.0, -1.0))
    responder = L2Responder()
    responder.set_addresses({"eth0": {"198.18.0.200"}})
    with pytest.raises(ValueError):
        responder.set_addresses({"eth0": {"198.18.0.201", "not-an-ip"}})
    assert responder.announced() == {}  # nothing is answered before start()
    responder.stop()
    with pytest.raises(RuntimeError):
        responder.start()


# --------------------------------------------------------------------------- #
# kernel tests: responders in node namespaces, a client's kernel as the judge
# --------------------------------------------------------------------------- #

DRIVER = r"""
import json, sys, threading, time
from nftproxy.lb.links import CarrierWatch, has_carrier, interface_of_address
from nftproxy.lb.responder import L2Responder

lock = threading.Lock()

def emit(**message):
    with lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

def conflict(interface, ip, mac):
    emit(event="conflict", interface=interface, ip=ip, mac=mac, t=time.monotonic())

def carrier(interface, up):
    emit(event="carrier", interface=interface, carrier=up, t=time.monotonic())

responder = L2Responder(on_conflict=conflict,
                        schedule=[float(s) for s in sys.argv[1:]] or (0.0, 0.25, 0.5, 1.0, 2.0, 4.0))
responder.start()
watch = None
emit(reply="ready")
for line in sys.stdin:
    command = json.loads(line)
    op = command["op"]
    if op == "set":
        start = time.perf_counter()
        responder.set_addresses({name: set(ips) for name, ips in command["wanted"].items()})
        took = time.perf_counter() - start
        emit(reply=op, took=took, announced={k: sorted(v) for k, v in responder.announced().items()})
    elif op == "stats":
        stats = {f"{name} {ip}": [s.answered, s.announcements, s.conflicts]
                 for (name, ip), s in responder.stats().items()}
        emit(reply=op, stats=stats, received=responder.frames_received(),
             announced={k: sorted(v) for k, v in responder.announced().items()})
    elif op == "watch":
        watch = CarrierWatch(command["interfaces"], carrier)
        watch.start()
        emit(reply=op)
    elif op == "reannounce":
        responder.reannounce(command["interface"])
        emit(reply=op)
    elif op == "links":
        emit(reply=op, interfaces={a: interface_of_address(a) for a in command["addresses"]},
             carrier={name: has_carrier(name) for name in command["interfaces"]})
responder.stop()
if watch is not None:
    watch.stop()
emit(reply="stopped", threads=threading.active_count())
"""


class Speaker:
    """A responder (and optionally a carrier watch) running in a node's namespace, driven over stdin."""

    def __init__(self, node: Node, schedule: tuple[float, ...] = ()) -> None:
        self.node = node
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.log = tempfile.TemporaryFile("w+")  # the responder's warnings; never a pipe that could fill up
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", node.netns, sys.executable, "-c", DRIVER, *map(str, schedule)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=REPO,
        )  # fmt: skip
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_reply("ready")
        self.mac = node_mac(node)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            message = json.loads(line)
            if "event" in message:
                self.events.append(message)
            else:
                self.replies.put(message)

    def wait_reply(self, op: str, timeout: float = 10.0) -> dict[str, Any]:
        try:
            message = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            self.log.seek(0)
            raise AssertionError(f"no {op!r} reply from {self.node.name}: {self.log.read()}") from None
        assert message.get("reply") == op, message
        return message

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        return self.wait_reply(op)

    def set(self, *ips: str) -> dict[str, Any]:
        reply = self.call("set", wanted={"eth0": list(ips)} if ips else {})
        # Blocking on the announcements would take their whole schedule (seconds); a busy shared machine
        # can stretch a fast call to tens of milliseconds, so the bound is generous, not a benchmark.
        assert reply["took"] < 0.5, f"set_addresses blocked the caller for {reply['took']:.3f} s"
        return reply

    def stats(self) -> dict[str, list[int]]:
        return self.call("stats")["stats"]

    def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if predicate(event):
                    return event
            time.sleep(0.01)
        raise AssertionError(f"no matching event from {self.node.name} within {timeout} s: {self.events}")

    def close(self) -> None:
        """Stop the responder through stdin (it must join all its threads), then reap the process."""
        try:
            if self.process.poll() is None:
                assert self.process.stdin is not None
                self.process.stdin.close()
                reply = self.wait_reply("stopped", timeout=5)
                assert reply["threads"] == 1, "threads left running after stop()"
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.log.close()


def node_mac(node: Node) -> str:
    out = subprocess.run(["ip", "-n", node.netns, "-j", "link", "show", "eth0"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]["address"]


def neighbour(client: Client, ip: str) -> dict[str, Any] | None:
    """The client's neighbour entry for `ip` (lladdr, state), if any."""
    out = subprocess.run(["ip", "-n", client.netns, "-j", "neigh", "show", ip, "dev", "eth0"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    entries = json.loads(out.stdout or "[]")
    return entries[0] if entries else None


def poke(client: Client, ip: str) -> None:
    """Send one UDP datagram to `ip`: the client's kernel resolves it first."""
    subprocess.run(["ip", "netns", "exec", client.netns, "bash", "-c", f"echo x > /dev/udp/{ip}/9"],
                   capture_output=True, check=False)  # fmt: skip


def resolve(client: Client, ip: str, timeout: float = 2.0) -> dict[str, Any]:
    """Make the client resolve `ip`; its entry once it has a MAC or has FAILED."""
    poke(client, ip)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = neighbour(client, ip)
        if entry and ("lladdr" in entry or "FAILED" in entry.get("state", [])):
            return entry
        time.sleep(0.02)
    raise AssertionError(f"{ip} neither resolved nor failed: {neighbour(client, ip)}")


def hold(client: Client, speaker: Speaker, *ips: str) -> None:
    """`speaker` takes `ips` and the client resolves each of them to its MAC."""
    speaker.set(*ips)
    for ip in ips:
        assert resolve(client, ip).get("lladdr") == speaker.mac, ip


def wait_lladdr(client: Client, ip: str, mac: str, since: float, timeout: float) -> float:
    """Seconds from `since` until the client's entry for `ip` holds `mac` (the client sending nothing)."""
    while time.monotonic() - since < timeout:
        entry = neighbour(client, ip)
        if entry and entry.get("lladdr") == mac:
            return time.monotonic() - since
        time.sleep(0.01)
    raise AssertionError(f"{ip} still at {neighbour(client, ip)} after {timeout} s, expected {mac}")


def joined_groups(node: Node) -> set[str]:
    out = subprocess.run(["ip", "-n", node.netns, "maddr", "show", "dev", "eth0"],
                         capture_output=True, text=True, check=True)
    return {line.split()[1] for line in out.stdout.splitlines() if line.strip().startswith("inet6")}


@pytest.fixture(scope="module")
def lan() -> Iterator[tuple[NamespaceCluster, Client]]:
    """Two nodes and a client on one bridge; the client gives up resolving after 3 x 200 ms."""
    require_root_and_netns()
    cleanup_stale()
    with NamespaceCluster(nodes=2, dual_stack=True) as cluster:
        client = cluster.add_client("c")
        cluster.exec(client, ["sysctl", "-q", "-w", "net.ipv4.neigh.eth0.retrans_time_ms=200",
                              "net.ipv6.neigh.eth0.retrans_time_ms=200"])  # fmt: skip
        yield cluster, client


@pytest.fixture
def speakers(lan: tuple[NamespaceCluster, Client]) -> Iterator[tuple[Speaker, Speaker]]:
    cluster, _ = lan
    started: list[Speaker] = []
    try:
        for node in cluster.nodes:
            started.append(Speaker(node))
        yield started[0], started[1]
    finally:
        for speaker in started:
            speaker.close()


@pytest.mark.kernel
def test_client_learns_the_responders_mac_over_arp_and_ndp(
    lan: tuple[NamespaceCluster, Client], speakers: tuple[Speaker, Speaker],
) -> None:
    _, client = lan
    a, _b = speakers
    reply = a.set("198.18.0.200", "2001:db8::200")
    assert reply["announced"] == {"eth0": ["198.18.0.200", "2001:db8::200"]}
    assert {"ff02::1:ff00:200"} <= joined_groups(a.node), "solicited-node group joined"
    for ip in ("198.18.0.200", "2001:db8::200"):
        entry = resolve(client, ip)
        assert entry.get("lladdr") == a.mac, entry
    stats = a.stats()
    assert stats["eth0 198.18.0.200"][0] >= 1 and stats["eth0 2001:db8::200"][0] >= 1  # answered
    assert stats["eth0 198.18.0.200"][1] >= 2 and stats["eth0 2001:db8::200"][1] >= 1  # announced
    # the kernel filter keeps ordinary traffic away from the responder
    before = a.call("stats")["received"]["eth0"]
    for _ in range(30):
        subprocess.run(["ip", "netns", "exec", client.netns, "bash", "-c", f"echo x > /dev/udp/{a.node.ip}/9"],
                       check=False)
    assert a.call("stats")["received"]["eth0"] - before < 10


@pytest.mark.kernel
def test_a_unicast_nud_probe_is_answered(
    lan: tuple[NamespaceCluster, Client], speakers: tuple[Speaker, Speaker],
) -> None:
    _, client = lan
    a, _b = speakers
    hold(client, a, "2001:db8::205")
    answered = a.stats()["eth0 2001:db8::205"][0]
    # PROBE sends a unicast NS to the cached MAC; only an answer makes the entry REACHABLE again
    subprocess.run(["ip", "-n", client.netns, "neigh", "change", "2001:db8::205", "dev", "eth0", "nud", "probe"],
                   check=True)
    deadline = time.monotonic() + 2
    while "REACHABLE" not in (neighbour(client, "2001:db8::205") or {}).get("state", []):
        assert time.monotonic() < deadline, neighbour(client, "2001:db8::205")
        time.sleep(0.02)
    assert a.stats()["eth0 2001:db8::205"][0] > answered


@pytest.mark.kernel
def test_announcements_follow_the_schedule_and_reannounce(lan: tuple[NamespaceCluster, Client]) -> None:
    cluster, _ = lan
    speaker = Speaker(cluster.nodes[0], schedule=(0.0, 0.2))
    ips = ("198.18.0.206", "2001:db8::206")

    def announced_frames() -> tuple[int, ...]:
        return tuple(speaker.stats().get(f"eth0 {ip}", [0, 0])[1] for ip in ips)

    def settles_at(expected: tuple[int, int]) -> None:
        deadline = time.monotonic() + 2
        while announced_frames() != expected:
            assert time.monotonic() < deadline, announced_frames()
            time.sleep(0.05)
        time.sleep(0.3)  # and no more than that
        assert announced_frames() == expected

    try:
        speaker.set(*ips)
        settles_at((4, 2))  # two rounds: gratuitous request + reply, one unsolicited NA
        speaker.call("reannounce", interface="eth9")
        speaker.call("reannounce", interface="eth0")
        settles_at((8, 4))
    finally:
        speaker.close()


@pytest.mark.kernel
def test_only_the_holder_answers(lan: tuple[NamespaceCluster, Client], speakers: tuple[Speaker, Speaker]) -> None:
    _, client = lan
    a, b = speakers
    hold(client, a, "198.18.0.210", "2001:db8::210")
    hold(client, b, "198.18.0.211", "2001:db8::211")
    for ip in ("198.18.0.212", "2001:db8::212"):  # held by nobody: no kernel, no responder answers
        entry = resolve(client, ip)
        assert "lladdr" not in entry and "FAILED" in entry["state"], entry
    assert not any(key.endswith(".210") or key.endswith("::210") for key in b.stats())


@pytest.mark.kernel
def test_moving_an_address_updates_existing_client_entries_unasked(
    lan: tuple[NamespaceCluster, Client], speakers: tuple[Speaker, Speaker],
) -> None:
    _, client = lan
    a, b = speakers
    ips = ("198.18.0.220", "2001:db8::220")
    hold(client, a, *ips)
    a.set()
    since = time.monotonic()
    b.set(*ips)
    for ip in ips:
        took = wait_lladdr(client, ip, b.mac, since, timeout=1.5)
        assert took < 0.3, f"{ip} moved to B's MAC after {took:.2f} s"
    assert b.stats()[f"eth0 {ips[0]}"][0] == 0, "the client did not have to ask"


@pytest.mark.kernel
def test_withdrawn_addresses_are_not_answered(
    lan: tuple[NamespaceCluster, Client], speakers: tuple[Speaker, Speaker],
) -> None:
    _, client = lan
    a, _b = speakers
    ips = ("198.18.0.230", "2001:db8::230")
    hold(client, a, *ips)
    assert a.set()["announced"] == {}
    assert "ff02::1:ff00:230" not in joined_groups(a.node), "solicited-node group left"
    for ip in ips:
        subprocess.run(["ip", "-n", client.netns, "neigh", "del", ip, "dev", "eth0"], check=True)
        entry = resolve(client, ip)
        assert "lladdr" not in entry and "FAILED" in entry["state"], entry


@pytest.mark.kernel
def test_two_holders_of_one_address_report_each_other(
    lan: tuple[NamespaceCluster, Client], speakers: tuple[Speaker, Speaker],
) -> None:
    a, b = speakers
    ips = ("198.18.0.240", "2001:db8::240")
    a.set(*ips)
    b.set(*ips)
    for ip in ips:
        first = a.wait_event(lambda e, ip=ip: e["event"] == "conflict" and e["ip"] == ip, timeout=2)
        assert (first["interface"], first["mac"]) == ("eth0", b.mac)
        seen = b.wait_event(lambda e, ip=ip: e["event"] == "conflict" and e["ip"] == ip, timeout=2)
        assert (seen["interface"], seen["mac"]) == ("eth0", a.mac)
        time.sleep(max(0.0, first["t"] + 0.9 - time.monotonic()))
        early = [e for e in a.events if e["event"] == "conflict" and e["ip"] == ip and e["t"] < first["t"] + 0.9]
        assert len(early) == 1, f"not rate limited: {early}"  # B sent 3 rounds of frames meanwhile
    assert a.stats()[f"eth0 {ips[0]}"][2] >= 1


@pytest.mark.kernel
def test_carrier_watch_and_link_queries(
    lan: tuple[NamespaceCluster, Client], speakers: tuple[Speaker, Speaker],
) -> None:
    cluster, _ = lan
    _a, b = speakers
    node = b.node

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", node.netns, *args], check=True)

    ip("link", "add", "cw0", "type", "veth", "peer", "name", "cw1")
    ip("link", "set", "cw0", "up")
    ip("link", "set", "cw1", "up")
    try:
        b.call("watch", interfaces=["cw0"])
        b.wait_event(lambda e: e["event"] == "carrier" and e["carrier"] is True, timeout=2)
        links_seen = b.call("links", addresses=[node.ip, node.ip6, "198.18.0.250"], interfaces=["eth0", "cw0", "nope"])
        assert links_seen["interfaces"] == {node.ip: "eth0", node.ip6: "eth0", "198.18.0.250": None}
        assert links_seen["carrier"] == {"eth0": True, "cw0": True, "nope": False}
        for action, expect in ((("set", "cw1", "down"), False), (("set", "cw1", "up"), True), (("del", "cw1"), False)):
            count = len(b.events)
            start = time.monotonic()
            ip("link", *action)
            event = b.wait_event(lambda e, count=count: e in b.events[count:] and e["event"] == "carrier", timeout=2)
            assert event["carrier"] is expect and event["interface"] == "cw0", event
            assert event["t"] - start < 0.5, f"{action} reported after {event['t'] - start:.2f} s"
    finally:
        subprocess.run(["ip", "-n", node.netns, "link", "del", "cw0"], capture_output=True, check=False)


@pytest.mark.kernel
def test_set_addresses_stays_fast_during_an_announcement_burst(
    lan: tuple[NamespaceCluster, Client], speakers: tuple[Speaker, Speaker],
) -> None:
    a, _b = speakers
    many = [f"2001:db8::3:{i:x}" for i in range(300)] + [f"198.18.0.{i}" for i in range(150, 180)]
    a.set(*many)
    a.set(*many[:-10])  # Speaker.set asserts each call returned well before the announcements ended
    assert len(a.set(*many[:-20])["announced"]["eth0"]) == len(many) - 20


@pytest.mark.kernel
def test_interfaces_that_appear_change_mac_or_are_recreated_are_followed(speakers: tuple[Speaker, Speaker]) -> None:
    a, b = speakers
    address = "198.18.7.1"

    def link_pair() -> None:
        subprocess.run(["ip", "-n", a.node.netns, "link", "add", "cw2", "type", "veth", "peer", "name", "cw3",
                        "netns", b.node.netns], check=True)  # fmt: skip
        subprocess.run(["ip", "-n", a.node.netns, "link", "set", "cw2", "up"], check=True)
        subprocess.run(["ip", "-n", b.node.netns, "link", "set", "cw3", "up"], check=True)

    def announced_on_cw2(expected: dict[str, list[str]]) -> None:
        deadline = time.monotonic() + 2.5  # the responder looks at its interfaces every second
        while (seen := a.call("stats")["announced"]) != expected:
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)

    def b_hears_a_as(mac: str) -> None:
        b.wait_event(lambda e: e["event"] == "conflict" and e["mac"] == mac and e["interface"] == "cw3", timeout=2.5)

    assert a.call("set", wanted={"cw2": [address]})["announced"] == {}, "cw2 does not exist yet"
    b.call("set", wanted={"cw3": [address]})  # B holds it too: its conflict reports show A's announcements
    try:
        link_pair()
        announced_on_cw2({"cw2": [address]})
        b_hears_a_as(json.loads(subprocess.run(["ip", "-n", a.node.netns, "-j", "link", "show", "cw2"],
                                               capture_output=True, text=True, check=True).stdout)[0]["address"])
        subprocess.run(["ip", "-n", a.node.netns, "link", "set", "cw2", "address", "02:00:00:00:07:02"], check=True)
        b_hears_a_as("02:00:00:00:07:02")  # what A sends now carries the new MAC
        subprocess.run(["ip", "-n", a.node.netns, "link", "del", "cw2"], check=True)
        announced_on_cw2({})
        link_pair()
        subprocess.run(["ip", "-n", a.node.netns, "link", "set", "cw2", "address", "02:00:00:00:07:03"], check=True)
        announced_on_cw2({"cw2": [address]})
        b_hears_a_as("02:00:00:00:07:03")
    finally:
        subprocess.run(["ip", "-n", a.node.netns, "link", "del", "cw2"], capture_output=True, check=False)
