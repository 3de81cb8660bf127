"""A rebuild streamed to nft while it is produced: the same ruleset, and never half of it.

The kernel tests load a first ruleset, then send a second one cut short after N lines (N aimed by the
test, from right after the header to right before the closing brace), from this process and from a
writer process killed mid-stream, and check that the kernel still holds the first ruleset every time.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.bench.workload import original_addresses, service_object, slice_object
from e2e.netns import require_root_and_netns
from e2e.netns.cluster import _owner_tag
from e2e.objects import endpoint_slice, service
from nftproxy.agent.proxier import Proxier
from nftproxy.config import ProxyConfig
from nftproxy.desired.elements import Chain, Element
from nftproxy.desired.skeleton import FAMILY, TABLE, skeleton_text
from nftproxy.diff.rebuild import Rebuilt
from nftproxy.kernel import KernelError, StreamingKernel
from nftproxy.kernel.fake import FakeKernel
from nftproxy.kernel.nft import NftablesKernel
from nftproxy.transaction.block import SkeletonError, rebuild_script, table_block

REPO = Path(__file__).resolve().parents[1]
CONFIG = ProxyConfig(node_name="bench-node", cluster_cidrs=("100.64.0.0/10",), service_cidrs=("198.18.0.0/15",))


def world(proxier: Proxier, services: int, endpoints: int, first: int = 0) -> Proxier:
    for i in range(first, first + services):
        proxier.upsert(service_object(i))
        proxier.upsert(slice_object(i, original_addresses(i, 1 + (i % endpoints))))
    return proxier


def script_of(proxier: Proxier) -> list[str]:
    pending = proxier.compute(stream=True)
    assert pending.script is not None
    return list(pending.script)


# --- the table block (pure) ---------------------------------------------------------------------------
def test_every_skeleton_set_gets_a_declaration() -> None:
    block = table_block(skeleton_text(), FAMILY, TABLE)
    declared = set(block.declarations)
    fake = FakeKernel()
    fake.apply(Proxier(CONFIG, fake).compute().transaction)
    assert declared == set(fake.sets), "a set the skeleton declares has no declaration to add elements with"
    assert all(d.startswith(("set ", "map ")) and "{" in d for d in block.declarations.values())


def test_table_block_refuses_what_cannot_go_inside_one_block() -> None:
    ok = ('# a "comment" with { braces\ntable inet t {\n\tset s { type ipv4_addr; comment "a } brace"; }\n'
          '\tcomment "x"\n}\n')
    block = table_block(ok, "inet", "t")
    assert block.declarations == {"s": 'set s { type ipv4_addr; comment "a } brace";'}
    for bad in ("table inet t { }\nadd rule inet t c accept\n", "table ip other { }\n", "table inet t {\n",
                "table inet t { } }\n"):
        with pytest.raises(SkeletonError):
            table_block(bad, "inet", "t")


def _items(pattern: str, text: str) -> list[str]:
    return sorted(item.lstrip("\t") for body in re.findall(pattern, text, re.S) for item in body.split(",\n\t"))


def test_stream_is_one_block_holding_every_element_once() -> None:
    chunks = script_of(world(Proxier(CONFIG, FakeKernel()), 50, 4))
    assert chunks[0] == f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\ntable {FAMILY} {TABLE} {{\n"
    assert len(chunks[0].encode()) <= select.PIPE_BUF
    body = "".join(chunks[1:-1])
    assert chunks[-1] == "}\n" and body.count("{") == body.count("}"), "only the last chunk closes the block"
    streamed = _items(r"\t\telements = \{\n(.*?)\n\t\t\}", "".join(chunks))
    statements = _items(r"add element \S+ \S+ \S+ \{\n(.*?)\n\}",
                        world(Proxier(CONFIG, FakeKernel()), 50, 4).compute().transaction.render())
    assert streamed == statements and len(streamed) > 250


def test_a_streamed_rebuilds_record_is_never_sent() -> None:
    """What a streamed rebuild leaves to count it holds the table's head but none of its elements: sent
    as a script it would load an empty table, so neither a kernel nor render() takes it."""
    proxier = world(Proxier(CONFIG, FakeKernel()), 5, 2)
    pending = proxier.compute(stream=True)
    assert pending.script is not None and pending.transaction.record_only
    with pytest.raises(ValueError):
        pending.transaction.render()
    with pytest.raises(ValueError):
        FakeKernel().apply(pending.transaction)


def test_a_chains_entries_are_streamed_with_it() -> None:
    """Verdict elements a chain carries (leading to it) go into the block right after the chain."""
    block = table_block(skeleton_text(), FAMILY, TABLE)
    target = next(name for name, declaration in block.declarations.items() if declaration.startswith("map "))
    entry = Element(target, "198.19.0.9 . tcp . 80", "goto lb-extra", None)
    chain = Chain("lb-extra", ("accept",), entries=(entry,))
    text = "".join(rebuild_script([("a", [], [chain])], Rebuilt(), block, f"{FAMILY} {TABLE}"))
    after_chain = text[text.index("\tchain lb-extra {"):]
    expected = (r"\tchain lb-extra \{\n\t\taccept\n\t\}\n\t" + re.escape(block.declarations[target])
                + r"\n\t\telements = \{\n\t198\.19\.0\.9 \. tcp \. 80 : goto lb-extra\n")
    assert re.match(expected, after_chain), after_chain[:300]


# --- against the kernel, in a throwaway namespace -----------------------------------------------------
@pytest.fixture
def netns() -> Iterator[str]:
    require_root_and_netns()
    name = f"nfp-stream-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "dev", "lo", "alias", _owner_tag()], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def listing(netns: str) -> str:
    proc = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", FAMILY, TABLE],
                          capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else f"(no table: {proc.stderr.strip()})"


def by_object(text: str) -> dict[str, list[str]]:
    """A listing as {"map NAME": its lines, sorted}: the kernel lists objects in the order they were made."""
    out: dict[str, list[str]] = {}
    name = "table"
    for line in text.splitlines():
        match = re.match(r"^\t(set|map|chain) ([\w-]+) \{", line)
        if match:
            name = f"{match[1]} {match[2]}"
        line = re.sub(r"^elements = \{ ", "", line.strip()).rstrip(",} ")
        if line:
            out.setdefault(name, []).append(line)
    return {key: sorted(lines) for key, lines in out.items()}


@pytest.mark.kernel
def test_streamed_rebuild_loads_what_the_statement_script_loads(netns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NFTPROXY_BENCH_MIX", "policies")  # NodePorts, eTP Local LBs, affinity, iTP Local
    statements = world(Proxier(CONFIG, FakeKernel()), 80, 5).compute().transaction.render()
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=statements, text=True, check=True)
    expected = listing(netns)
    kernel = NftablesKernel(netns=netns)
    assert isinstance(kernel, StreamingKernel)
    result = world(Proxier(CONFIG, kernel), 80, 5).sync()
    assert result.rebuild and result.script_bytes > 0
    assert by_object(listing(netns)) == by_object(expected)


@pytest.mark.kernel
def test_what_nft_lists_loads_back(netns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`nft list table inet nftproxy > f; nft -f f` (a backup, a restore) must work for every kind of rule
    nftproxy writes: the policy mix, and sessionAffinity over both families on every frontend kind."""
    monkeypatch.setenv("NFTPROXY_BENCH_MIX", "policies")
    proxier = world(Proxier(CONFIG, NftablesKernel(netns=netns)), 40, 3)
    affinity = {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}
    proxier.upsert(service("sticky", ["198.19.9.9", "2001:db8:9::9"], [{"name": "http", "port": 80, "nodePort": 30999}],
                           type="LoadBalancer", externalIPs=["198.18.9.9"], **affinity))
    proxier.upsert(endpoint_slice("sticky", ["100.64.9.2", "100.64.9.3"], name="sticky-v4"))
    proxier.upsert(endpoint_slice("sticky", ["2001:db8:1::2", "2001:db8:1::3"], name="sticky-v6", address_type="IPv6"))
    proxier.sync()
    listed = listing(netns)
    assert "affinity-record-v6-60" in listed and "affinity-nodeport-record-v4-60" in listed
    subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", FAMILY, TABLE], check=True)
    load = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=listed, capture_output=True,
                          text=True)
    assert load.returncode == 0, load.stderr[:3000]
    assert by_object(listing(netns)) == by_object(listed)


