"""Property-based hostile input (issue 13, 7): whatever Services, EndpointSlices, Nodes, config files and
flags hold, the agent never crashes, valid objects keep their rules, and each invalid object is reported
once, by name.

Objects are drawn as valid ones and then mutated field by field: wrong types, wrong families, null,
missing, odd names, huge lists. Valid ("good") objects live in their own namespace and address ranges, so
nothing hostile can legitimately take their elements; the check is that every element a good-only world
programs is still programmed next to the hostile objects. The same objects go through the sync loop
(`SyncLoop.feed`, as the agent runs it) from memory, through manifest files (`ManifestSource`, YAML and
JSON) and once through `nftproxy run --manifests --dry-run`; and through the API stand-in's raw store
(stored unvalidated) to the real `ResourceWatcher`s, with Events recorded by the real `EventRecorder`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")  # the `test` extra; a plain install still runs the rest
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nftproxy.agent.loop import SyncLoop  # noqa: E402
from nftproxy.agent.manifest_source import ManifestSource  # noqa: E402
from nftproxy.agent.proxier import Proxier  # noqa: E402
from nftproxy.agent.updates import Delete, SourceState, Upsert  # noqa: E402
from nftproxy.config import ConfigError, ProxyConfig  # noqa: E402
from nftproxy.kernel.fake import FakeKernel  # noqa: E402
from nftproxy.objects.model import ObjectRef  # noqa: E402
from nftproxy.objects.parse import (  # noqa: E402
    InvalidObject,
    object_ref,
    parse_endpoint_slice,
    parse_node,
    parse_service,
)

REPO = Path(__file__).resolve().parents[1]
NODE = "node-1"
CONFIG = ProxyConfig(node_name=NODE, cluster_cidrs=("10.244.0.0/16",), service_cidrs=("198.19.0.0/16",))
GOOD_NS = "good"  # good objects: this namespace, 198.19.0.0/16, 10.244.0.0/16, nodePorts 30000-30999
HOSTILE_NS = "hostile"  # hostile ones: 203.0.113.0/24, 2001:db8:bad::/64, nodePorts 31000+
LABEL = "kubernetes.io/service-name"
# NFP_NO_SHRINK=1 while developing: report the first failing draw at once (shrinking names can take minutes)
PHASES = [hypothesis.Phase.generate] if os.environ.get("NFP_NO_SHRINK") else list(hypothesis.Phase)
FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                database=None, phases=PHASES)

# --- values ---------------------------------------------------------------------------------------------
ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), min_size=100, max_size=300),
    st.sampled_from(["", " ", "é" * 117, "a" * 129, 'quo"te\\', "nul\x00byte", "new\nline", "../..", "ünï/cödé",
                     "-", ".", "UPPER", "x" * 64, "\u202eevil", "😀" * 40, "\ufeffbom", "tab\there"]),
)
ADDRESSES = st.sampled_from([
    "203.0.113.7", "203.0.113.300", "2001:db8:bad::7", "::ffff:203.0.113.9", "203.0.113.0/24", "0.0.0.0",
    "255.255.255.255", "::", "banana", "", " 203.0.113.8", "203.0.113.08", "2001:db8:bad::7%eth0", "fe80::1",
    "203.0.113.7\x00", "１２３.0.113.7",
])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.text(max_size=12), ADDRESSES)
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
PORTS = st.one_of(st.integers(-5, 70000).filter(lambda p: not 30000 <= p < 31000),  # good nodePorts: their own
                  st.sampled_from([0, 1, 65535, 65536, "80", "http", 80.0, True, None]))
HOSTILE = st.one_of(JSONISH, ODD_TEXT, ADDRESSES, PORTS, st.just("__missing__"))


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    """obj[path] = value, creating dicts on the way; "__missing__" deletes. A path through something
    that is not a container is left alone (an earlier mutation replaced it)."""
    for i, key in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(obj, dict):
            if key not in obj or not isinstance(obj[key], dict | list):
                obj[key] = [] if isinstance(nxt, int) else {}
            obj = obj[key]
        elif isinstance(obj, list) and isinstance(key, int) and key < len(obj):
            obj = obj[key]
        else:
            return
    last = path[-1]
    if isinstance(obj, dict):
        if value == "__missing__":
            obj.pop(last, None)
        else:
            obj[last] = value
    elif isinstance(obj, list) and isinstance(last, int) and last < len(obj):
        if value == "__missing__":
            del obj[last]
        else:
            obj[last] = value


SERVICE_PATHS = [
    ("metadata",), ("metadata", "name"), ("metadata", "namespace"), ("metadata", "annotations"),
    ("metadata", "annotations", "nftproxy.io/endpoint-weights"), ("metadata", "creationTimestamp"),
    ("metadata", "annotations", "service.kubernetes.io/topology-mode"),
    ("spec",), ("spec", "type"), ("spec", "clusterIP"), ("spec", "clusterIPs"), ("spec", "clusterIPs", 0),
    ("spec", "clusterIPs", 1), ("spec", "ipFamilies"), ("spec", "ipFamilies", 0), ("spec", "ports"),
    ("spec", "ports", 0), ("spec", "ports", 0, "port"), ("spec", "ports", 0, "name"), ("spec", "ports", 0, "protocol"),
    ("spec", "ports", 0, "nodePort"), ("spec", "ports", 0, "targetPort"), ("spec", "ports", 1), ("spec", "externalIPs"),
    ("spec", "externalIPs", 0), ("spec", "externalTrafficPolicy"), ("spec", "internalTrafficPolicy"),
    ("spec", "healthCheckNodePort"), ("spec", "sessionAffinity"),
    ("spec", "sessionAffinityConfig", "clientIP", "timeoutSeconds"), ("spec", "sessionAffinityConfig"),
    ("spec", "loadBalancerSourceRanges"), ("spec", "loadBalancerSourceRanges", 0), ("status",),
    ("status", "loadBalancer", "ingress"), ("status", "loadBalancer", "ingress", 0),
    ("status", "loadBalancer", "ingress", 0, "ip"), ("status", "loadBalancer", "ingress", 0, "ipMode"),
    ("spec", "publishNotReadyAddresses"), ("spec", "trafficDistribution"), ("kind",),
]
SLICE_PATHS = [
    ("metadata",), ("metadata", "name"), ("metadata", "namespace"), ("metadata", "labels"), ("metadata", "labels", LABEL),
    ("metadata", "annotations"), ("metadata", "annotations", "nftproxy.io/weight"),
    ("metadata", "annotations", "endpoints.kubernetes.io/last-change-trigger-time"), ("addressType",), ("ports",),
    ("ports", 0), ("ports", 0, "port"), ("ports", 0, "name"), ("ports", 0, "protocol"), ("endpoints",),
    ("endpoints", 0), ("endpoints", 0, "addresses"), ("endpoints", 0, "addresses", 0), ("endpoints", 1, "addresses", 0),
    ("endpoints", 0, "conditions"), ("endpoints", 0, "conditions", "ready"), ("endpoints", 0, "conditions", "serving"),
    ("endpoints", 0, "hints"), ("endpoints", 0, "hints", "forZones"), ("endpoints", 0, "hints", "forZones", 0),
    ("endpoints", 0, "nodeName"), ("endpoints", 0, "zone"), ("endpoints", 0, "targetRef"),
    ("endpoints", 0, "targetRef", "name"), ("kind",),
]
NODE_PATHS = [("metadata",), ("metadata", "name"), ("metadata", "labels"),
              ("metadata", "labels", "topology.kubernetes.io/zone"), ("metadata", "labels", "x")]


# --- objects ----------------------------------------------------------------------------------------------
def good_service(i: int, name: str, kind: str = "ClusterIP", ports: int = 1) -> dict[str, Any]:
    """A valid Service of the good namespace: its addresses and nodePorts are its own."""
    spec: dict[str, Any] = {"type": kind, "clusterIP": f"198.19.{i // 250}.{1 + i % 250}",
                            "ports": [{"name": f"p{k}" if ports > 1 else "http", "port": 80 + k, "protocol": "TCP"}
                                      for k in range(ports)]}
    if kind == "NodePort":
        spec["ports"][0]["nodePort"] = 30000 + i
    return {"apiVersion": "v1", "kind": "Service", "spec": spec,
            "metadata": {"name": name, "namespace": GOOD_NS, "creationTimestamp": "2020-01-01T00:00:00Z"}}


def good_slice(i: int, service: str, endpoints: int) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service}-s{i}"[:250], "namespace": GOOD_NS, "labels": {LABEL: service}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"10.244.{(i * 7 + k) // 250 % 250}.{1 + (i * 7 + k) % 250}"],
                           "conditions": {"ready": True}, "nodeName": NODE} for k in range(endpoints)]}


def hostile_base(kind: str, name: str, n: int) -> dict[str, Any]:
    """A valid object of the hostile namespace, before mutation."""
    if kind == "Service":
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": HOSTILE_NS, "creationTimestamp": "2030-01-01T00:00:00Z"},
                "spec": {"type": "NodePort", "clusterIP": f"203.0.113.{n % 250 + 1}",
                         "ports": [{"name": "a", "port": 80, "nodePort": 31000 + n % 1000},
                                   {"name": "b", "port": 53, "protocol": "UDP"}],
                         "externalIPs": ["203.0.113.250"]},
                "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.251"}]}}}
    if kind == "EndpointSlice":
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": {"name": name, "namespace": HOSTILE_NS, "labels": {LABEL: f"svc-{n % 3}"}},
                "ports": [{"name": "a", "port": 8080}],
                "endpoints": [{"addresses": ["203.0.113.20"], "conditions": {"ready": True}},
                              {"addresses": ["203.0.113.21"], "conditions": {"ready": False, "serving": True}}]}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE if n % 2 else name, "labels": {"topology.kubernetes.io/zone": "z1"}}}


@st.composite
def hostile_object(draw: st.DrawFn, n: int = 0) -> dict[str, Any]:
    kind = draw(st.sampled_from(["Service", "EndpointSlice", "Node"]))
    name = draw(st.one_of(st.just(f"h{n}"), ODD_TEXT))
    obj = hostile_base(kind, name, n)
    paths = {"Service": SERVICE_PATHS, "EndpointSlice": SLICE_PATHS, "Node": NODE_PATHS}[kind]
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=4)):
        _set(obj, path, draw(HOSTILE))
    if kind != "Node" and isinstance(obj.get("metadata"), dict):
        obj["metadata"]["namespace"] = HOSTILE_NS  # keep it apart from the good objects (a wrong type stays)
    if kind == "Service" and draw(st.booleans()):  # the same Service name as some slice's label
        _set(obj, ("metadata", "name"), f"svc-{n % 3}")
    return obj


@st.composite
def worlds(draw: st.DrawFn, max_hostile: int = 12, min_hostile: int = 1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(good objects, hostile objects)."""
    good: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 4))):
        name = draw(st.one_of(st.just(f"web-{i}"), ODD_TEXT.filter(bool))) + f"-{i}"
        good.append(good_service(i, name, draw(st.sampled_from(["ClusterIP", "NodePort"]))))
        good.append(good_slice(i, name, draw(st.integers(0, 3))))
    hostile: dict[tuple[str, ObjectRef], dict[str, Any]] = {}
    for n in range(draw(st.integers(min_hostile, max_hostile))):  # one version per kind and name, as the API holds them
        obj = draw(hostile_object(n))
        hostile.setdefault((str(obj.get("kind")), object_ref(obj)), obj)
    return good, list(hostile.values())


