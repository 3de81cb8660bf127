"""The agent recovers when the kernel refuses its transactions for a while (issue 13, 1).

Reproduction from the issue: with 1,000 Services held, someone deletes our table and re-creates it
owned by another process (`flags owner`: only that process's netlink socket may touch it), a change
arrives, and every sync is refused. While that lasts /healthz must turn 503 (kube-proxy's rule: a
queued change not synced within twice the sync period); once the obstacle is gone the agent must put
its rules back and keep applying changes: a libnftables handle that failed is never reused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from e2e.netns import require_root_and_netns
from e2e.netns.cluster import _owner_tag
from e2e.objects import endpoint_slice, service

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[1]

# Takes the table away from the agent and holds it until killed (the owner flag dies with the socket).
HOLDER = """
import nftables, sys, time
lib = nftables.Nftables()
rc, out, err = lib.cmd("delete table inet nftproxy\\nadd table inet nftproxy { flags owner; }\\n")
print(rc, err.strip(), flush=True)
time.sleep(600)
"""


@pytest.fixture
def netns() -> Iterator[str]:
    require_root_and_netns()
    name = f"nfp-rec-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "dev", "lo", "alias", _owner_tag()], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def write(path: Path, name: str, objects: list[dict[str, object]]) -> None:
    tmp = path / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump_all(objects))
    os.replace(tmp, path / f"{name}.yaml")


def healthz(netns: str) -> int:
    code = ("import urllib.request, urllib.error\n"
            "try: print(urllib.request.urlopen('http://127.0.0.1:10256/healthz', timeout=3).status)\n"
            "except urllib.error.HTTPError as e: print(e.code)\n")
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def table_has(netns: str, text: str) -> bool:
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "map", "inet", "nftproxy",
                          "service-ips-v4"], capture_output=True, text=True)
    return out.returncode == 0 and text in out.stdout


def wait(predicate: object, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - start < timeout, what
        time.sleep(0.2)
    return time.monotonic() - start


def test_refused_syncs_turn_healthz_503_and_the_agent_recovers(netns: str, tmp_path: Path) -> None:
    objects: list[dict[str, object]] = []
    for i in range(1000):
        ip = f"198.19.{i // 250}.{i % 250 + 1}"
        objects += [service(f"svc-{i}", ip), endpoint_slice(f"svc-{i}", [f"198.18.{128 + i // 250}.{i % 250 + 2}"])]
    write(tmp_path, "base", objects)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    agent = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "nftproxy", "run", "--manifests", str(tmp_path),
         "--node-name", "n1", "--poll-interval", "0.2", "--min-sync-period", "0", "--sync-period", "2s",
         "--healthz-bind-address", "127.0.0.1:10256", "--metrics-bind-address", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    holder = None
    try:
        wait(lambda: table_has(netns, "198.19.3.250"), 60, "the first sync")
        assert healthz(netns) == 200
        holder = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", HOLDER],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().startswith("0"), "the obstacle is in place"
        # a big change (1,000 Services more): a diff, applied in-process, that the kernel refuses
        change: list[dict[str, object]] = [service("late", "198.19.9.9"), endpoint_slice("late", ["198.18.140.2"])]
        for i in range(1000):
            change += [service(f"more-{i}", f"198.19.{10 + i // 250}.{i % 250 + 1}"),
                       endpoint_slice(f"more-{i}", [f"198.18.{150 + i // 250}.{i % 250 + 2}"])]
        write(tmp_path, "change", change)
        seen: list[int] = []
        try:
            unhealthy_after = wait(lambda: seen.append(healthz(netns)) or seen[-1] == 503, 30, "503")
        except AssertionError:
            raise AssertionError(f"/healthz never turned 503 while syncs failed: {seen}") from None
        print(f"/healthz 503 {unhealthy_after:.1f} s after the change (timeout: 2 x sync period = 4 s)")
        assert not table_has(netns, "198.19.9.9")

        holder.kill()
        holder.wait()
        holder = None
        back = wait(lambda: table_has(netns, "198.19.9.9") and table_has(netns, "198.19.0.1"), 60,
                    "the agent puts its rules back once the obstacle is gone")
        print(f"rules back {back:.1f} s after the obstacle went")
        wait(lambda: healthz(netns) == 200, 10, "/healthz 200 again")

        # later changes are small diffs, applied in-process: a fresh libnftables handle, not the failed one
        write(tmp_path, "after", [service("after", "198.19.9.10"), endpoint_slice("after", ["198.18.140.3"])])
        wait(lambda: table_has(netns, "198.19.9.10"), 20, "a change after the recovery is applied")
    finally:
        if holder is not None:
            holder.kill()
        agent.terminate()
        try:
            _, err = agent.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            _, err = agent.communicate()
    assert "cache initialization failed" not in err, err[-3000:]
    assert "sync failed" in err
    json.dumps(err[-200:])  # the log is text, whatever nft said


def test_a_failed_libnftables_handle_is_never_reused() -> None:
    """A refused batch can leave the handle's netlink socket unusable ("No buffer space available", then
    "cache initialization failed: Protocol error" on every later command): the next command gets a new one."""
    from nftproxy.kernel import KernelError
    from nftproxy.kernel.nft import NftablesKernel

    class Handle:
        made = 0

        def __init__(self, rc: int) -> None:
            Handle.made += 1
            self.rc = rc

        def cmd(self, script: str) -> tuple[int, str, str]:
            return self.rc, "", "" if self.rc == 0 else "netlink: Error: No buffer space available"

    kernel = NftablesKernel()
    kernel._lib = Handle(1)
    with pytest.raises(KernelError):
        kernel.run_script("add table inet nftproxy\n")
    assert kernel._lib is None, "the failed handle is dropped"
    kernel._lib = Handle(0)  # what _library() makes next time
    kernel.run_script("add table inet nftproxy\n")
    assert kernel._lib is not None and Handle.made == 2
