"""LoadBalancer allocation throughput and latency against the API stand-in.

    python -m nftproxy.bench_lb --services 50000 [--rate 300] [--clients 4] [--output FILE]

Three processes, so no two of them share a GIL:

- the API server stand-in (`python -m e2e.apiserver`) on loopback;
- the allocator, wired as `nftproxy run` wires its LoadBalancer half: a `LoadBalancerAgent` with its
  own watchers (Nodes, Namespaces, IPAddressPools, L2Advertisements), Service and EndpointSlice
  watchers feeding its queue (the Tee of the real agent, without the proxier), the Lease election,
  the `StatusWriter` pool and an `EventRecorder`; the ARP/NDP responder and the heartbeats are stubs
  (this node alone is live), so the speaker still decides, but nothing touches an interface;
- this driver: client threads creating `type: LoadBalancer` Services at a steady pace (an open loop:
  a slot missed is sent at once, so a slow server shows as a lower creation rate) and a separate
  client watching every Service, which notes when `status.loadBalancer.ingress` first appears.

Latency is from the return of a Service's create call to the moment that watch delivers the status
(both on this process's monotonic clock); the sustained rate is Services allocated divided by the
time from the first create to the last status seen. `--standin inprocess` runs the stand-in inside
the allocator's process instead (one GIL for both), for comparison.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE = "bench-node"
NAMESPACE = "bench-lb"
POOL_NAMESPACE = "metallb-system"
POOL_CIDR = "10.200.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"  # room for far more ClusterIPs than any run creates
TARGET_RATE = 300.0  # allocations/s, sustained
TARGET_P99_MS = 500.0


# --- results ------------------------------------------------------------------------------------
@dataclass
class Result:
    services: int
    rate_asked: float
    clients: int
    standin: str  # "subprocess" or "inprocess"
    allocated: int = 0
    unique_addresses: int = 0
    duplicates: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    total_seconds: float = 0.0  # first create sent -> last status seen
    create_seconds: float = 0.0  # first create sent -> last create returned
    allocations_per_second: float = 0.0
    steady_allocations_per_second: float = 0.0  # between the 10th and 90th percentile of completions
    creates_per_second: float = 0.0
    create_ms_p50: float = 0.0
    create_ms_p99: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # create returned -> status seen
    annotation_ms: dict[str, float] = field(default_factory=dict)  # create returned -> pool annotation seen
    allocator: dict[str, float] = field(default_factory=dict)  # cpu_seconds, cpu_percent, rss_mib, peak_rss_mib
    standin_process: dict[str, float] = field(default_factory=dict)
    driver: dict[str, float] = field(default_factory=dict)
    allocator_stats: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.duplicates and self.allocated == self.services

    def summary(self) -> str:
        lat = self.latency_ms
        a = self.allocator
        lines = [
            f"{self.services} Services, {self.clients} client threads asked for {self.rate_asked:.0f}/s, stand-in "
            f"{self.standin}: {self.allocated} allocated ({self.unique_addresses} distinct addresses) in "
            f"{self.total_seconds:.1f} s",
            f"  sustained {self.allocations_per_second:.0f} allocations/s (steady part "
            f"{self.steady_allocations_per_second:.0f}/s); clients created {self.creates_per_second:.0f}/s "
            f"(create call p50 {self.create_ms_p50:.1f} ms, p99 {self.create_ms_p99:.1f} ms)",
            f"  create -> status: p50 {lat.get('p50', 0):.0f} ms, p99 {lat.get('p99', 0):.0f} ms, "
            f"max {lat.get('max', 0):.0f} ms; -> annotation p50 {self.annotation_ms.get('p50', 0):.0f} ms, "
            f"p99 {self.annotation_ms.get('p99', 0):.0f} ms",
            f"  allocator process: {a.get('cpu_seconds', 0):.1f} s CPU ({a.get('cpu_percent', 0):.0f} % of one "
            f"core), RSS {a.get('rss_mib', 0):.0f} MiB (peak {a.get('peak_rss_mib', 0):.0f} MiB); stand-in "
            f"{self.standin_process.get('cpu_seconds', 0):.1f} s CPU "
            f"({self.standin_process.get('cpu_percent', 0):.0f} %); driver "
            f"{self.driver.get('cpu_seconds', 0):.1f} s CPU ({self.driver.get('cpu_percent', 0):.0f} %)",
        ]
        met_rate = self.allocations_per_second >= TARGET_RATE
        met_p99 = lat.get("p99", float("inf")) <= TARGET_P99_MS
        lines.append(f"  target >= {TARGET_RATE:.0f}/s: {'met' if met_rate else 'MISSED'}; "
                     f"p99 <= {TARGET_P99_MS:.0f} ms: {'met' if met_p99 else 'MISSED'}")
        if self.missing:
            lines.append(f"  NOT ALLOCATED: {len(self.missing)} (e.g. {', '.join(self.missing[:5])})")
        if self.duplicates:
            lines.append(f"  DUPLICATE ADDRESSES: {', '.join(self.duplicates[:5])}")
        for err in self.errors[:5]:
            lines.append(f"  error: {err}")
        return "\n".join(lines)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1],
            "mean": statistics.fmean(ordered)}


# --- process accounting -------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    rss = hwm = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, hwm


# --- the allocator process ----------------------------------------------------------------------
class _NoResponder:
    """Stands in for the ARP/NDP responder: nothing is announced on any interface."""

    def __init__(self) -> None:
        self.sets = 0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def set_addresses(self, wanted: Any) -> None:
        self.sets += 1

    def reannounce(self, interface: str) -> None:
        pass


class _AloneMembership:
    """Stands in for the heartbeats: this node is live and the only one."""

    def __init__(self, me: str) -> None:
        self.me = me

    def start(self) -> None:
        pass

    def stop(self, farewell: bool = True) -> None:
        pass

    def set_local(self, state: Any) -> None:
        pass

    def set_peers(self, peers: Any) -> None:
        pass

    def eligible(self) -> frozenset[str]:
        return frozenset({self.me})

    def settled(self) -> bool:
        return True


class _GCPauses:
    """The cyclic garbage collector's pauses in this process (they stop every thread)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.cpu = 0.0  # the collecting thread's CPU time: the wall time also counts being descheduled
        self.longest = 0.0
        self.full = 0
        self._started = (0.0, 0.0)

    def install(self) -> _GCPauses:
        import gc

        gc.callbacks.append(self._callback)
        return self

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
            return
        pause = time.perf_counter() - self._started[0]
        self.cpu += time.thread_time() - self._started[1]
        self.total += pause
        self.longest = max(self.longest, pause)
        self.full += info.get("generation") == 2

    def summary(self) -> dict[str, float]:
        return {"seconds": round(self.total, 3), "cpu_seconds": round(self.cpu, 3),
                "longest_ms": round(self.longest * 1000, 1), "full": self.full}