def parses(obj: Mapping[str, Any]) -> InvalidObject | None:
    """The refusal `obj` earns (a slice with skipped endpoints counts), or None."""
    kind = obj.get("kind")
    try:
        if kind == "Service":
            parse_service(obj)
        elif kind == "EndpointSlice":
            sl = parse_endpoint_slice(obj)
            if sl is not None and sl.skipped:
                return InvalidObject(kind, sl.ref, sl.skipped[0][0], sl.skipped[0][1])
        elif kind == "Node":
            parse_node(obj)
    except InvalidObject as err:
        return err
    return None


def encodable(obj: Any) -> bool:
    try:
        json.dumps(obj, allow_nan=False).encode()
    except (UnicodeEncodeError, ValueError):
        return False
    return True


# --- the agent's loop, in memory -------------------------------------------------------------------------
class Run:
    """A Proxier and SyncLoop over the FakeKernel, as cmd_run wires them (reports counted)."""

    def __init__(self) -> None:
        self.reports: list[InvalidObject] = []
        self.kernel = FakeKernel()
        self.proxier = Proxier(CONFIG, self.kernel, on_invalid=self.reports.append)
        self.loop = SyncLoop(self.proxier, queue.Queue(), [], min_sync_period=0)

    def feed(self, objects: list[Mapping[str, Any]]) -> None:
        for obj in objects:
            self.loop.feed(Upsert(obj))

    def sync(self) -> None:
        assert self.loop.sync_now() is not None, "the sync failed"
        script = self.kernel.transactions[-1].render() if self.kernel.transactions else ""
        script.encode()  # what the real kernel is sent: it must encode, whatever the names hold

    def elements(self) -> set[str]:
        return set(self.kernel.dump())


