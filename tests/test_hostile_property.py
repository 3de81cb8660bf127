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
import math
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
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
from nftproxy.agent.updates import Delete, Upsert  # noqa: E402
from nftproxy.config import ConfigError, ProxyConfig  # noqa: E402
from nftproxy.kernel.fake import FakeKernel  # noqa: E402
from nftproxy.logs import plain_text  # noqa: E402
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
# NFP_HYPOTHESIS_EXAMPLES=2000: a longer hunt, randomised (CI keeps the same 25 draws every run)
EXAMPLES = int(os.environ.get("NFP_HYPOTHESIS_EXAMPLES", "0"))
FAST = settings(max_examples=EXAMPLES or 25, deadline=None, suppress_health_check=list(HealthCheck),
                derandomize=not EXAMPLES, database=None, phases=PHASES)

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
    ("metadata",), ("metadata", "name"), ("metadata", "namespace"),
    ("metadata", "labels"), ("metadata", "labels", LABEL),
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
def worlds(draw: st.DrawFn, max_hostile: int = 12,
           min_hostile: int = 1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
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
        logged = plain_text(f"ignoring invalid object: {err.kind} {err.ref}: ")  # as the plain format writes it
        assert stderr.count(logged) == 1, (err, stderr[-3000:])


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


# --- through the API: the stand-in's raw store -> ResourceWatchers -> the sync loop, Events recorded ---------
RESOURCES = {"Service": "services", "EndpointSlice": "endpointslices.discovery.k8s.io", "Node": "nodes"}


def storable(obj: Mapping[str, Any]) -> bool:
    """What an API server can hold at all: an object with a name (a string) under metadata, as JSON."""
    meta = obj.get("metadata")
    return (obj.get("kind") in RESOURCES and isinstance(meta, dict) and isinstance(meta.get("name"), str)
            and bool(meta["name"]) and encodable(obj))


class ApiAgent:
    """The agent's API half as cmd_run wires it, in this process: watchers, queue, loop, Event recorder."""

    def __init__(self, api: Any) -> None:
        from kubernetes import client

        from nftproxy.agent.kube import ResourceWatcher
        from nftproxy.agent.recorder import EventRecorder

        api_client = api.client()
        self.core = client.CoreV1Api(api_client)
        discovery = client.DiscoveryV1Api(api_client)
        self.recorder = EventRecorder(self.core, NODE)
        self.reports: list[InvalidObject] = []
        self.kernel = FakeKernel()

        def on_invalid(err: InvalidObject) -> None:
            self.reports.append(err)
            self.recorder.invalid(err)

        self.proxier = Proxier(CONFIG, self.kernel, on_invalid=on_invalid)
        self.updates: queue.Queue[Any] = queue.Queue()
        self.loop = SyncLoop(self.proxier, self.updates, list(RESOURCES), min_sync_period=0)
        self.stop = threading.Event()
        self.watchers = [
            ResourceWatcher("Service", self.core.list_service_for_all_namespaces, self.updates, self.stop),
            ResourceWatcher("EndpointSlice", discovery.list_endpoint_slice_for_all_namespaces, self.updates, self.stop),
            ResourceWatcher("Node", self.core.list_node, self.updates, self.stop,
                            field_selector=f"metadata.name={NODE}"),
        ]
        self.thread = threading.Thread(target=self.loop.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> ApiAgent:
        for watcher in self.watchers:
            watcher.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def settled(self, syncs: int, timeout: float = 90.0) -> None:
        """Wait until the loop made `syncs` syncs and has nothing pending (and is alive)."""
        deadline = time.monotonic() + timeout
        while self.loop.sync_count < syncs or self.proxier.pending() or not self.updates.empty():
            assert self.thread.is_alive(), "the sync loop died"
            assert all(w.alive() for w in self.watchers), "a watcher died"
            assert time.monotonic() < deadline, "the agent did not settle"
            time.sleep(0.05)

    def events(self) -> Counter[tuple[str, str, str]]:
        items = self.core.list_event_for_all_namespaces().items
        return Counter((e.involved_object.kind, e.involved_object.namespace, e.involved_object.name) for e in items)


# seconds per draw (a server, threads): no shrinking by re-running
@settings(max_examples=EXAMPLES // 100 or 4, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=not EXAMPLES, database=None, phases=[hypothesis.Phase.generate])
@given(worlds(min_hostile=6, max_hostile=16))
def test_api_path_raw_objects_never_crash_and_each_refusal_is_one_event(world: tuple[list[Any], list[Any]]) -> None:
    from e2e.apiserver import ApiServerStandin

    good, hostile = world[0], [o for o in world[1] if storable(o)]
    with ApiServerStandin(service_cidr="198.19.0.0/16", bookmark_interval=0.5) as api:
        for namespace in (GOOD_NS, HOSTILE_NS):
            api.put_raw("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        for obj in [*good, *hostile]:
            api.put_raw(RESOURCES[obj["kind"]], copy.deepcopy(obj))
        with ApiAgent(api) as agent:
            agent.settled(1)
            assert good_only(good) <= set(agent.kernel.dump())
            api.cut_watches()  # streams break and resume, then a compaction forces a relist: no new reports
            agent.settled(1)
            api.compact()
            api.cut_watches()
            time.sleep(1.0)
            agent.settled(1)
            expected = {(e.kind, e.ref.namespace, e.ref.name) for e in map(parses, hostile)
                        if e is not None and e.kind != "Node"}
            deadline = time.monotonic() + 60  # Events are posted by their own thread, with retries
            while not expected <= set(agent.events()) and time.monotonic() < deadline:
                time.sleep(0.1)
            events = agent.events()
            assert expected <= set(events), f"no Event for {expected - set(events)}"
            assert all(events[key] == 1 for key in expected), events
            watched = [o for o in hostile if o["kind"] != "Node" or o["metadata"]["name"] == NODE]  # field selector
            check_reports(agent.reports, watched)
            assert good_only(good) <= set(agent.kernel.dump())


# --- the config file and the flags -------------------------------------------------------------------------
CONFIG_KEYS = ["apiVersion", "kind", "clusterCIDR", "nodePortAddresses", "minSyncPeriod", "syncPeriod",
               "metricsBindAddress", "healthzBindAddress", "hostnameOverride", "masqueradeAll", "clientConnection",
               "logging", "nftables", "mode", "bindAddress", "loadBalancer", "unknownField"]
NESTED_KEYS = ["masqueradeAll", "minSyncPeriod", "syncPeriod", "kubeconfig", "format", "enabled",
               "loadBalancerClass", "leaseNamespace", "heartbeatPort", "qps", "bogus"]
DURATIONS = st.one_of(st.sampled_from(["1s", "500ms", "1h0m0s", "nan", "inf", "-1s", "1e400", "1.5", "0", "",
                                       "1h-1s", "١s", "²s", "0x10", " 2s ", "1d", "NaN", "-0"]),
                      st.floats(), st.integers(-10, 10**30), st.text(max_size=8))
BINDS = st.one_of(st.sampled_from(["0.0.0.0:10256", "[::]:10249", ":0", "0", "", "host:", "a:b:c:99999",
                                   "127.0.0.1:٣", "127.0.0.1:²", "127.0.0.1:-1", "127.0.0.1: 80", "[::1]"]),
                  st.text(max_size=12))
CONFIG_VALUES = st.one_of(JSONISH, DURATIONS, BINDS, st.sampled_from(["nftables", "KubeProxyConfiguration", "json"]))


@st.composite
def config_docs(draw: st.DrawFn) -> Any:
    doc = draw(st.dictionaries(st.sampled_from(CONFIG_KEYS), CONFIG_VALUES, max_size=6))
    for section in ("nftables", "clientConnection", "logging", "loadBalancer"):
        if draw(st.booleans()):
            doc[section] = draw(st.dictionaries(st.sampled_from(NESTED_KEYS), CONFIG_VALUES, max_size=3))
    return draw(st.one_of(st.just(doc), JSONISH))


def sane(settings_: Any) -> None:
    """What a run may start with: finite, non-negative periods; ports in range."""
    for period in (settings_.min_sync_period, settings_.sync_period):
        assert math.isfinite(period) and period >= 0, period
    for bind in (settings_.metrics_bind, settings_.healthz_bind):
        assert bind is None or (isinstance(bind[0], str) and 0 <= bind[1] <= 65535), bind


@FAST
@given(config_docs())
def test_any_config_file_is_read_or_refused_with_a_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                                doc: Any) -> None:
    from nftproxy.cli import build_parser, settings_from_args
    from nftproxy.configfile import parse_config

    try:
        parse_config(doc)
    except ConfigError:
        pass
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    try:
        settings_ = settings_from_args(build_parser().parse_args(["run", "--config", str(path), "--node-name", NODE]))
    except ConfigError:
        return
    sane(settings_)


FLAGS = {"--cluster-cidr": BINDS | ADDRESSES, "--service-cidr": ADDRESSES, "--nodeport-addresses": ADDRESSES | BINDS,
         "--min-sync-period": DURATIONS, "--sync-period": DURATIONS, "--metrics-bind-address": BINDS,
         "--healthz-bind-address": BINDS, "--node-name": ODD_TEXT, "--lb-heartbeat-port": DURATIONS | PORTS,
         "--lb-heartbeat-interval": DURATIONS, "--lb-heartbeat-timeout": DURATIONS, "--lb-lease-duration": DURATIONS,
         "--lb-handover": DURATIONS, "--poll-interval": DURATIONS, "--log-format": ODD_TEXT}


@FAST
@given(st.dictionaries(st.sampled_from(sorted(FLAGS)), st.none(), max_size=5).flatmap(
    lambda chosen: st.fixed_dictionaries({flag: FLAGS[flag] for flag in chosen})))
def test_any_flags_are_taken_or_refused_cleanly(flags: dict[str, Any]) -> None:
    """argparse refuses (exit 2) or settings_from_args raises ConfigError; else the settings are sane."""
    from nftproxy.cli import build_parser, settings_from_args

    argv = ["run"]
    for flag, value in flags.items():
        argv.append(f"{flag}={value}")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code == 2
        return
    try:
        settings_ = settings_from_args(args)
    except ConfigError:
        return
    sane(settings_)
    lb = settings_.lb
    assert lb is not None
    for value in (lb.heartbeat_interval, lb.heartbeat_dead_after, lb.lease_duration, lb.handover_seconds):
        assert math.isfinite(value) and value >= 0, value
    assert 1 <= lb.heartbeat_port <= 65535


@pytest.mark.parametrize("argv", [
    ["--sync-period", "nan"], ["--min-sync-period", "inf"], ["--sync-period", "1e400"],
    ["--metrics-bind-address", "127.0.0.1:²"], ["--healthz-bind-address", "[::]:٣٣"],
    ["--lb-heartbeat-timeout", "nan"], ["--lb-lease-duration", "inf"], ["--lb-handover", "inf"],
    ["--poll-interval", "nan"], ["--poll-interval", "inf"], ["--poll-interval", "-1"], ["--poll-interval", "0"],
])
def test_what_the_hunt_found_in_flags_is_a_config_error(argv: list[str]) -> None:
    """Found by the properties above: each passed (nan periods, an endless handover) or crashed with a
    bare ValueError (a superscript digit is a digit to str.isdigit, not to int)."""
    from nftproxy.cli import build_parser, settings_from_args

    with pytest.raises(ConfigError):
        settings_from_args(build_parser().parse_args(["run", "--node-name", NODE, *argv]))


def test_an_address_with_a_nul_is_refused_not_a_crash() -> None:
    svc = good_service(0, "nul")
    svc["spec"]["clusterIP"] = "198.19.0.1\x00"
    with pytest.raises(InvalidObject, match="clusterIPs"):
        parse_service(svc)


# --- the LoadBalancer half reads the same Services (API mode), and MetalLB's pools -----------------------------
POOL_PATHS = [("metadata",), ("metadata", "name"), ("spec",), ("spec", "addresses"), ("spec", "addresses", 0),
              ("spec", "autoAssign"), ("spec", "avoidBuggyIPs"), ("spec", "serviceAllocation"),
              ("spec", "serviceAllocation", "priority"), ("spec", "serviceAllocation", "namespaces"),
              ("spec", "serviceAllocation", "serviceSelectors"), ("spec", "serviceAllocation", "namespaceSelectors"),
              ("spec", "serviceAllocation", "serviceSelectors", 0, "matchExpressions"),
              ("spec", "ipAddressPools"), ("spec", "interfaces"), ("spec", "nodeSelectors")]
LB_SERVICE_PATHS = SERVICE_PATHS + [("spec", "loadBalancerClass"), ("spec", "loadBalancerIP"), ("spec", "selector"),
                                    ("metadata", "annotations", "metallb.io/loadBalancerIPs"),
                                    ("metadata", "annotations", "metallb.io/address-pool"), ("metadata", "labels")]


@st.composite
def lb_objects(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(["Service", "IPAddressPool", "L2Advertisement"]))
    if kind == "Service":
        obj = hostile_base("Service", "lb", 0)
        obj["spec"]["type"] = "LoadBalancer"
        paths = LB_SERVICE_PATHS
    else:
        obj = {"apiVersion": "metallb.io/v1beta1", "kind": kind, "metadata": {"name": "p", "namespace": "metallb"},
               "spec": {"addresses": ["203.0.113.0/28", "2001:db8:bad::1-2001:db8:bad::9"]}
               if kind == "IPAddressPool" else {"ipAddressPools": ["p"]}}
        paths = POOL_PATHS
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=4)):
        _set(obj, path, draw(HOSTILE))
    return kind, obj


@FAST
@given(lb_objects())
def test_the_load_balancer_parsers_refuse_by_name_never_crash(drawn: tuple[str, dict[str, Any]]) -> None:
    from nftproxy.lb.parse import handles, parse_l2_advertisement, parse_pool, parse_request

    kind, obj = drawn
    try:
        if kind == "Service":
            if handles(obj, None):
                parse_request(obj)
        elif kind == "IPAddressPool":
            parse_pool(obj)
        else:
            parse_l2_advertisement(obj)
    except InvalidObject:
        pass


@pytest.mark.parametrize("field, value", [("clusterIPs", 15314), ("ipFamilies", [["IPv4"]])])
def test_what_the_hunt_found_in_load_balancer_services(field: str, value: Any) -> None:
    """Found by the property above: a TypeError out of parse_request aborted the allocator's pass, every
    other Service's with it; now the Service is refused by name."""
    from nftproxy.lb.parse import parse_request

    svc = hostile_base("Service", "lb", 0)
    svc["spec"].update({"type": "LoadBalancer", field: value})
    with pytest.raises(InvalidObject, match=f"spec.{field}"):
        parse_request(svc)