def run_allocator(kubeconfig: str | None, standin_inprocess: bool, workdir: str, profile: str | None) -> int:
    """The allocator side, as `nftproxy run` wires it (see the module docstring). Prints `ready ...` once
    it holds the lease and every watcher has listed, and its statistics as JSON on SIGTERM."""
    from kubernetes import client

    from .agent.kube import ResourceWatcher
    from .agent.metrics import Metrics
    from .agent.recorder import EventRecorder
    from .kube_client import api_clients
    from .lb.agent import LBSettings, LoadBalancerAgent
    from .logs import setup_logging

    setup_logging("plain")
    api = None
    if standin_inprocess:
        from e2e.apiserver import ApiServerStandin

        api = ApiServerStandin(service_cidr=SERVICE_CIDR, history_size=1_000_000, bookmark_interval=5.0,
                               kubeconfig_path=os.path.join(workdir, "kubeconfig")).start()
        kubeconfig = api.kubeconfig_path
    assert kubeconfig is not None
    core, discovery = api_clients(kubeconfig)
    recorder = EventRecorder(core, NODE)
    responder = _NoResponder()
    agent = LoadBalancerAgent(
        LBSettings(), NODE, core, core.api_client,
        responder_factory=lambda _on_conflict: responder,
        membership_factory=lambda _on_change: _AloneMembership(NODE),
        carrier_watch_factory=None,
        interface_of_address=lambda address: "bench0" if address else None,
        proxy_ready=lambda: True,
        events=recorder,
        metrics=Metrics(),
    )
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        run = agent._run

        def profiled() -> None:
            profiler.runcall(run)

        agent._thread = threading.Thread(target=profiled, name="lb-loop", daemon=True)

    gc_pauses = _GCPauses().install()
    stop = threading.Event()
    watchers = [
        ResourceWatcher("Service", core.list_service_for_all_namespaces, agent.queue, stop),
        ResourceWatcher("EndpointSlice", discovery.list_endpoint_slice_for_all_namespaces, agent.queue, stop),
        *agent.watchers(stop),
    ]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    agent.start(client.CoordinationV1Api(core.api_client))
    for watcher in watchers:
        watcher.start()
    while not done.is_set() and not (agent.controller.leading and not agent.waiting_for):
        done.wait(0.02)
    print(f"ready {kubeconfig}", flush=True)
    peaks = {"loop_queue": 0, "writes_in_flight": 0, "event_queue": 0}
    while not done.wait(0.5):  # where a backlog builds up: the loop's queue, the writes, the Events
        now = {"loop_queue": agent.queue.qsize(), "writes_in_flight": len(agent.controller.inflight),
               "event_queue": recorder._queue.qsize()}
        peaks = {k: max(v, now[k]) for k, v in peaks.items()}
        if any(now.values()):
            logging.getLogger("nftproxy.bench_lb").info("backlog: %s", now)
    agent._stop.set()
    agent._thread.join(timeout=5)
    stop.set()
    if profiler is not None:
        profiler.dump_stats(profile)
    import gc

    gc.unfreeze()
    cyclic_garbage = gc.collect()  # what freezing kept from the collector, had it been garbage
    stats = {"status_writes": agent.controller.writes, "pending": len(agent.controller.pending),
             "inflight": len(agent.controller.inflight), "responder_sets": responder.sets,
             "queue_left": agent.queue.qsize(), "peaks": peaks, "gc": {**gc_pauses.summary(), "garbage_after_unfreeze": cyclic_garbage}}
    print("stats " + json.dumps(stats), flush=True)
    if api is not None:
        api.stop()
    return 0


