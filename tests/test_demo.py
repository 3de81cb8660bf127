"""`nftproxy demo` as a person runs it: a subprocess, from a directory that is not the checkout."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.netns import list_netns, require_root_and_netns

pytestmark = pytest.mark.kernel


@pytest.mark.timeout(90)
def test_demo_shows_every_service_kind_and_leaves_nothing_behind(tmp_path: Path) -> None:
    require_root_and_netns()
    proc = subprocess.run(
        [sys.executable, "-m", "nftproxy", "demo"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n--- stderr ---\n{proc.stderr}"

    for kind in ("ClusterIP", "NodePort", "externalIP", "LoadBalancer"):
        assert kind in out, f"{kind} missing from the output:\n{out}"
    for pod in ("web-1", "web-2", "web-3"):
        assert pod in out, f"{pod} missing from the output:\n{out}"
    assert "keeps the pod's source" in out and "masqueraded to the node's address" in out
    assert "table inet nftproxy {" in out and "map service-ips-v4 {" in out, "the ruleset is shown"
    assert "where expected" in out

    prefixes = set(re.findall(r"\b(nfp-[0-9a-f]{4})-\*", out))
    assert len(prefixes) == 1, f"the output names its namespaces once: {prefixes}"
    prefix = prefixes.pop()
    left = [ns for ns in list_netns() if ns.startswith(prefix + "-")]
    assert not left, f"namespaces left behind: {left}"
    manifests = re.findall(r"(/\S*nfp-manifests-[^/\s]+)/", out)
    assert manifests and not any(Path(m).exists() for m in manifests), f"manifest directory left behind: {manifests}"
