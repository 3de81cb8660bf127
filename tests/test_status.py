"""`nftproxy status`: the kernel's summary, the agent's state from /status, and drift.

The kernel test runs an agent in a namespace of its own, tampers with its table behind its back and
checks that status names exactly what was changed; the pure tests pin the drift rules and the layout
decoding the status and explain commands share.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from e2e.netns import require_root_and_netns
from e2e.netns.scratch import scratch_netns
from e2e.objects import endpoint_slice, service
from nftproxy.ops.agent_status import StatusProvider
from nftproxy.ops.layout import Codec, field_types
from nftproxy.ops.netlink import ELEM_INTERVAL_END, SET_INTERVAL, RawElement, SetInfo
from nftproxy.ops.status import Snapshot, drift, summary

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


# --- pure ----------------------------------------------------------------------------------------------
def test_classid_and_concatenations_decode_as_nft_prints_them() -> None:
    assert field_types(7 << 12 | 12 << 6 | 13) == [7, 12, 13]
    frontends = Codec.of(SetInfo("service-ips-v4", 8, 7 << 12 | 12 << 6 | 13, 12, 23, 4, (), b""))
    key = frontends.encode(["198.19.0.10", "tcp", "80"])
    assert key == bytes([198, 19, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0])
    element = RawElement(key, None, (0x4100 << 16 | 3).to_bytes(4, sys.byteorder), 0, "shop/web:http", None)
    assert frontends.key(element) == "198.19.0.10 . tcp . 80" and frontends.keys([element]) == [frontends.key(element)]
    assert frontends.value(element) == "4100:3"
    classes = Codec.of(SetInfo("classes", 8, 23, 4, 0xFFFFFF00, 16, (), b""))
    assert classes.encode(["4100:3"]) == (0x4100 << 16 | 3).to_bytes(4, sys.byteorder)


def test_interval_sets_read_back_as_cidrs() -> None:
    cidrs = Codec.of(SetInfo("service-cidrs-v4", SET_INTERVAL, 7, 4, None, 0, (), b""))
    elements = [RawElement(bytes([198, 20, 0, 0]), None, None, ELEM_INTERVAL_END, None, None),
                RawElement(bytes([198, 18, 0, 0]), None, None, 0, None, None),
                RawElement(bytes([0, 0, 0, 0]), None, None, ELEM_INTERVAL_END, None, None),
                RawElement(bytes([203, 0, 113, 5]), None, None, 0, None, None)]  # open-ended: to the top
    assert [text for text, _ in cidrs.intervals(elements)] == ["198.18.0.0/15", "203.0.113.5-255.255.255.255"]


def _snapshot() -> Snapshot:
    return Snapshot(
        generation=7,
        keys={"service-ips-v4": ["10.96.0.10 . tcp . 80"], "no-endpoint-services-v4": ["10.96.0.11 . tcp . 80"],
              "backends-cluster-v4-2": ["10.96.0.10 . tcp . 80 . 0", "10.96.0.10 . tcp . 80 . 1"],
              "classes": ["4100:2", "4a00:0"], "firewall-allow-v4": ["10.0.0.1 . tcp . 80 . 192.0.2.7"],
              "cluster-cidrs-v4": ["10.244.0.0/16"]},
        comments={"service-ips-v4": ["default/web:http"], "no-endpoint-services-v4": ["default/none:http"]},
        values={"classes": ["goto lb-cluster-v4-2", "goto external-local-v4"]},
        chains=["services", "lb-cluster-v4-2"], endpoints={bytes([10, 244, 1, 5, 0x1f, 0x90, 0, 0]),
                                                           bytes([10, 244, 2, 7, 0x1f, 0x90, 0, 0])})


def test_drift_is_clean_when_the_kernel_holds_what_was_committed() -> None:
    snap = _snapshot()
    claims = {name: list(keys) for name, keys in snap.keys.items() if name != "classes"}
    claims["firewall-allow-v4"] = ["10.0.0.1 . tcp . 80 . 192.0.2.7/32"]  # the translator's spelling
    found = drift(snap, claims, ["lb-cluster-v4-2"], {"classes": ["4100:2"]})
    assert found.clean, found
    s = summary(snap)
    assert (s["services"], s["services_without_endpoints"], s["endpoints"]) == (2, 1, 2)
    assert s["lb_chains"] == ["lb-cluster-v4-2"] and s["config"]["cluster-cidrs"] == ["10.244.0.0/16"]


def test_drift_names_what_is_missing_and_what_is_unexpected() -> None:
    snap = _snapshot()
    claims = {name: list(keys) for name, keys in snap.keys.items() if name != "classes"}
    claims["service-ips-v4"] = ["10.96.0.10 . tcp . 80", "10.96.0.12 . udp . 53"]
    claims["no-endpoint-services-v4"] = []
    claims["hairpin-v4"] = ["10.244.1.5 . 10.244.1.5"]  # a set the kernel does not even have
    found = drift(snap, claims, ["lb-cluster-v4-2", "lb-cluster-v4-3"], {"classes": ["4100:2", "4100:3"]})
    assert found.missing == {"service-ips-v4": ["10.96.0.12 . udp . 53"], "classes": ["4100:3"],
                             "hairpin-v4": ["10.244.1.5 . 10.244.1.5"]}
    assert found.unexpected == {"no-endpoint-services-v4": ["10.96.0.11 . tcp . 80"]}
    assert found.chains_missing == ["lb-cluster-v4-3"] and found.chains_unexpected == []
    assert found.as_dict(limit=1)["missing"]["service-ips-v4"] == {"count": 1, "keys": ["10.96.0.12 . udp . 53"]}


def test_agent_state_without_the_kernel() -> None:
    proxier = SimpleNamespace(sync=lambda: "synced", pending=lambda: False, committed_inputs={"a": 1},
                              committed=SimpleNamespace(claims={"service-ips-v4": {"k": "o"}}, chains={}),
                              invalid={("Service", "default/bad"): "Service default/bad: spec.ports[0].port: bad"})
    loop = SimpleNamespace(ready=lambda: True, waiting_for=set(), failures=0, sync_count=3,
                           last_result=SimpleNamespace(rebuild=False, operations=4, services_synced=1, seconds=0.002))
    health = SimpleNamespace(last_updated=0.0, oldest_pending=None)
    lb = SimpleNamespace(speaker=SimpleNamespace(stats=SimpleNamespace(announced={"eth0": frozenset({"192.0.2.9"})})),
                         bgp=SimpleNamespace(
                             summary=lambda: [{"peer": "metallb-system/r1", "prefixes": ["192.0.2.10/32"]}]))
    provider = StatusProvider(proxier, loop, health, lb)
    assert proxier.sync() == "synced" and provider.epoch == 2, "syncs are counted (odd while one runs)"
    state = provider.state()
    assert state["sync"]["state"] == "synced" and state["sync"]["last_sync"] == "1970-01-01T00:00:00Z"
    assert state["programmed"] == {"services": 1, "elements": 1}
    assert state["invalid"] == [{"kind": "Service", "object": "default/bad",
                                 "reason": "Service default/bad: spec.ports[0].port: bad"}]
    assert state["load_balancer"] == {"announced": {"eth0": ["192.0.2.9"]},
                                      "bgp_sessions": [{"peer": "metallb-system/r1", "prefixes": ["192.0.2.10/32"]}]}
    loop.failures = 2
    assert provider.state()["sync"]["state"] == "failing"


# --- in a namespace, with a running agent ------------------------------------------------------------------
@pytest.fixture
def agent_netns(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    require_root_and_netns()
    objects = [service("web", "10.96.0.10"), endpoint_slice("web", ["10.244.1.5", "10.244.2.7"]),
               service("none", "10.96.0.11"),
               {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.12", "ports": [{"port": 99999}]}}]
    (tmp_path / "objects.yaml").write_text(yaml.safe_dump_all(objects))
    with scratch_netns("status") as ns:
        yield ns, tmp_path


def status(ns: str) -> tuple[int, dict[str, Any] | None, str]:
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "nftproxy", "status", "--json"],
                          capture_output=True, text=True, env=ENV, cwd=REPO, timeout=60)
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else None), proc.stderr


@pytest.mark.kernel
def test_status_with_and_without_the_agent(agent_netns: tuple[str, Path]) -> None:
    ns, manifests = agent_netns
    code, _report, err = status(ns)
    assert code == 1 and err.count("\n") == 1 and "table inet nftproxy is absent" in err
    agent = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "nftproxy", "run", "--manifests",
                              str(manifests), "--cluster-cidr", "10.244.0.0/16", "--service-cidr", "10.96.0.0/16",
                              "--node-name", "node-1", "--poll-interval", "0.1", "--no-repair-drift"],
                             env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            code, report, err = status(ns)
            if code == 0 and report and "sync" in report["agent"] and report["agent"]["sync"]["state"] == "synced":
                break
            assert time.monotonic() < deadline, (code, report, err)
            time.sleep(0.3)
        kernel, state = report["kernel"], report["agent"]
        assert (kernel["services"], kernel["services_without_endpoints"], kernel["endpoints"]) == (2, 1, 2)
        assert kernel["config"]["service-cidrs"] == ["10.96.0.0/16"]
        assert state["sync"]["last_sync"] and state["programmed"]["services"] == 2
        assert [i["object"] for i in state["invalid"]] == ["default/bad"]
        assert "port 99999 is outside 1-65535" in state["invalid"][0]["reason"]
        assert state["load_balancer"] is None and state["drift"]["clean"], state["drift"]
        # behind the agent's back: one element deleted, one added
        for command in ("delete element inet nftproxy cluster-ips-v4 { 10.96.0.10 }",
                        "add element inet nftproxy hairpin-v4 { 1.2.3.4 . 1.2.3.4 }"):
            subprocess.run(["ip", "netns", "exec", ns, "nft", command], check=True)
        found = status(ns)[1]["agent"]["drift"]  # type: ignore[index]
        assert not found["clean"]
        assert found["missing"] == {"cluster-ips-v4": {"count": 1, "keys": ["10.96.0.10"]}}
        assert found["unexpected"] == {"hairpin-v4": {"count": 1, "keys": ["1.2.3.4 . 1.2.3.4"]}}
        text = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "nftproxy", "status"],
                              capture_output=True, text=True, env=ENV, cwd=REPO).stdout
        assert "THE KERNEL DIFFERS" in text and "missing    cluster-ips-v4: 1: 10.96.0.10" in text
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)
    code, report, _err = status(ns)  # no agent: the kernel's half, still exit 0
    assert code == 0 and report is not None and "not reachable" in report["agent"]["error"]
    assert report["kernel"]["services"] == 2