# --- the driver -----------------------------------------------------------------------------------
def _service(i: int) -> dict[str, Any]:
    name = f"lb-{i}"
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
            "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": False, "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}


class _Observer:
    """A separate client watching every Service: when each first shows an ingress IP and the annotation."""

    def __init__(self, api_client: Any, since: str) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.since = since
        self.status: dict[str, tuple[float, str]] = {}  # name -> (monotonic time, first ingress IP)
        self.annotated: dict[str, float] = {}
        self.events = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.changed = threading.Condition()
        self._resp: Any = None
        self.thread = threading.Thread(target=self._run, name="observer", daemon=True)

    def start(self) -> _Observer:
        self.thread.start()
        return self

    def _run(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        from .lb.parse import ALLOCATED_FROM_ANNOTATION

        while not self.stop.is_set():
            try:
                resp = self._resp = self.core.list_namespaced_service(
                    NAMESPACE, watch=True, resource_version=self.since, allow_watch_bookmarks=True,
                    timeout_seconds=3600, _preload_content=False, _request_timeout=(10, 3700))
                for line in iter_resp_lines(resp):
                    now = time.monotonic()
                    if not line or ('"ingress"' not in line and ALLOCATED_FROM_ANNOTATION not in line
                                    and '"ERROR"' not in line):
                        continue  # a Service just created (decoding it would only cost the measured CPU)
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    meta = obj.get("metadata") or {}
                    if event.get("type") == "ERROR":
                        raise RuntimeError(f"watch error: {obj.get('message')}")
                    self.since = meta.get("resourceVersion") or self.since
                    if event.get("type") not in ("ADDED", "MODIFIED"):
                        continue
                    self.events += 1
                    name = meta.get("name", "")
                    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
                    fresh = False
                    if ingress and name not in self.status:
                        self.status[name] = (now, str(ingress[0].get("ip")))
                        fresh = True
                    if name not in self.annotated and ALLOCATED_FROM_ANNOTATION in (meta.get("annotations") or {}):
                        self.annotated[name] = now
                        fresh = True
                    if fresh:
                        with self.changed:
                            self.changed.notify_all()
            except Exception as err:  # noqa: BLE001 - resumed from the last version seen
                if self.stop.is_set():
                    return
                self.errors.append(f"observer: {type(err).__name__}: {err}")
                time.sleep(0.2)

    def close(self) -> None:
        self.stop.set()
        if self._resp is not None:
            try:
                self._resp.close()
            except Exception:  # noqa: BLE001
                pass


def _start_process(args: list[str], log_path: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start a child whose first stdout line tells it is ready; returns it and that line."""
    log = open(log_path, "w")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=log, text=True,
                            env=env, cwd=REPO_ROOT)
    log.close()
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    proc.lines = lines  # type: ignore[attr-defined]
    try:
        first = lines.get(timeout=120)
    except queue.Empty:
        proc.kill()
        raise RuntimeError(f"{args[1]} did not start; see {log_path}") from None
    return proc, first.strip()


def _stop_process(proc: subprocess.Popen[str] | None) -> str:
    """SIGTERM and wait; returns what it printed after its first line."""
    if proc is None:
        return ""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    time.sleep(0.1)
    out = []
    lines = proc.lines  # type: ignore[attr-defined]
    while not lines.empty():
        out.append(lines.get_nowait())
    return "".join(out)


def _setup_cluster(api_client: Any) -> str:
    """The namespaces, one Node, a /16 pool and an L2Advertisement; returns the resourceVersion after."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    for ns in (NAMESPACE, POOL_NAMESPACE):
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
                      "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}})
    custom.create_namespaced_custom_object("metallb.io", "v1beta1", POOL_NAMESPACE, "ipaddresspools", {
        "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool", "metadata": {"name": "bench"},
        "spec": {"addresses": [POOL_CIDR]}})
    custom.create_namespaced_custom_object("metallb.io", "v1beta1", POOL_NAMESPACE, "l2advertisements", {
        "apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement", "metadata": {"name": "bench"},
        "spec": {"ipAddressPools": ["bench"]}})
    listed = core.list_namespaced_service(NAMESPACE, limit=1, _preload_content=False)
    return str(json.loads(listed.data)["metadata"]["resourceVersion"])


def _client(kubeconfig: str) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.no_proxy = ",".join(p for p in (cfg.no_proxy, "127.0.0.1", "localhost", "::1") if p)
    return client.ApiClient(cfg)


def measure(services: int, rate: float = 320.0, clients: int = 4, standin: str = "subprocess",
            timeout: float | None = None, profile_dir: str | None = None, workdir: str | None = None,
            progress: bool = False) -> Result:
    """Run one benchmark. A slow or incomplete run is a Result that says so (`complete`, `missing`);
    RuntimeError only when the stand-in or the allocator does not start."""
    from kubernetes import client

    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="nftproxy-bench-lb-")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    timeout = timeout if timeout is not None else 60.0 + services / 50.0
    result = Result(services, rate, clients, standin)
    server = allocator = None
    observer = None
    try:
        kubeconfig = os.path.join(workdir, "kubeconfig")
        alloc_args = ["-m", "nftproxy.bench_lb", "--role", "allocator", "--workdir", workdir]
        if profile_dir:
            alloc_args += ["--profile", os.path.join(profile_dir, "allocator-loop.prof")]
        if standin == "subprocess":
            server, line = _start_process(
                ["-m", "e2e.apiserver", "--port", "0", "--service-cidr", SERVICE_CIDR, "--history-size", "1000000",
                 "--bookmark-interval", "5", "--kubeconfig-out", kubeconfig],
                os.path.join(workdir, "apiserver.log"), env)
            if not line.startswith("serving"):
                raise RuntimeError(f"stand-in: {line}")
            setup_client = _client(kubeconfig)
            since = _setup_cluster(setup_client)
            allocator, line = _start_process(alloc_args + ["--kubeconfig", kubeconfig],
                                             os.path.join(workdir, "allocator.log"), env)
        else:
            allocator, line = _start_process(alloc_args + ["--standin", "inprocess"],
                                             os.path.join(workdir, "allocator.log"), env)
            setup_client = _client(kubeconfig)
            since = _setup_cluster(setup_client)
        if not line.startswith("ready"):
            raise RuntimeError(f"allocator: {line}")

        observer = _Observer(_client(kubeconfig), since).start()
        names = [f"lb-{i}" for i in range(services)]
        returned: dict[str, float] = {}
        create_ms: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        next_index = iter(range(services))
        pids = {"allocator": allocator.pid, **({"standin": server.pid} if server else {})}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        driver0 = time.process_time()
        started = time.monotonic()

        def create_loop() -> None:
            core = client.CoreV1Api(_client(kubeconfig))
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                body = _service(i)
                for attempt in range(3):
                    t0 = time.monotonic()
                    try:
                        resp = core.create_namespaced_service(NAMESPACE, body, _preload_content=False)
                        resp.data  # noqa: B018 - read it all so the connection goes back to the pool
                        resp.release_conn()
                        break
                    except Exception as err:  # noqa: BLE001 - counted, retried
                        with lock:
                            errors.append(f"create lb-{i}: {err}"[:200])
                        if attempt == 2:
                            break
                        time.sleep(0.2)
                t1 = time.monotonic()
                with lock:
                    returned[body["metadata"]["name"]] = t1
                    create_ms.append((t1 - t0) * 1000)

        threads = [threading.Thread(target=create_loop, name=f"client-{k}", daemon=True) for k in range(clients)]
        for t in threads:
            t.start()
        deadline = started + timeout
        last_report = started
        while time.monotonic() < deadline:
            with observer.changed:
                observer.changed.wait(0.5)
            if len(observer.status) >= services and len(observer.annotated) >= services:
                break
            if progress and time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                print(f"  {last_report - started:6.1f} s: {len(returned)} created, {len(observer.status)} "
                      f"allocated, allocator {cpu_seconds(allocator.pid) - cpu0['allocator']:.1f} s CPU",
                      file=sys.stderr, flush=True)
        for t in threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        elapsed_cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        driver_cpu = time.process_time() - driver0

        # --- figures ---------------------------------------------------------------------------
        seen = dict(observer.status)
        done_times = sorted(t for t, _ in seen.values())
        last = done_times[-1] if done_times else time.monotonic()
        wall = max(1e-9, last - started)
        result.allocated = sum(1 for n in names if n in seen)
        result.missing = [n for n in names if n not in seen]
        by_ip: dict[str, list[str]] = {}
        for name, (_, ip) in seen.items():
            by_ip.setdefault(ip, []).append(name)
        result.unique_addresses = len(by_ip)
        result.duplicates = [f"{ip}: {', '.join(sorted(who))}" for ip, who in by_ip.items() if len(who) > 1]
        result.total_seconds = wall
        result.allocations_per_second = result.allocated / wall
        if len(done_times) >= 10:
            lo, hi = done_times[len(done_times) // 10], done_times[(len(done_times) * 9) // 10]
            span = (len(done_times) * 9) // 10 - len(done_times) // 10
            result.steady_allocations_per_second = span / max(1e-9, hi - lo)
        if returned:
            result.create_seconds = max(returned.values()) - started
            result.creates_per_second = len(returned) / max(1e-9, result.create_seconds)
        cp = percentiles(create_ms)
        result.create_ms_p50, result.create_ms_p99 = cp.get("p50", 0.0), cp.get("p99", 0.0)
        result.latency_ms = percentiles([max(0.0, (seen[n][0] - returned[n]) * 1000) for n in names
                                         if n in seen and n in returned])
        result.annotation_ms = percentiles([max(0.0, (observer.annotated[n] - returned[n]) * 1000) for n in names
                                            if n in observer.annotated and n in returned])
        rss, hwm = memory_mib(allocator.pid)
        result.allocator = {"cpu_seconds": elapsed_cpu["allocator"],
                            "cpu_percent": 100 * elapsed_cpu["allocator"] / wall, "rss_mib": rss, "peak_rss_mib": hwm}
        if server is not None:
            s_rss, s_hwm = memory_mib(server.pid)
            result.standin_process = {"cpu_seconds": elapsed_cpu["standin"],
                                      "cpu_percent": 100 * elapsed_cpu["standin"] / wall, "rss_mib": s_rss,
                                      "peak_rss_mib": s_hwm}
        result.driver = {"cpu_seconds": driver_cpu, "cpu_percent": 100 * driver_cpu / wall}
        result.errors = errors + observer.errors
        return result
    finally:
        if observer is not None:
            observer.close()
        tail = _stop_process(allocator)
        for line in tail.splitlines():
            if line.startswith("stats "):
                result.allocator_stats = json.loads(line[len("stats "):])
        _stop_process(server)
        if own_dir:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def render_markdown(results: list[Result], when: str, machine: str) -> str:
    out = [f"LoadBalancer allocation, {when}, {machine}", "",
           "| Services | stand-in | asked /s | created /s | allocated /s (steady) | total | p50 | p99 | max | "
           "allocator CPU | allocator RSS | stand-in CPU |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lat = r.latency_ms
        out.append(
            f"| {r.services:,} | {r.standin} | {r.rate_asked:.0f} | {r.creates_per_second:.0f} | "
            f"{r.allocations_per_second:.0f} ({r.steady_allocations_per_second:.0f}) | {r.total_seconds:.1f} s | "
            f"{lat.get('p50', 0):.0f} ms | {lat.get('p99', 0):.0f} ms | {lat.get('max', 0):.0f} ms | "
            f"{r.allocator.get('cpu_seconds', 0):.1f} s ({r.allocator.get('cpu_percent', 0):.0f} %) | "
            f"{r.allocator.get('rss_mib', 0):.0f} MiB | "
            f"{r.standin_process.get('cpu_seconds', 0):.1f} s ({r.standin_process.get('cpu_percent', 0):.0f} %) |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nftproxy.bench_lb", description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=lambda s: [int(x) for x in s.split(",")], default=[1000],
                        help="how many Services; a comma-separated list runs each in turn")
    parser.add_argument("--rate", type=float, default=320.0, help="creates per second the clients aim at")
    parser.add_argument("--clients", type=int, default=4, help="client threads creating Services")
    parser.add_argument("--standin", choices=("subprocess", "inprocess"), default="subprocess",
                        help="the stand-in in its own process, or inside the allocator's")
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    parser.add_argument("--output", help="write the figures as a Markdown table here")
    parser.add_argument("--json", action="store_true", help="print each result as JSON")
    parser.add_argument("--profile-dir", help="cProfile the allocator's loop thread into this folder")
    parser.add_argument("--progress", action="store_true", help="print progress every 5 s")
    parser.add_argument("--role", choices=("driver", "allocator"), default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "allocator":
        return run_allocator(args.kubeconfig, args.standin == "inprocess", args.workdir, args.profile)

    results = []
    for n in args.services:
        result = measure(n, args.rate, args.clients, args.standin, args.timeout, args.profile_dir,
                         progress=args.progress)
        results.append(result)
        print(json.dumps(asdict(result)) if args.json else result.summary(), flush=True)
        if args.profile_dir:
            print(f"  the allocator loop's profile: {args.profile_dir}/allocator-loop.prof (python -m pstats)")
    if args.output:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        Path(args.output).write_text(render_markdown(results, when, f"{os.cpu_count()} cores"))
        print(f"Markdown written to {args.output}")
    return 0 if all(r.complete for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