Loaded = tuple[NftablesKernel, str, list[str]]


@pytest.fixture
def loaded(netns: str) -> Loaded:
    """A kernel holding a first ruleset, its listing, and the stream of a second, different one."""
    kernel = NftablesKernel(netns=netns)
    world(Proxier(CONFIG, kernel), 20, 3).sync()
    return kernel, listing(netns), script_of(world(Proxier(CONFIG, FakeKernel()), 60, 6, first=100))


def _cut_points(lines: list[str]) -> list[int]:
    """Line counts after the header to stop at: the skeleton, a chain, an element batch, the very end."""
    first_chain = next(i for i, line in enumerate(lines) if line.startswith("\tchain lb-"))
    first_batch = next(i for i, line in enumerate(lines) if line.startswith("\t\telements = {"))
    return sorted({0, 1, 2, first_chain, first_chain + 2, first_batch, first_batch + 3, len(lines) // 2,
                   len(lines) - 2, len(lines) - 1})


@pytest.mark.kernel
def test_a_stream_cut_short_leaves_the_old_ruleset(netns: str, loaded: Loaded) -> None:
    kernel, old, chunks = loaded
    header, lines = chunks[0], "".join(chunks[1:]).splitlines(keepends=True)
    for n in _cut_points(lines):
        with pytest.raises(KernelError, match="end of file"):
            kernel.apply_stream(iter([header, *lines[:n]]))
        assert listing(netns) == old, f"cut after {n} of {len(lines)} lines changed the ruleset"
    kernel.apply_stream(iter([header, *lines]))  # the whole stream does commit
    assert listing(netns) != old


