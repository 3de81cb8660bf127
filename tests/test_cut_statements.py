"""A cut stream never commits half a transaction (issue 13, 6), for the transactions that are not rebuilds.

tests/test_stream_rebuild.py covers the rebuild: streamed as one table block, nft refuses it when it ends
early. A diff is a list of statements (`delete element`, `add element`, `add chain`, ...) that cannot go
inside a table block, and it reaches nft through a pipe too when it is large (`CHILD_THRESHOLD_BYTES`) or
the kernel runs in a namespace: if the writer dies exactly at a statement boundary, nft must not commit
the statements it got. The writer here is the real `NftablesKernel.run_script` in a process of its own,
its pipe to nft cut after N statements (several N) and then killed; the kernel must hold the old ruleset
or the new one, never a mix.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.bench.workload import NAMESPACE, service_name
from nftproxy.agent.proxier import Proxier
from nftproxy.kernel.fake import FakeKernel
from nftproxy.kernel.nft import NftablesKernel
from tests.test_stream_rebuild import CONFIG, _wait_gone, by_object, listing, world

REPO = Path(__file__).resolve().parents[1]

# The real run_script, with the one call that feeds nft replaced: the child gets the first N statements
# of its input, then the writer reports and waits to be killed (the pipe still open, nothing more sent).
WRITER = """
import os, subprocess, sys, time
from nftproxy.kernel import nft
from nftproxy.kernel.nft import NftablesKernel
cut = int(sys.argv[2])
real_run = subprocess.run
statements = sys.stdin.read().split("\\0")
def run_cut(argv, input=None, **kwargs):
    if input is None:  # nft reads a file written whole: nothing to cut while nft reads
        return real_run(argv, input=input, **kwargs)
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child.stdin.write("".join(statements[:cut]).encode())
    child.stdin.flush()
    print("written", child.pid, flush=True)
    time.sleep(600)
nft.subprocess.run = run_cut
NftablesKernel(netns=sys.argv[1]).run_script("".join(statements))
print("done", flush=True)
"""


@pytest.fixture
def netns() -> Iterator[str]:
    from e2e.netns import require_root_and_netns
    from e2e.netns.scratch import scratch_netns

    require_root_and_netns()
    with scratch_netns("cut") as name:
        yield name


def statements(script: str) -> list[str]:
    """The script split after each statement (a statement may span lines: `add element ... {\\n...\\n}`)."""
    return [s for s in re.split(r"(?<=\n)(?=(?:add|delete) )", script) if s]


@pytest.mark.kernel
def test_a_diff_cut_at_a_statement_boundary_leaves_old_or_new(netns: str) -> None:
    kernel = NftablesKernel(netns=netns)

    def load_old() -> dict[str, list[str]]:
        world(Proxier(CONFIG, kernel), 30, 4).sync()  # a full rebuild: the first ruleset again
        return by_object(listing(netns))

    shadow = world(Proxier(CONFIG, FakeKernel()), 30, 4)  # what the kernel holds, to diff against
    shadow.sync()
    world(shadow, 10, 6, first=30)  # ten Services come
    world(shadow, 5, 6, first=10)  # five change their endpoints
    for i in range(10):  # ten go
        shadow.delete("Service", NAMESPACE, service_name(i))
        shadow.delete("EndpointSlice", NAMESPACE, f"{service_name(i)}-abcde")
    script = shadow.compute().transaction.render()
    parts = statements(script)
    assert len(parts) >= 6 and "".join(parts) == script
    load_old()
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, text=True, check=True)
    new = by_object(listing(netns))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for cut in sorted({1, 2, len(parts) // 2, len(parts) - 1}):
        old = load_old()
        assert old != new
        writer = subprocess.Popen([sys.executable, "-c", WRITER, netns, str(cut)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        assert writer.stdin is not None and writer.stdout is not None
        writer.stdin.write("\0".join(parts))
        writer.stdin.close()
        line = writer.stdout.readline().split()
        writer.kill()
        writer.wait()
        if line and line[0] == "written":
            _wait_gone(int(line[1]))
        now = by_object(listing(netns))
        assert now in (old, new), f"cut after {cut} of {len(parts)} statements: the kernel holds a mix"
