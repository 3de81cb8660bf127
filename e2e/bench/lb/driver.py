"""The driver of the LoadBalancer benchmark: it starts the API stand-in and the allocator, creates the
Services from client threads at a steady pace, watches for their status from a separate client, and
turns what it saw into a Result."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from e2e.bench.lb import NAMESPACE, NODE, POOL_CIDR, POOL_NAMESPACE, SERVICE_CIDR
from e2e.bench.lb.result import Result, cpu_seconds, memory_mib, percentiles
from e2e.netns.cluster import REPO_ROOT


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

        from nftproxy.lb.parse import ALLOCATED_FROM_ANNOTATION

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
        alloc_args = ["-m", "e2e.bench.lb", "--role", "allocator", "--workdir", workdir]
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
