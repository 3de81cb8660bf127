"""The command line against a real kernel, each test in a namespace it creates and removes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from e2e.netns import require_root_and_netns
from e2e.netns.cluster import _owner_tag
from e2e.objects import endpoint_slice, service
from nftproxy.desired.skeleton import rules_dir
from tests.test_stream_rebuild import by_object

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[1]

FOREIGN = """table ip foreign {
	set blocked {
		type ipv4_addr
		elements = { 192.0.2.1 }
	}

	chain input {
		type filter hook input priority filter; policy accept;
		ip saddr @blocked drop
		tcp dport 9999 reject
	}
}
"""


@pytest.fixture
def netns() -> Iterator[str]:
    require_root_and_netns()
    name = f"nfp-cli-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    # tagged like e2e/netns' namespaces: concurrent test runs remove untagged nfp-* namespaces
    subprocess.run(["ip", "-n", name, "link", "set", "dev", "lo", "alias", _owner_tag()], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft(netns: str, *args: str, input: str | None = None) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", *args], input=input, capture_output=True,
                          text=True, check=True).stdout


def nftproxy(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "nftproxy", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=60)


def write(path: Path, objects: list[dict]) -> None:
    path.write_text(yaml.safe_dump_all(objects))


def test_skeleton_passes_nft_check(netns: str) -> None:
    files = sorted(rules_dir().glob("*.nft"))
    assert files, "the skeleton ships with the package"
    for f in files:
        subprocess.run(["ip", "netns", "exec", netns, "nft", "-c", "-f", str(f)], check=True, capture_output=True)


def test_foreign_table_is_left_alone_through_syncs_and_cleanup(netns: str, tmp_path: Path) -> None:
    nft(netns, "-f", "-", input=FOREIGN)
    before = nft(netns, "list", "table", "ip", "foreign")
    manifest = tmp_path / "objs.yaml"
    for i in range(5):
        write(manifest, [service("web", "198.19.0.10", externalIPs=[f"198.18.0.{150 + i}"]),
                         endpoint_slice("web", [f"198.18.129.{j + 2}" for j in range(i + 1)])])
        result = nftproxy(netns, "run", "--manifests", str(manifest), "--once", "--service-cidr", "198.19.0.0/16")
        assert result.returncode == 0, result.stderr
        assert nft(netns, "list", "table", "ip", "foreign") == before
    assert "inet nftproxy" in nft(netns, "list", "tables")
    result = nftproxy(netns, "cleanup")
    assert result.returncode == 0, result.stderr
    assert nft(netns, "list", "tables").strip() == "table ip foreign"
    assert nft(netns, "list", "table", "ip", "foreign") == before
    assert nftproxy(netns, "cleanup").returncode == 0, "cleanup is idempotent"


def test_once_fails_clearly_on_a_broken_manifest_and_bad_flags(netns: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Service\nmetadata: {name: web\n")
    result = nftproxy(netns, "run", "--manifests", str(broken), "--once")
    assert result.returncode == 1 and "broken.yaml: not valid YAML/JSON" in result.stderr
    result = nftproxy(netns, "run", "--manifests", str(broken), "--once", "--cluster-cidr", "10.0.0.0/8,10.1.0.0/16")
    assert result.returncode == 2 and "--cluster-cidr: at most one IPv4 CIDR" in result.stderr
    result = nftproxy(netns, "run", "--manifests", str(tmp_path / "missing"), "--once")
    assert result.returncode == 1 and "no such file or directory" in result.stderr
    assert "nftproxy" not in nft(netns, "list", "tables"), "nothing half-applied"


def test_dry_run_prints_the_transaction_and_applies_nothing(netns: str, tmp_path: Path) -> None:
    manifest = tmp_path / "list.json"
    manifest.write_text(__import__("json").dumps({"apiVersion": "v1", "kind": "List", "items": [
        service("web", "198.19.0.10", namespace="shop"), endpoint_slice("web", ["198.18.129.2"], namespace="shop")]}))
    result = nftproxy(netns, "run", "--manifests", str(manifest), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert 'comment "shop/web:http" : 4100:1' in result.stdout
    assert "delete table inet nftproxy" in result.stdout
    assert nft(netns, "list", "tables").strip() == ""
    # and the printed transaction is exactly what the kernel accepts
    nft(netns, "-f", "-", input=result.stdout)
    assert "198.18.129.2 . 8080" in nft(netns, "list", "table", "inet", "nftproxy")


def test_once_commits_what_dry_run_prints(netns: str, tmp_path: Path) -> None:
    """--once streams its rebuild (parsing objects on the way); --dry-run prints it as statements: the same
    ruleset, invalid objects left out of both and reported."""
    objects: list[dict] = []
    for i in range(40):
        extra = {"externalIPs": [f"198.18.0.{150 + i % 3}"]} if i % 4 == 0 else {}  # some conflicts
        objects.append(service(f"svc-{i}", f"198.19.0.{i + 1}", namespace=f"ns-{i % 3}", **extra))
        objects.append(endpoint_slice(f"svc-{i}", [f"198.18.129.{(i * 3 + j) % 250 + 2}" for j in range(i % 5)],
                                      namespace=f"ns-{i % 3}"))
    objects.append(service("broken", "198.19.1.300"))
    objects.append(endpoint_slice("nobody", ["198.18.130.2"]))
    manifests = tmp_path / "objs"
    manifests.mkdir()
    write(manifests / "a.yaml", objects[::2])
    write(manifests / "b.yaml", objects[1::2])
    flags = ["--manifests", str(manifests), "--service-cidr", "198.19.0.0/16", "--cluster-cidr", "198.18.128.0/17"]
    printed = nftproxy(netns, "run", *flags, "--dry-run")
    assert printed.returncode == 0, printed.stderr
    once = nftproxy(netns, "run", *flags, "--once")
    assert once.returncode == 0, once.stderr
    assert "Service default/broken: spec.clusterIPs[0]" in once.stderr
    streamed = nft(netns, "list", "table", "inet", "nftproxy")
    nft(netns, "delete", "table", "inet", "nftproxy")
    nft(netns, "-f", "-", input=printed.stdout)
    assert by_object(streamed) == by_object(nft(netns, "list", "table", "inet", "nftproxy"))
    assert "ns-2/svc-38:http" in streamed


def test_a_taken_health_port_stops_startup_with_a_clear_message(netns: str, tmp_path: Path) -> None:
    manifest = tmp_path / "objs.yaml"
    write(manifest, [service("web", "198.19.0.10")])
    holder = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c",
                               "import socket,time; s=socket.socket(); "
                               "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
                               "s.bind(('0.0.0.0', 10256)); s.listen(); print('ready', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        result = nftproxy(netns, "run", "--manifests", str(manifest))
        assert result.returncode == 1
        assert "cannot listen for /healthz or /metrics" in result.stderr and "kube-proxy" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        holder.kill()
        holder.wait()
