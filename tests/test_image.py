"""The DaemonSet's image, run as the DaemonSet runs it.

Built by `bash deploy/build-image.sh` (CI: .ci/run does it first). Every container here gets the
DaemonSet's securityContext: all capabilities dropped but NET_ADMIN and NET_RAW, a read-only root file
system with only /tmp writable, no privilege escalation, and for its host network a namespace of this
test's own (`--network ns:/run/netns/NAME`), never podman's default network (whose netavark would write
the host's firewall).

Skipped, with the reason, where no container engine can run or the image was not built; .ci/run sets
NFTPROXY_IMAGE_REQUIRED=1, which turns those skips into failures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from e2e.netns import require_root_and_netns
from e2e.netns.scratch import scratch_netns
from e2e.objects import endpoint_slice, service

pytestmark = pytest.mark.kernel

IMAGE = os.environ.get("NFTPROXY_IMAGE", "nftproxy:dev")
CONF = os.environ.get("CONTAINERS_CONF") or "/var/tmp/nftproxy-image/containers.conf"
REQUIRED = os.environ.get("NFTPROXY_IMAGE_REQUIRED") == "1"
DAEMONSET = ["--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "--read-only",
             "--read-only-tmpfs=false", "--tmpfs", "/tmp", "--security-opt", "no-new-privileges"]


def podman(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *argv], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, CONTAINERS_CONF=CONF), stdin=subprocess.DEVNULL)


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"NFTPROXY_IMAGE_REQUIRED=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def engine() -> None:
    """podman with the build script's settings, the image present, and a container that can start."""
    if shutil.which("podman") is None:
        unavailable("podman is not installed (bash deploy/build-image.sh installs it and builds the image)")
    if not Path(CONF).is_file():
        unavailable(f"{CONF} missing: bash deploy/build-image.sh writes it and builds the image")
    if podman("image", "exists", IMAGE).returncode != 0:
        unavailable(f"image {IMAGE} not built: run bash deploy/build-image.sh")
    probe = podman("run", "--rm", "--network=none", "--entrypoint", "true", IMAGE)
    if probe.returncode != 0:
        unavailable(f"this container engine cannot run a container here: {probe.stderr.strip()[-300:]}")


@pytest.fixture
def host_network(engine: None) -> Iterator[str]:
    """The container's "host network": a namespace of its own with lo up."""
    require_root_and_netns()
    with scratch_netns("img") as ns:
        yield ns


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    objects = [service("web", "10.96.0.10", [{"name": "http", "port": 80, "protocol": "TCP"}]),
               endpoint_slice("web", ["10.244.1.5", "10.244.2.7"])]
    (tmp_path / "web.yaml").write_text(yaml.safe_dump_all(objects))
    tmp_path.chmod(0o755)
    return tmp_path


def ruleset(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "nftproxy"],
                          capture_output=True, text=True).stdout


def as_daemonset(ns: str, manifests: Path, *args: str, detach: bool = False, name: str | None = None) -> list[str]:
    return ["run", *(["-d"] if detach else ["--rm"]), *(["--name", name] if name else []), *DAEMONSET,
            "--network", f"ns:/run/netns/{ns}", "-v", f"{manifests}:/manifests:ro", IMAGE,
            "--manifests", "/manifests", "--cluster-cidr", "10.244.0.0/16", "--service-cidr", "10.96.0.0/16",
            "--node-name", "node-1", *args]


def test_help_and_no_test_harness_inside(engine: None) -> None:
    helped = podman("run", "--rm", "--network=none", *DAEMONSET, IMAGE, "--help")
    assert helped.returncode == 0 and "usage: nftproxy run" in helped.stdout, helped.stderr
    inside = podman("run", "--rm", "--network=none", *DAEMONSET, "--entrypoint", "python3", IMAGE, "-c",
                    "import importlib.util as u, shutil; print(bool(u.find_spec('e2e')), bool(u.find_spec('pytest')), "
                    "shutil.which('pip'), bool(u.find_spec('nftables')), shutil.which('nft') is not None)")
    assert inside.stdout.split() == ["False", "False", "None", "True", "True"], inside.stderr
    for command in ("demo", "bench"):  # they run from a source checkout; here, a clear refusal
        refused = podman("run", "--rm", "--network=none", *DAEMONSET, "--entrypoint", "nftproxy", IMAGE, command)
        assert refused.returncode == 2, refused.stderr
        assert f"nftproxy {command} needs a source checkout" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr, refused.stderr


