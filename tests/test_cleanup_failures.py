"""`nftproxy cleanup --kube-proxy` must fail loudly when it leaves kube-proxy's rules behind.

A node whose kube-proxy rules survive would run two proxies at once after the switch-over, so a step
that fails (seen in the image: iptables-legacy cannot take /run/xtables.lock on a read-only root) makes
the command exit non-zero and name what is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from e2e.netns import require_root_and_netns
from e2e.netns.scratch import scratch_netns
from nftproxy import cli
from nftproxy.kernel import kube_proxy

REPO = Path(__file__).resolve().parents[1]
SAVED = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n"


def test_a_failed_restore_is_reported_with_the_chains_it_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_proxy, "_iptables_tools", lambda: [("iptables-legacy-save", "iptables-legacy-restore")])

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        if argv[0].endswith("-save"):
            return subprocess.CompletedProcess(argv, 0, SAVED, "")
        return subprocess.CompletedProcess(argv, 4, "", "Fatal: can't open lock file /run/xtables.lock: "
                                                         "Read-only file system")

    monkeypatch.setattr(subprocess, "run", run)
    result = kube_proxy.remove_kube_proxy_leftovers(lambda family, name: family == "ip")
    assert result.removed == ["nftables table ip kube-proxy"]
    assert len(result.failed) == 1
    assert "iptables-legacy: 1 KUBE-* chain(s) (KUBE-SERVICES) left in place" in result.failed[0]
    assert "Read-only file system" in result.failed[0] and "/run/xtables.lock" in result.failed[0]


def test_a_save_or_table_error_is_a_failure_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_proxy, "_iptables_tools", lambda: [("iptables-nft-save", "iptables-nft-restore")])
    monkeypatch.setattr(subprocess, "run", lambda argv, **_: subprocess.CompletedProcess(argv, 1, "", "no permission"))

    def refuse(family: str, name: str) -> bool:
        raise RuntimeError("Operation not permitted")

    result = kube_proxy.remove_kube_proxy_leftovers(refuse)
    assert result.removed == []
    assert [f.split(":")[0] for f in result.failed] == ["nftables table ip kube-proxy",
                                                       "nftables table ip6 kube-proxy", "iptables-nft"]


def test_cli_exits_non_zero_when_something_is_left(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(kube_proxy, "remove_kube_proxy_leftovers",
                        lambda _delete: kube_proxy.Leftovers(["nftables table ip kube-proxy"], ["iptables-legacy: x"]))
    assert cli.main(["cleanup", "--kube-proxy"]) == 1
    err = capsys.readouterr().err
    assert "could not remove iptables-legacy: x" in err and "NOT all gone" in err
    monkeypatch.setattr(kube_proxy, "remove_kube_proxy_leftovers", lambda _delete: kube_proxy.Leftovers())
    assert cli.main(["cleanup", "--kube-proxy"]) == 0


@pytest.mark.kernel
def test_read_only_run_leaves_legacy_chains_and_exits_non_zero() -> None:
    """As in the image: /run read-only, iptables-legacy chains present; the nft half still goes."""
    require_root_and_netns()
    with scratch_netns("kpro") as ns:
        def inside(*argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, **kw)

        assert inside("iptables-legacy", "-t", "nat", "-N", "KUBE-SERVICES").returncode == 0
        assert inside("nft", "add", "table", "ip", "kube-proxy").returncode == 0
        env = dict(os.environ, PYTHONPATH=str(REPO))
        # a private mount namespace with an empty read-only /run, as a read-only container root has it
        proc = inside("unshare", "-m", "sh", "-c", 'mount -t tmpfs -o ro tmpfs /run && exec "$@"', "sh",
                      sys.executable, "-m", "nftproxy", "cleanup", "--kube-proxy", env=env, cwd=REPO)
        assert proc.returncode == 1, proc.stderr
        assert "removed nftables table ip kube-proxy" in proc.stderr
        assert "could not remove iptables-legacy: 1 KUBE-* chain(s) (KUBE-SERVICES) left in place" in proc.stderr
        assert "Read-only file system" in proc.stderr
        assert "KUBE-SERVICES" in inside("iptables-legacy-save").stdout, "really left in place"
        assert "kube-proxy" not in inside("nft", "list", "tables").stdout