@pytest.mark.kernel
def test_a_writer_that_fails_mid_stream_leaves_the_old_ruleset(netns: str, loaded: Loaded) -> None:
    kernel, old, chunks = loaded

    def failing() -> Iterator[str]:
        yield from chunks[: len(chunks) // 2]
        raise RuntimeError("translation bug")

    with pytest.raises(RuntimeError, match="translation bug"):
        kernel.apply_stream(failing())
    assert listing(netns) == old


WRITER = """
import sys, time
from nftproxy.kernel import nft
from nftproxy.kernel.nft import NftablesKernel
nft.STREAM_WRITE_BYTES = 0  # every chunk goes to the pipe at once: what is printed as written was sent
header, body = sys.stdin.read().split("\\0")
def stream():
    yield header
    yield body
    print("written", flush=True)
    time.sleep(600)  # killed here, the pipe to nft open and the script unfinished
NftablesKernel(netns=sys.argv[1]).apply_stream(stream())
"""


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"nft (pid {pid}) still running {timeout:.0f} s after its writer died")


@pytest.mark.kernel
def test_a_writer_killed_mid_stream_leaves_the_old_ruleset(netns: str, loaded: Loaded) -> None:
    kernel, old, chunks = loaded
    header, lines = chunks[0], "".join(chunks[1:]).splitlines(keepends=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for n in _cut_points(lines)[1::3]:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, netns], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=env, cwd=REPO)
        assert writer.stdin is not None and writer.stdout is not None
        writer.stdin.write(header + "\0" + "".join(lines[:n]))
        writer.stdin.close()
        assert writer.stdout.readline().strip() == "written"
        children = Path(f"/proc/{writer.pid}/task/{writer.pid}/children").read_text().split()
        assert len(children) == 1, children
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        _wait_gone(int(children[0]))
        assert listing(netns) == old, f"a writer killed after {n} of {len(lines)} lines changed the ruleset"