def test_run_once_programs_the_host_network(host_network: str, manifests: Path) -> None:
    proc = podman(*as_daemonset(host_network, manifests, "--once"))
    assert proc.returncode == 0, proc.stderr
    assert "synced 1 Service(s)" in proc.stderr
    rules = ruleset(host_network)
    assert 'comment "default/web:http"' in rules and "10.244.2.7 . 8080" in rules


def _get(ns: str, url: str) -> tuple[int, str]:
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=2); print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())\n")
    out = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code, url], capture_output=True, text=True)
    status, _, body = out.stdout.partition("\n")
    return (int(status) if status.isdigit() else 0), body


def test_agent_answers_health_and_leaves_rules_on_sigterm(host_network: str, manifests: Path) -> None:
    name = f"nftproxy-smoke-{uuid.uuid4().hex[:6]}"
    started = podman(*as_daemonset(host_network, manifests, "--healthz-bind-address", "127.0.0.1:10256",
                                   "--metrics-bind-address", "127.0.0.1:10249", detach=True, name=name))
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 30
        while _get(host_network, "http://127.0.0.1:10256/healthz")[0] != 200:
            assert time.monotonic() < deadline, podman("logs", name).stderr
            time.sleep(0.3)
        status, body = _get(host_network, "http://127.0.0.1:10256/livez")
        assert status == 200 and json.loads(body)["lastUpdated"]
        assert 'comment "default/web:http"' in ruleset(host_network)
        # the operator's commands, inside the running container (same capabilities, read-only root)
        report = podman("exec", name, "nftproxy", "status", "--json")
        assert report.returncode == 0, report.stderr
        state = json.loads(report.stdout)
        assert state["agent"]["sync"]["state"] == "synced" and state["agent"]["drift"]["clean"]
        assert state["kernel"]["services"] == 1 and state["kernel"]["endpoints"] == 2
        answer = podman("exec", name, "nftproxy", "explain", "10.96.0.10:80", "--from", "10.244.1.9", "--json")
        assert answer.returncode == 0, answer.stderr
        [outcome] = json.loads(answer.stdout)["outcomes"]
        assert {c["address"] for c in outcome["endpoints"]} == {"10.244.1.5", "10.244.2.7"}
        assert podman("kill", "--signal", "TERM", name).returncode == 0
        assert podman("wait", name, timeout=30).stdout.strip() == "0"
        assert "exiting, rules stay in place" in podman("logs", name).stderr
        assert 'comment "default/web:http"' in ruleset(host_network), "SIGTERM left the rules"
    finally:
        podman("rm", "-f", name)


def test_cleanup_kube_proxy_says_what_it_could_not_remove(host_network: str, manifests: Path) -> None:
    """Read-only root: iptables-legacy cannot take /run/xtables.lock, so its chains stay: exit 1, named."""
    subprocess.run(["ip", "netns", "exec", host_network, "iptables-legacy", "-t", "nat", "-N", "KUBE-SERVICES"],
                   check=True)
    subprocess.run(["ip", "netns", "exec", host_network, "nft", "add", "table", "ip", "kube-proxy"], check=True)
    proc = podman("run", "--rm", *DAEMONSET, "--network", f"ns:/run/netns/{host_network}", "--entrypoint",
                  "nftproxy", IMAGE, "cleanup", "--kube-proxy")
    assert proc.returncode == 1, proc.stderr
    assert "removed nftables table ip kube-proxy" in proc.stderr
    assert "could not remove iptables-legacy: 1 KUBE-* chain(s) (KUBE-SERVICES) left in place" in proc.stderr
    assert "Read-only file system" in proc.stderr and "/run/xtables.lock" in proc.stderr
