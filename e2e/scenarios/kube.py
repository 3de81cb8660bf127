"""KubeTarget: the scenarios against a real cluster (e.g. kind) running nftproxy instead of kube-proxy.

Everything happens in a fresh namespace ``nftproxy-e2e-<random>`` (Pod Security level
``privileged``: node clients use the host network), deleted by :meth:`KubeTarget.close`.

* **Backends** are Pods running ``agnhost netexec --http-port=8080 --udp-port=5353`` pinned to their
  node with ``nodeName``, ready once ``/healthz`` answers (HTTP and UDP servers up); the cluster's own
  EndpointSlice controller makes their Services' endpoints. ``/hostname`` (HTTP) and ``hostname``
  (UDP) answer the Pod's name; ``/clientip`` and ``clientip`` the source address the Pod saw.
* **Client pods and node clients** are agnhost Pods too (``netexec --udp-port=-1``; node clients with
  ``hostNetwork: true`` on ``$NFTPROXY_E2E_NODE_CLIENT_PORT``, default 18080). Requests are made
  by their netexec's ``/dial`` endpoint, one try per request, called with ``curl`` (in the agnhost
  image) through the exec API (``kubernetes.stream.stream`` on ``connect_get_namespaced_pod_exec``),
  one exec per batch of requests.
  ``/dial`` times a request out after 5 s; its error text tells refused from timed out. A backend
  makes hairpin requests the same way, with its own netexec.
* **Outside** is the machine running the suite: plain sockets to a node's InternalIP (kind nodes are
  reachable from the host on Linux). Its source address is the one the kernel picks towards the first
  node.
* **externalIPs**: ``$NFTPROXY_E2E_EXTERNAL_IP`` if set (route it to a node yourself), else the
  InternalIP of the node named in the scenario: an externalIP may be any address that reaches a node.
* **LoadBalancer IPs**: ``$NFTPROXY_E2E_LB_IP`` set to an address routed to a node (from the machine
  running the suite, e.g. ``ip route add $IP via <worker InternalIP>``): the target writes it to
  ``status.loadBalancer.ingress`` itself. Set to ``auto``, the target waits for the cluster's
  LoadBalancer implementation to assign one. Unset: LoadBalancer scenarios are skipped.

Not run in CI (there is no cluster there); see e2e/README.md for how to run it against kind.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import secrets
import socket
import time
from typing import Any
from urllib.parse import urlencode

from e2e.netns.probe import classify
from e2e.scenarios.targets import APP_LABEL, Backend, Reply, Service, Skip, Source, Target

IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.53"
BACKEND_HTTP_PORT = 8080
BACKEND_UDP_PORT = 5353
CLIENT_PORT = 8080
#: /dial's own timeout is 5 s per request; curl's limit sits above it
DIAL_MAX_TIME = 12
POD_READY_TIMEOUT = 180.0


class KubeTarget(Target):
    name = "kube"
    converge_timeout = 60.0
    drop_timeout = 5.0  # /dial's fixed per-request timeout

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        env = os.environ
        self.kubeconfig = kubeconfig or env.get("KUBECONFIG") or None
        self.context = context or env.get("NFTPROXY_E2E_CONTEXT") or None
        self.image = env.get("NFTPROXY_E2E_IMAGE", IMAGE)
        self.lb_ip = env.get("NFTPROXY_E2E_LB_IP", "").strip()
        self.fixed_external_ip = env.get("NFTPROXY_E2E_EXTERNAL_IP", "").strip()
        self.node_client_port = int(env.get("NFTPROXY_E2E_NODE_CLIENT_PORT", "18080"))
        self.namespace = f"nftproxy-e2e-{secrets.token_hex(3)}"
        self.core: Any = None
        self._api: Any = None
        self._exec_core: Any = None
        self._nodes: list[str] = []
        self._addresses: dict[str, str] = {}
        self._clients: dict[tuple[str, str], Source] = {}
        self._outside: Source | None = None
        self._namespace_created = False

    # -- lifecycle ---------------------------------------------------------- #

    def start(self) -> KubeTarget:
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=self.kubeconfig, context=self.context, client_configuration=cfg)
        cfg.no_proxy = ",".join(p for p in (cfg.no_proxy, "127.0.0.1", "localhost", "::1") if p)
        self._api = client.ApiClient(cfg)
        self.core = client.CoreV1Api(self._api)
        # stream() swaps its ApiClient's request method while it runs: exec gets a client of its own
        self._exec_core = client.CoreV1Api(client.ApiClient(cfg))
        self._pick_nodes()
        self.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": self.namespace,
            "labels": {"app.kubernetes.io/created-by": "nftproxy-e2e",
                       # node clients run in the host network namespace
                       "pod-security.kubernetes.io/enforce": "privileged"}}})
        self._namespace_created = True
        try:
            # Pods cannot be created before the namespace's default ServiceAccount exists
            self._poll(lambda: self._exists(
                           lambda: self.core.read_namespaced_service_account("default", self.namespace)),
                       60.0, "the namespace's default ServiceAccount")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._namespace_created and self.core is not None:
            self._namespace_created = False
            try:
                self.core.delete_namespace(self.namespace, propagation_policy="Background")
            except Exception:  # noqa: BLE001 - best effort; the name says what to delete by hand
                pass

    def _pick_nodes(self) -> None:
        nodes = self.core.list_node().items
        ready = [n for n in nodes if not (n.spec and n.spec.unschedulable) and n.status and any(
            c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))]
        workers = [n for n in ready if "node-role.kubernetes.io/control-plane" not in (n.metadata.labels or {})]
        chosen = workers if len(workers) >= 2 else ready
        for node in sorted(chosen, key=lambda n: n.metadata.name):
            internal = [a.address for a in (node.status.addresses or []) if a.type == "InternalIP"]
            if not internal:
                continue
            v4 = [a for a in internal if ipaddress.ip_address(a).version == 4]
            self._nodes.append(node.metadata.name)
            self._addresses[node.metadata.name] = (v4 or internal)[0]
        if len(self._nodes) < 2:
            raise RuntimeError("the scenarios need two ready, schedulable nodes with an InternalIP; "
                               f"found {self._nodes}")

    # -- the cluster -------------------------------------------------------- #

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def node_address(self, node: str) -> str:
        return self._addresses[node]

    # -- pods --------------------------------------------------------------- #

    def _pod_body(self, name: str, node: str, args: list[str], labels: dict[str, str] | None = None,
                  host_network: bool = False, ready_port: int = BACKEND_HTTP_PORT, ready_path: str = "/hostname",
                  ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """An agnhost Pod pinned to ``node``. netexec's /healthz also waits for its UDP server, so it is
        the readiness path of backends only; clients (no UDP server) use /hostname."""
        container: dict[str, Any] = {
            "name": "agnhost", "image": self.image, "args": args,
            "readinessProbe": {"httpGet": {"path": ready_path, "port": ready_port},
                               "periodSeconds": 1, "failureThreshold": 3},
        }
        if ports:
            container["ports"] = ports
        spec: dict[str, Any] = {
            "nodeName": node,  # placement is the point; the scheduler is not asked
            "containers": [container],
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "tolerations": [{"operator": "Exists"}],
        }
        if host_network:
            spec["hostNetwork"] = True
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": self.namespace, "labels": labels or {}},
                "spec": spec}

    def _create_ready(self, bodies: list[dict[str, Any]]) -> dict[str, str]:
        """Create Pods and wait until every one is Ready; returns name -> Pod IP."""
        for body in bodies:
            self.core.create_namespaced_pod(self.namespace, body)
        ips: dict[str, str] = {}
        last: dict[str, str] = {}
        deadline = time.monotonic() + POD_READY_TIMEOUT
        while True:
            for body in bodies:
                name = body["metadata"]["name"]
                if name in ips:
                    continue
                pod = self.core.read_namespaced_pod(name, self.namespace)
                ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
                if ready and pod.status.pod_ip:
                    ips[name] = pod.status.pod_ip
                else:
                    last[name] = _pod_state(pod)
            if len(ips) == len(bodies):
                return ips
            if time.monotonic() > deadline:
                waiting = {n: s for n, s in last.items() if n not in ips}
                raise RuntimeError(f"Pods not ready after {POD_READY_TIMEOUT:.0f} s: {waiting}")
            time.sleep(1.0)

    def _delete_pod(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=1)
        except ApiException as err:
            if err.status != 404:
                raise
        self._poll(lambda: not self._exists(lambda: self.core.read_namespaced_pod(name, self.namespace)),
                   60.0, f"Pod {name} to go")

    @staticmethod
    def _exists(read: Any) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            read()
            return True
        except ApiException as err:
            if err.status == 404:
                return False
            raise

    @staticmethod
    def _poll(done: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.5)

    # -- workloads ---------------------------------------------------------- #

    def deploy_backends(self, app: str, nodes: list[str]) -> list[Backend]:
        args = ["netexec", f"--http-port={BACKEND_HTTP_PORT}", f"--udp-port={BACKEND_UDP_PORT}"]
        ports = [{"name": "http", "containerPort": BACKEND_HTTP_PORT, "protocol": "TCP"},
                 {"name": "dns", "containerPort": BACKEND_UDP_PORT, "protocol": "UDP"}]
        bodies = [self._pod_body(f"{app}-{i}", node, args, labels={APP_LABEL: app}, ports=ports, ready_path="/healthz")
                  for i, node in enumerate(nodes, 1)]
        ips = self._create_ready(bodies)
        return [Backend(name=b["metadata"]["name"], app=app, node=b["spec"]["nodeName"], ip=ips[b["metadata"]["name"]])
                for b in bodies]

    def delete_backend(self, backend: Backend) -> None:
        self._delete_pod(backend.name)

    def create_service(self, name: str, app: str, ports: list[dict[str, Any]], **spec: Any) -> Service:
        body = {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {"selector": {APP_LABEL: app}, "ports": [dict(p) for p in ports], **spec}}
        return self._service(self.core.create_namespaced_service(self.namespace, body))

    def patch_service(self, service: Service, spec: dict[str, Any]) -> Service:
        return self._service(self.core.patch_namespaced_service(service.name, self.namespace, {"spec": spec}))

    def delete_service(self, service: Service) -> None:
        self.core.delete_namespaced_service(service.name, self.namespace)

    def _service(self, obj: Any) -> Service:
        return Service.from_api(self._api.sanitize_for_serialization(obj))

    def external_ip(self, via: str) -> str:
        return self.fixed_external_ip or self.node_address(via)

    def load_balancer_ip(self, service: Service, via: str) -> str:
        if not self.lb_ip:
            raise Skip("no LoadBalancer IP: set NFTPROXY_E2E_LB_IP to an address routed to a node, "
                       "or to 'auto' when the cluster assigns them")
        if self.lb_ip != "auto":
            self.core.patch_namespaced_service_status(service.name, self.namespace, {
                "status": {"loadBalancer": {"ingress": [{"ip": self.lb_ip}]}}})
            return self.lb_ip
        deadline = time.monotonic() + self.converge_timeout
        while True:
            svc = self.core.read_namespaced_service_status(service.name, self.namespace)
            ingress = (svc.status.load_balancer.ingress or []) if svc.status and svc.status.load_balancer else []
            ips = [i.ip for i in ingress if i.ip]
            if ips:
                return ips[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"NFTPROXY_E2E_LB_IP=auto, but nothing gave Service {service.name} an "
                                     f"ingress IP within {self.converge_timeout:.0f} s")
            time.sleep(1.0)

    # -- traffic ------------------------------------------------------------ #

    def pod_client(self, node: str) -> Source:
        key = ("pod", node)
        if key not in self._clients:
            name = f"client-{self._nodes.index(node) + 1}"
            body = self._pod_body(name, node, ["netexec", f"--http-port={CLIENT_PORT}", "--udp-port=-1"],
                                  ready_port=CLIENT_PORT)
            ip = self._create_ready([body])[name]
            self._clients[key] = Source("pod", name, ip, node, handle={"pod": name, "port": CLIENT_PORT})
        return self._clients[key]

    def node_client(self, node: str) -> Source:
        key = ("node", node)
        if key not in self._clients:
            name = f"node-client-{self._nodes.index(node) + 1}"
            port = self.node_client_port
            body = self._pod_body(name, node, ["netexec", f"--http-port={port}", "--udp-port=-1"],
                                  host_network=True, ready_port=port)
            self._create_ready([body])
            self._clients[key] = Source("node", node, self.node_address(node), node,
                                        handle={"pod": name, "port": port})
        return self._clients[key]

    def outside_client(self) -> Source:
        if self._outside is None:
            towards = self.node_address(self._nodes[0])
            family = socket.AF_INET6 if ":" in towards else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((towards, 9))  # no packet is sent: this only asks the kernel for the route
                address = sock.getsockname()[0]
            self._outside = Source("outside", socket.gethostname(), address, None)
        return self._outside

    def backend_client(self, backend: Backend) -> Source:
        return Source("backend", backend.name, backend.ip, backend.node,
                      handle={"pod": backend.name, "port": BACKEND_HTTP_PORT})

    def request(self, source: Source, ip: str, port: int, proto: str = "tcp", count: int = 1,
                ask: str = "hostname", timeout: float = 2.0) -> list[Reply]:
        if source.kind == "outside":
            return [_outside_request(ip, port, proto, ask, timeout) for _ in range(count)]
        return self._dial(source, ip, port, proto, count, ask)

    def _dial(self, source: Source, ip: str, port: int, proto: str, count: int, ask: str) -> list[Reply]:
        query = urlencode({"request": ask, "protocol": "udp" if proto == "udp" else "http",
                           "host": ip, "port": port, "tries": 1})
        url = f"http://127.0.0.1:{source.handle['port']}/dial?{query}"
        # one line of JSON per request; "{}" when /dial itself did not answer
        script = 'i=0; while [ "$i" -lt "$1" ]; do curl -sS -m "$2" "$0" || printf "{}"; echo; i=$((i+1)); done'
        out, err = self._exec(source.handle["pod"], ["sh", "-c", script, url, str(count), str(DIAL_MAX_TIME)],
                              timeout=count * (DIAL_MAX_TIME + 1) + 30)
        replies = [_dial_reply(line, ask, err) for line in out.splitlines() if line.strip()][:count]
        while len(replies) < count:
            replies.append(Reply(False, error=f"client: no output from /dial ({err.strip()[:200]})"))
        return replies

    def _exec(self, pod: str, argv: list[str], timeout: float) -> tuple[str, str]:
        from kubernetes.stream import stream

        resp = stream(self._exec_core.connect_get_namespaced_pod_exec, pod, self.namespace, command=argv,
                      container="agnhost", stderr=True, stdin=False, stdout=True, tty=False,
                      _preload_content=False)
        try:
            resp.run_forever(timeout=timeout)
            if resp.is_open():
                raise RuntimeError(f"exec in Pod {pod} did not finish within {timeout:.0f} s: {argv}")
            return resp.read_stdout(timeout=0) or "", resp.read_stderr(timeout=0) or ""
        finally:
            resp.close()


def _pod_state(pod: Any) -> str:
    """A short why-not-ready: phase and container waiting reasons."""
    reasons = []
    for status in pod.status.container_statuses or []:
        waiting = status.state.waiting if status.state else None
        if waiting is not None:
            reasons.append(f"{waiting.reason}: {waiting.message or ''}".strip(": "))
    return f"{pod.status.phase}" + (f" ({'; '.join(reasons)})" if reasons else "")


def _host_of(address: str) -> str:
    """``10.0.0.1:4321`` or ``[fd00::1]:4321`` (Go's host:port) -> the address alone."""
    text = address.strip()
    if text.startswith("[") and "]" in text:
        return text[1:text.index("]")]
    if text.count(":") == 1:
        return text.split(":", 1)[0]
    return text


def _classify_message(text: str) -> str:
    lower = text.lower()
    if "connection refused" in lower:
        return "refused"
    if "timeout" in lower or "deadline exceeded" in lower or "timed out" in lower:
        return "timeout"
    if "connection reset" in lower:
        return "reset"
    if "no route to host" in lower or "network is unreachable" in lower:
        return "unreachable"
    return text.strip()[:200]


def _dial_reply(line: str, ask: str, stderr: str) -> Reply:
    try:
        data = json.loads(line)
    except ValueError:
        return Reply(False, error=f"bad-reply: {line[:200]!r}")
    responses = data.get("responses") or []
    if responses:
        text = str(responses[0]).strip()
        return Reply(True, backend=text) if ask == "hostname" else Reply(True, client=_host_of(text))
    errors = data.get("errors") or []
    if errors:
        return Reply(False, error=_classify_message(str(errors[0])))
    return Reply(False, error=f"client: /dial did not answer ({stderr.strip()[:200]})")


def _outside_request(ip: str, port: int, proto: str, ask: str, timeout: float) -> Reply:
    """One request from this machine: HTTP GET /<ask> or a UDP datagram ``<ask>``."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        if proto == "udp":
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(timeout)
                sock.connect((ip, port))
                sock.send(ask.encode())
                text = sock.recv(2048).decode(errors="replace").strip()
        else:
            conn = http.client.HTTPConnection(ip, port, timeout=timeout)
            try:
                conn.request("GET", f"/{ask}")
                resp = conn.getresponse()
                text = resp.read().decode(errors="replace").strip()
                if resp.status != 200:
                    return Reply(False, error=f"bad-reply: HTTP {resp.status}")
            finally:
                conn.close()
    except (OSError, http.client.HTTPException) as err:
        return Reply(False, error=classify(err) if isinstance(err, OSError) else f"bad-reply: {err}")
    return Reply(True, backend=text) if ask == "hostname" else Reply(True, client=_host_of(text))