def good_only(good: list[dict[str, Any]]) -> set[str]:
    run = Run()
    run.feed(good)
    run.sync()
    assert not run.reports, run.reports
    return run.elements()


def check_reports(reports: list[InvalidObject], objects: list[Mapping[str, Any]]) -> None:
    """Every refused object reported by its name, none twice (same kind, name and reason)."""
    expected = {}
    for obj in objects:
        err = parses(obj)
        if err is not None:
            expected[(err.kind, err.ref)] = err
    got = Counter((r.kind, r.ref, str(r)) for r in reports)
    assert all(n == 1 for n in got.values()), f"reported more than once: {got}"
    reported = {(r.kind, r.ref) for r in reports}
    # the last version of each object decides: an object refused, then replaced, may have been reported before
    assert set(expected) <= reported, f"not reported: {set(expected) - reported}"
    for r in reports:
        name = r.ref.name
        assert not name or name in str(r), r


@FAST
@given(worlds())
def test_the_sync_loop_survives_any_objects_and_keeps_the_good_ones(world: tuple[list[Any], list[Any]]) -> None:
    good, hostile = world
    want = good_only(good)
    run = Run()
    run.feed(hostile[: len(hostile) // 2] + good + hostile[len(hostile) // 2:])
    run.sync()
    assert want <= run.elements(), f"good elements lost: {sorted(want - run.elements())[:5]}"
    run.feed(hostile)  # the same again: nothing new to report
    run.sync()
    run.sync()
    check_reports(run.reports, hostile)
    for obj in hostile:  # and every hostile object deleted again, as a watch would say
        ref = object_ref(obj)
        run.loop.feed(Delete(str(obj.get("kind")), ref.namespace, ref.name))
    run.sync()
    assert want <= run.elements()


@FAST
@given(worlds(max_hostile=6), st.sampled_from(["yaml", "json"]))
def test_manifest_files_with_any_objects(tmp_path_factory: pytest.TempPathFactory,
                                         world: tuple[list[Any], list[Any]], fmt: str) -> None:
    """ManifestSource -> the loop: one file per hostile object (a file may fail to parse: its own loss)."""
    good, hostile = world
    assume(all(encodable(o) for o in hostile) or fmt == "yaml")
    directory = tmp_path_factory.mktemp("manifests")
    (directory / "good.yaml").write_text(yaml.safe_dump_all(good, allow_unicode=True))
    for i, obj in enumerate(hostile):
        if fmt == "json":
            (directory / f"h{i}.json").write_text(json.dumps(obj), encoding="utf-8", errors="surrogatepass")
        else:
            (directory / f"h{i}.yaml").write_text(yaml.safe_dump(obj), encoding="utf-8", errors="surrogatepass")
    source = ManifestSource(directory)
    changes = source.poll()
    run = Run()
    run.feed(list(changes.upserts))
    run.sync()
    assert good_only(good) <= run.elements()
    assert not source.poll().upserts, "an unchanged directory reports nothing"
    check_reports(run.reports, [o for o in changes.upserts if o.get("kind") in ("Service", "EndpointSlice", "Node")])


def test_extreme_sizes_5000_ports_and_10000_endpoints_in_one_slice() -> None:
    """Big but valid objects are programmed; the same sizes with one bad entry cost only that entry."""
    svc = good_service(0, "wide", ports=5000)
    for k, port in enumerate(svc["spec"]["ports"]):
        port["port"] = 1 + k
    wide_slice = good_slice(0, "wide", 0)
    wide_slice["ports"] = [{"name": f"p{k}", "port": 10000 + k} for k in range(5000)]
    big = good_service(1, "big")
    big_slice = good_slice(1, "big", 0)
    big_slice["endpoints"] = [{"addresses": [f"10.244.{k // 250}.{1 + k % 250}"], "conditions": {"ready": True}}
                              for k in range(10000)]
    big_slice["endpoints"][5000]["addresses"] = ["2001:db8::1"]  # one of the wrong family
    run = Run()
    started = time.monotonic()
    run.feed([svc, wide_slice, big, big_slice])
    run.sync()
    assert time.monotonic() - started < 30
    (_, slices) = run.proxier.committed_inputs[ObjectRef(GOOD_NS, "big")]
    assert sum(len(s.endpoints) for s in slices) == 9999
    assert len(run.reports) == 1 and "endpoints[5000]" in str(run.reports[0])
    elements = run.elements()
    assert sum(1 for e in elements if '"good/wide:' in e and e.startswith("element no-endpoint-services-v4 ")) == 5000
    assert any("backends-cluster-v4-9999 " in e for e in elements)


# --- through the CLI: `nftproxy run --manifests DIR --dry-run` ----------------------------------------------
def many_hostile(draws: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Good objects of one draw and the hostile objects of `draws` draws (deterministic: derandomized),
    one per kind and name."""
    good: list[dict[str, Any]] = []
    hostile: dict[tuple[str, ObjectRef], dict[str, Any]] = {}

    @settings(max_examples=draws, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None, phases=[hypothesis.Phase.generate])
    @given(worlds())
    def collect(world: tuple[list[Any], list[Any]]) -> None:
        if not good:
            good.extend(world[0])
        for obj in world[1]:
            if encodable(obj):
                hostile.setdefault((str(obj.get("kind")), object_ref(obj)), obj)

    collect()
    return good, list(hostile.values())


def test_dry_run_cli_with_a_directory_of_hostile_objects(tmp_path: Path) -> None:
    """The real command, once, over the objects of 40 draws: exit 0, no traceback, the good Services in
    the script, each refused object named in the log exactly once."""
    good, hostile = many_hostile(40)
    directory = tmp_path
    (directory / "good.yaml").write_text(yaml.safe_dump_all(good, allow_unicode=True))
    (directory / "hostile.yaml").write_text(yaml.safe_dump_all(hostile, allow_unicode=True))
    out = subprocess.run([sys.executable, "-m", "nftproxy", "run", "--manifests", str(directory), "--dry-run",
                          "--node-name", NODE, "--cluster-cidr", "10.244.0.0/16", "--service-cidr", "198.19.0.0/16"],
                         capture_output=True, timeout=120, cwd=REPO)
    stdout, stderr = out.stdout.decode(), out.stderr.decode()  # bytes: no newline translation of odd names
    assert out.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    assert sum(1 for o in hostile if parses(o)) >= 10, "the draw should refuse a good number of objects"
    services = [o for o in good if o["kind"] == "Service"]
    assert sum(1 for o in services if f'198.19.0.{1 + good.index(o) // 2} . tcp . 80' in stdout) == len(services)
    for err in filter(None, map(parses, hostile)):  # names may hold line breaks: count in the whole log
        assert stderr.count(f"ignoring invalid object: {err.kind} {err.ref}: ") == 1, (err, stderr[-3000:])


def test_lone_surrogates_from_json_manifests_are_refused_by_name(tmp_path: Path) -> None:
    """JSON escapes can spell a lone surrogate, which no UTF-8 script can carry: once it crashed
    `--dry-run` (and would fail every transaction of the agent). Refused like any bad name now."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad\ud800name", "namespace": "default"},
           "spec": {"clusterIP": "198.19.0.5", "ports": [{"name": "http", "port": 80}]}}
    bad_port = {**bad, "metadata": {"name": "badport", "namespace": "default"},
                "spec": {"clusterIP": "198.19.0.7", "ports": [{"name": "x\udc80", "port": 80}]}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))  # json.dumps writes the escape: plain ASCII
    (tmp_path / "badport.json").write_text(json.dumps(bad_port))
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good_service(0, "fine")))
    run = Run()
    run.feed(list(ManifestSource(tmp_path).poll().upserts))
    run.sync()
    assert sorted(r.field for r in run.reports) == ["metadata.name", "spec.ports[0].name"]
    assert any("198.19.0.1 . tcp . 80" in e for e in run.elements())
    out = subprocess.run([sys.executable, "-m", "nftproxy", "run", "--manifests", str(tmp_path), "--dry-run",
                          "--node-name", NODE], capture_output=True, timeout=120, cwd=REPO)
    assert out.returncode == 0 and b"Traceback" not in out.stderr, out.stderr.decode()[-2000:]
    assert b"good/fine:http" in out.stdout
