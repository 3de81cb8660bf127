"""`nftproxy demo`: every kind of Service, with real packets, on a throw-away cluster of network namespaces.

What it does, step by step (each step prints what it did):

1. builds a two-node cluster out of network namespaces with the e2e harness (a LAN, two nodes, three
   pods serving HTTP that answer with their name and the client address they saw, a pod that only
   sends requests, and a machine on the LAN outside the cluster);
2. writes a ClusterIP, a NodePort, an externalIPs and a LoadBalancer Service with their EndpointSlices
   as manifests and starts `nftproxy run --manifests DIR` in every node's namespace;
3. sends requests through each Service and shows where they landed and which source address the pods
   saw, checking both against what Kubernetes promises;
4. prints the interesting part of the ruleset of one node;
5. removes everything it created: agents, namespaces, temporary directories (also on Ctrl-C, SIGTERM
   and errors). With `--keep` the cluster stays up until Ctrl-C, with commands to poke at it.

The work happens in a worker process of its own session (`python -m nftproxy.demo --worker`), so that
a Ctrl-C at the terminal reaches only `nftproxy demo`, which passes it on once: see run_demo.

Everything happens inside namespaces the harness creates (`nfp-<id>-*`); the host's own network
namespace is never touched and traffic only flows between the demo's namespaces (RFC 2544 addresses,
198.18.0.0/15).

Exit status: 0 when traffic went where expected, 1 when it did not (or the demo broke half-way),
2 when the demo cannot run here (not root, no nft, no network namespaces), 130 on Ctrl-C.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REQUESTS = 30  # per Service
BAR_WIDTH = 20

# Service addresses (the harness's service CIDR is 198.19.0.0/16, its LAN 198.18.0.0/24).
CLUSTER_IP = "198.19.0.10"
NODEPORT_CLUSTER_IP = "198.19.0.11"
EXTERNAL_CLUSTER_IP = "198.19.0.12"
LB_CLUSTER_IP = "198.19.0.13"
EXTERNAL_IP = "198.18.0.150"
LB_IP = "198.18.0.200"
NODE_PORT = 30080
LB_NODE_PORT = 30081
SERVICE_PORT = 80
POD_PORT = 8080

EXIT_OK, EXIT_TRAFFIC, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 130


class CannotRun(Exception):
    """The demo cannot run in this environment (not root, tools missing, no namespaces)."""


class Stopped(Exception):
    """SIGTERM or SIGHUP arrived: tear down as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


_READY_FD_ENV = "NFTPROXY_DEMO_READY_FD"
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM until the block is done, so the harness is never interrupted half-way through
    creating something it has not recorded yet (its own cleanup could not find it)."""
    got: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _frame: got.append(signum)) for signum in _SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if got:
        if got[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(got[0])


# --------------------------------------------------------------------------- #
# terminal output
# --------------------------------------------------------------------------- #


class Terminal:
    """Prints the show: colour and Unicode only where the terminal takes them; never fails on a closed pipe."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        isatty = getattr(stream, "isatty", lambda: False)()
        self.color = bool(isatty) and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        utf8 = "utf" in (getattr(stream, "encoding", "") or "").lower()
        self.bar = "█" if utf8 else "#"
        self.tick = "✓" if utf8 else "OK"
        self.cross = "✗" if utf8 else "FAIL"
        self.arrow = "→" if utf8 else "->"
        self.dash = "—" if utf8 else "-"
        self.broken = False

    def say(self, text: str = "") -> None:
        if self.broken:
            return
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (BrokenPipeError, OSError):
            self.broken = True  # e.g. `nftproxy demo | head`: keep going (and cleaning up) silently

    def wrap(self, text: str, indent: int, mark: str = "", color: Callable[[str], str] | None = None) -> str:
        """`text` wrapped to the terminal width, indented; an optional (coloured) `mark` starts the first line."""
        width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))
        lead = " " * indent
        hang = lead + " " * (len(mark) + 1 if mark else 0)
        lines = textwrap.wrap(text, width=width, initial_indent=hang, subsequent_indent=hang,
                              break_on_hyphens=False, break_long_words=False)
        if mark and lines:
            lines[0] = lead + (color(mark) if color else mark) + " " + lines[0][len(hang):]
        return "\n".join(lines)

    def _sgr(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def bold(self, text: str) -> str:
        return self._sgr("1", text)

    def dim(self, text: str) -> str:
        return self._sgr("2", text)

    def green(self, text: str) -> str:
        return self._sgr("32", text)

    def red(self, text: str) -> str:
        return self._sgr("31", text)

    def cyan(self, text: str) -> str:
        return self._sgr("36", text)

    def step(self, n: int, title: str) -> None:
        self.say()
        self.say(self.bold(f"[{n}/5] {title}"))


# --------------------------------------------------------------------------- #
# the checks of step 3
# --------------------------------------------------------------------------- #


@dataclass
class Check:
    """Requests from one place to one Service frontend, and what the pods must see."""

    kind: str  # what the output calls the Service kind
    sender: Any  # Pod or Client
    sender_label: str
    address: str
    port: int
    target_label: str  # e.g. "node-1 198.18.0.11:30080"
    expected_sources: set[str]
    explanation: str
    results: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# --------------------------------------------------------------------------- #
# the demo
# --------------------------------------------------------------------------- #


class Demo:
    def __init__(self, keep: bool, term: Terminal) -> None:
        self.keep = keep
        self.t = term
        self.cluster: Any = None  # e2e.netns.NamespaceCluster
        self.agents: Any = None  # e2e.agent.AgentCluster
        self.manifest_dir: Path | None = None
        self.web: list[Any] = []  # the three serving pods
        self.client_pod: Any = None
        self.outside: Any = None
        self.checks: list[Check] = []
        self.started = time.monotonic()

    # -- entry point -------------------------------------------------------- #

    def main(self) -> int:
        code = EXIT_CANNOT_RUN
        previous = self._install_signal_handlers()
        try:
            code = self._run()
        except KeyboardInterrupt:
            self.t.say()
            self.t.say(self.t.bold("Interrupted (Ctrl-C)."))
            code = EXIT_INTERRUPTED
        except Stopped as stop:
            self.t.say()
            self.t.say(self.t.bold(f"Stopped by {stop}."))
            code = 128 + stop.signum
        except CannotRun as err:
            self._error(f"the demo cannot run here: {err}")
            code = EXIT_CANNOT_RUN
        except Exception as err:  # noqa: BLE001 - any failure half-way: say what, then clean up
            from e2e.netns import HarnessError

            if not isinstance(err, (HarnessError, RuntimeError, TimeoutError, OSError, ValueError)):
                raise  # a bug in the demo: the traceback helps more than a message (cleanup still runs)
            self._error(f"the demo failed: {err}")
            code = EXIT_TRAFFIC
        finally:
            # a second Ctrl-C must not leave half the namespaces behind: ignore signals while tearing down
            # (children started now inherit SIG_IGN, so `ip netns del` is not interrupted either)
            for signum in _SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
            try:
                if not self._cleanup() and code == EXIT_OK:
                    code = EXIT_TRAFFIC
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        return code

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous = {}
        for signum, handler in (
            (signal.SIGINT, signal.default_int_handler),
            (signal.SIGTERM, _raise_stopped),
            (signal.SIGHUP, _raise_stopped),
        ):
            previous[signum] = signal.signal(signum, handler)
        return previous

    def _error(self, message: str) -> None:
        self.t.say()
        first, _, rest = message.partition("\n")
        self.t.say(self.t.wrap(first, 0, "Error:", lambda text: self.t.red(self.t.bold(text))))
        for line in rest.splitlines():  # e.g. an agent's last log lines: as they are
            self.t.say("       " + line)
        if self.t.broken or not self.t.stream.isatty():
            # also on stderr, so that `nftproxy demo > file` or a broken pipe still shows why it failed
            try:
                print(f"nftproxy demo: {message}", file=sys.stderr, flush=True)
            except OSError:
                pass

    def _run(self) -> int:
        t = self.t
        t.say(t.bold(f"nftproxy demo {t.dash} Kubernetes Services as nftables maps, with real packets"))
        t.say(t.dim("A throw-away cluster made of network namespaces (nfp-<id>-*); the host's own network is not"))
        t.say(t.dim("touched, and everything is removed at the end, also on Ctrl-C."))
        self._preflight()
        self._build_cluster()
        self._start_services_and_agents()
        self._send_traffic()
        self._show_ruleset()
        failed = [c for c in self.checks if not c.ok]
        self._summary(failed)
        if self.keep:
            self._keep_running()
        return EXIT_TRAFFIC if failed else EXIT_OK

    # -- step 0: can we run at all? ----------------------------------------- #

    def _preflight(self) -> None:
        try:
            from e2e.netns import HarnessError, require_root_and_netns
        except ImportError as err:
            raise CannotRun(
                f"the namespace-cluster harness (package e2e) is not importable ({err}); "
                "install nftproxy from a source checkout (pip install -e .)"
            ) from None
        if shutil.which("nft") is None:
            raise CannotRun("the `nft` tool is not in PATH (install nftables)")
        if shutil.which("ip") is None:
            raise CannotRun("the `ip` tool is not in PATH (install iproute2)")
        if os.geteuid() != 0:
            raise CannotRun("it needs root, to create network namespaces and the veth pairs, bridge and nftables "
                            "tables inside them (the host's own network is left alone): try sudo nftproxy demo")
        try:
            with _signals_deferred():  # it builds (and removes) two namespaces to see whether it can
                require_root_and_netns()
        except HarnessError as err:
            raise CannotRun(str(err)) from None

    # -- step 1 ------------------------------------------------------------- #

    def _build_cluster(self) -> None:
        from e2e.netns import NamespaceCluster

        t = self.t
        t.step(1, "Building the cluster")
        with _signals_deferred():
            self.cluster = NamespaceCluster(nodes=2)
        cluster = self.cluster
        n1, n2 = cluster.nodes
        t.say(f"      namespaces {t.cyan(cluster.prefix + '-*')}, LAN {cluster.lan_cidr}, "
              f"pod network {cluster.cluster_cidr}, Services {cluster.service_cidr}")
        for node in cluster.nodes:
            t.say(f"      {t.bold(node.name)}  {node.ip:<14} pods {node.pod_cidr}")
        with _signals_deferred():
            self.web = [cluster.add_pod(n1, "web-1"), cluster.add_pod(n2, "web-2"), cluster.add_pod(n1, "web-3")]
            self.client_pod = cluster.add_pod(n1, "client", tcp=(), udp=())
            self.outside = cluster.add_client("outside")
        pods = "  ".join(f"{t.bold(p.name)} {p.ip} ({p.node.name})" for p in self.web)
        t.say(f"      pods     {pods}")
        t.say(t.dim(f"               HTTP on :{POD_PORT}; each answers with its name and the client address it saw"))
        t.say(f"      {t.bold('client')}   {self.client_pod.ip} ({self.client_pod.node.name}) "
              + t.dim("a pod that only sends requests"))
        t.say(f"      {t.bold('outside')}  {self.outside.ip} " + t.dim("a machine on the LAN, outside the cluster"))

    # -- step 2 ------------------------------------------------------------- #

    def _manifests(self) -> list[tuple[str, str, str, list[dict[str, Any]]]]:
        """(kind, file name, frontends, objects) of every example Service."""
        from e2e.objects import endpoint_slice, service

        def port(**extra: Any) -> list[dict[str, Any]]:
            return [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP", "targetPort": POD_PORT, **extra}]

        def slice_for(name: str) -> dict[str, Any]:
            eps = endpoint_slice(name, [p.ip for p in self.web],
                                 ports=[{"name": "http", "port": POD_PORT, "protocol": "TCP"}])
            for ep, pod in zip(eps["endpoints"], self.web):
                ep["nodeName"] = pod.node.name
                ep["targetRef"] = {"kind": "Pod", "namespace": "default", "name": pod.name}
            return eps

        lb_status = {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
        return [
            ("ClusterIP", "web", f"{CLUSTER_IP}:{SERVICE_PORT}",
             [service("web", CLUSTER_IP, port()), slice_for("web")]),
            ("NodePort", "web-nodeport", f"{NODEPORT_CLUSTER_IP}:{SERVICE_PORT}, every node's address :{NODE_PORT}",
             [service("web-nodeport", NODEPORT_CLUSTER_IP, port(nodePort=NODE_PORT), type="NodePort"),
              slice_for("web-nodeport")]),
            ("externalIPs", "web-external",
             f"{EXTERNAL_CLUSTER_IP}:{SERVICE_PORT}, externalIP {EXTERNAL_IP}:{SERVICE_PORT}",
             [service("web-external", EXTERNAL_CLUSTER_IP, port(), externalIPs=[EXTERNAL_IP]),
              slice_for("web-external")]),
            ("LoadBalancer", "web-lb",
             f"{LB_CLUSTER_IP}:{SERVICE_PORT}, ingress IP {LB_IP}:{SERVICE_PORT}, every node's address :{LB_NODE_PORT}",
             [service("web-lb", LB_CLUSTER_IP, port(nodePort=LB_NODE_PORT), type="LoadBalancer", status=lb_status),
              slice_for("web-lb")]),
        ]

    def _start_services_and_agents(self) -> None:
        from e2e.agent import AgentCluster

        t = self.t
        t.step(2, "Services and an nftproxy agent per node")
        with _signals_deferred():
            self.agents = AgentCluster(self.cluster)
            self.manifest_dir = self.agents.manifests.path
        t.say(f"      manifests in {t.cyan(str(self.manifest_dir) + '/')}, one file per Service "
              "with its EndpointSlice:")
        for kind, name, frontends, objects in self._manifests():
            self.agents.manifests.apply(name, objects)
            t.say(f"      {kind:<13} {t.bold(name):<{12 + len(t.bold(''))}}  {frontends}")
        t.say(t.dim(f"      every EndpointSlice lists {', '.join(p.name for p in self.web)} (port {POD_PORT})"))
        t.say("      starting " + t.cyan("nftproxy run --manifests DIR") + " in each node's namespace ...")
        for agent in self.agents.agents:
            agent.start()  # interruptible: a stray agent dies with its node's namespace anyway
            synced = _SYNCED.findall(agent.log_text())
            t.say(f"      {agent.node.name}: {synced[-1] if synced else 'synced'}")

    # -- step 3 ------------------------------------------------------------- #

    def _make_checks(self) -> list[Check]:
        n1, n2 = self.cluster.nodes
        client, outside = self.client_pod, self.outside
        return [
            Check("ClusterIP", client, f"client pod {client.ip} ({client.node.name})", CLUSTER_IP, SERVICE_PORT,
                  f"{CLUSTER_IP}:{SERVICE_PORT}", {client.ip},
                  "pod-to-ClusterIP keeps the pod's source: the pods saw the client pod's own address, "
                  "and only the destination was rewritten (DNAT) on the client's node"),
            Check("NodePort", outside, f"outside {outside.ip}", n1.ip, NODE_PORT,
                  f"{n1.name} {n1.ip}:{NODE_PORT}", {n1.ip, n1.pod_gateway},
                  f"external traffic is masqueraded to the node's address: the pods saw {n1.name} (the address "
                  f"it sends from toward each pod), never the client's {outside.ip}, so their replies go back "
                  f"through {n1.name} to be un-NATed"),
            Check("externalIPs", outside, f"outside {outside.ip}", EXTERNAL_IP, SERVICE_PORT,
                  f"{EXTERNAL_IP}:{SERVICE_PORT} (routed via {n2.name})", {n2.ip, n2.pod_gateway},
                  f"the outside client routes the externalIP via {n2.name}, which DNATs it to a pod and "
                  f"masquerades it like a NodePort: the pods saw {n2.name}"),
            Check("LoadBalancer", outside, f"outside {outside.ip}", LB_IP, SERVICE_PORT,
                  f"{LB_IP}:{SERVICE_PORT} (routed via {n1.name})", {n1.ip, n1.pod_gateway},
                  f"the status.loadBalancer.ingress IP arrives at {n1.name} as a cloud load balancer would "
                  f"deliver it, and is handled like an externalIP: DNAT plus masquerade to {n1.name}"),
        ]

    def _send_traffic(self) -> None:
        t = self.t
        t.step(3, f"Traffic: {REQUESTS} requests through each Service (a new TCP connection each)")
        n1, n2 = self.cluster.nodes
        # the outside client knows no Service addresses: as a router would, send them to a node
        with _signals_deferred():
            self.cluster.add_route(self.outside, f"{EXTERNAL_IP}/32", n2.ip)
            self.cluster.add_route(self.outside, f"{LB_IP}/32", n1.ip)
        t.say(t.dim(f"      (the outside client got routes: {EXTERNAL_IP} via {n2.name}, {LB_IP} via {n1.name})"))
        self.checks = self._make_checks()
        for check in self.checks:
            self._run_check(check)
            self._show_check(check)

    def _run_check(self, check: Check) -> None:
        from e2e.netns import HarnessError

        try:
            # one request first: if the Service does not answer at all, say so at once instead of
            # waiting for every request to time out
            check.results = self.cluster.probe(check.sender, check.address, check.port, count=1, timeout=2.0)
            if check.results[0].ok:
                check.results += self.cluster.probe(check.sender, check.address, check.port,
                                                    count=REQUESTS - 1, timeout=2.0)
        except HarnessError as err:
            check.problems.append(f"the probe client failed: {err}")
            return
        web = {p.name for p in self.web}
        landed = Counter(r.pod if r.ok else f"error:{r.error}" for r in check.results)
        errors = {k.removeprefix("error:"): n for k, n in landed.items() if k.startswith("error:")}
        strangers = {k: n for k, n in landed.items() if not k.startswith("error:") and k not in web}
        if errors and len(check.results) == 1:
            check.problems.append(f"the first request failed ({next(iter(errors))}), so no more were sent")
        elif errors:
            what = ", ".join(f"{n}x {kind}" for kind, n in errors.items())
            check.problems.append(f"{sum(errors.values())} of {len(check.results)} requests failed: {what}")
        if strangers:
            check.problems.append(f"requests landed outside the Service's endpoints: {dict(strangers)}")
        seen = {r.client for r in check.results if r.ok}
        wrong = seen - check.expected_sources
        if wrong:
            expected = " or ".join(self._describe(a) for a in sorted(check.expected_sources))
            got = ", ".join(self._describe(a) for a in sorted(wrong))
            check.problems.append(f"the pods saw source {got}; expected {expected}")

    def _describe(self, address: str | None) -> str:
        labels: dict[str, str] = {}
        for node in self.cluster.nodes:
            labels[node.ip] = f"{node.name}, LAN address"
            labels[node.pod_gateway] = f"{node.name}, its pod-side address"
        for pod in self.cluster.pods.values():
            labels[pod.ip] = "the client pod" if pod is self.client_pod else f"pod {pod.name}"
        labels[self.outside.ip] = "the outside client"
        label = labels.get(address or "")
        return f"{address} ({label})" if label else str(address)

    def _show_check(self, check: Check) -> None:
        t = self.t
        total = len(check.results) or 1
        t.say()
        t.say(f"  {t.bold(f'{check.kind:<13}')} {check.sender_label} {t.arrow} {check.target_label}")
        by_pod: dict[str, list[Any]] = {}
        for r in check.results:
            if r.ok:
                by_pod.setdefault(r.pod, []).append(r)
        names = [p.name for p in self.web] + sorted(set(by_pod) - {p.name for p in self.web})
        pods = {p.name: p for p in self.cluster.pods.values()}
        for name in names:
            hits = by_pod.get(name, [])
            share = len(hits) / total
            bar = t.bar * round(share * BAR_WIDTH)
            node = pods[name].node.name if name in pods else "?"
            sources = Counter(r.client for r in hits)
            saw = ", ".join(self._describe(a) + (f" x{n}" if len(sources) > 1 else "")
                            for a, n in sources.most_common())
            t.say(f"      {name:<6} {node:<7} {len(hits):>3} {round(share * 100):>3}%  "
                  f"{t.cyan(bar.ljust(BAR_WIDTH)) if bar else ' ' * BAR_WIDTH}  "
                  + (f"saw {saw}" if hits else t.dim("no requests")))
        if check.ok:
            t.say(t.wrap(check.explanation, 6, t.tick, t.green))
            idle = [name for name in names if not by_pod.get(name)]
            if idle:
                t.say(t.dim(t.wrap(f"({', '.join(idle)} got none of {total} this time: every connection picks an "
                                   "endpoint at random)", 8)))
        else:
            for problem in check.problems:
                t.say(t.wrap(problem, 6, t.cross, t.red))

    # -- step 4 ------------------------------------------------------------- #

    def _show_ruleset(self) -> None:
        t = self.t
        node = self.cluster.nodes[0]
        t.step(4, f"The ruleset: nft list table inet nftproxy  (in {node.name}'s namespace)")
        text = self.cluster.exec(node, ["nft", "list", "table", "inet", "nftproxy"]).stdout
        lines = text.rstrip("\n").splitlines()
        blocks = _blocks(text)
        picked: list[tuple[str, list[str]]] = []

        def pick(note: str, match: Callable[[str], bool]) -> None:
            for name in sorted(n for n in blocks if match(n)):
                picked.append((note, blocks[name]))
                note = ""

        pick("every new connection to a Service: its frontend (address . protocol . port) picks a class, "
             "the class a chain",
             lambda n: n == "chain services")
        pick("ClusterIPs, externalIPs and LoadBalancer IPs", lambda n: n == "map service-ips-v4")
        pick("NodePorts, on any local address", lambda n: n == "map service-nodeports-v4")
        pick("the class found there -> its chain", lambda n: n == "map classes")
        pick("one chain per kind and endpoint count, shared by all such Services: mark for masquerade "
             "(not for pod sources of ClusterIPs), then DNAT to a random endpoint",
             lambda n: n.startswith("chain lb-"))
        pick("frontend . random index -> endpoint", lambda n: n.startswith("map backends-"))
        pick("postrouting: masquerade what was marked", lambda n: n == "chain masquerading")
        if len(picked) < 4:  # the format is not what this expects: show it all rather than a wrong excerpt
            t.say(text.rstrip("\n"))
            return
        t.say(t.dim("      the maps and chains a packet to a Service walks through, in that order:"))
        t.say("table inet nftproxy {")
        shown = 2
        for note, block in picked:
            if note:
                t.say(t.dim(t.wrap(note, 8, "#").replace(" " * 8, "\t")))
            for line in block:
                t.say(line)
            shown += len(block)
        t.say("}")
        how = (f"ip netns exec {node.netns} nft list table inet nftproxy" if self.keep else
               f"`nftproxy demo --keep`, then ip netns exec {self.cluster.prefix.split('-')[0]}-<id>-{node.name} "
               "nft list table inet nftproxy")
        t.say(t.dim(t.wrap(f"({shown} of {len(lines)} lines; the rest: the IPv6 twins, the empty no-endpoint maps, "
                           f"the reject/drop checks and the base chains with their hooks. All of it: {how})", 6)))

    # -- summary and --keep --------------------------------------------------- #

    def _summary(self, failed: list[Check]) -> None:
        t = self.t
        t.say()
        marks = "  ".join(f"{c.kind} {t.green(t.tick) if c.ok else t.red(t.cross)}" for c in self.checks)
        if failed:
            t.say(t.bold(t.red(f"Traffic did NOT go where expected for {len(failed)} of {len(self.checks)} "
                               f"Service kind(s):")) + f"  {marks}")
            for c in failed:
                for problem in c.problems:
                    t.say(f"  {c.kind}: {problem}")
            if not self.keep:
                t.say("  Re-run with `nftproxy demo --keep` to look at the cluster while it is up.")
        else:
            t.say(t.bold(t.green(f"All {len(self.checks)} Service kinds sent traffic where expected:")) + f"  {marks}")

    def _keep_running(self) -> None:
        t = self.t
        cluster = self.cluster
        n1, n2 = cluster.nodes
        ns_node = n1.netns
        ns_out = self.outside.netns
        ns_pod = self.client_pod.netns
        py = _probe_command_prefix()
        t.say()
        t.say(t.bold("The cluster stays up until you press Ctrl-C.") + " Things to try (as root, in another shell):")
        tries = [(f"ip netns exec {ns_node} nft list table inet nftproxy", "the whole ruleset of node-1")]
        if shutil.which("curl"):
            tries += [
                (f"ip netns exec {ns_pod} curl -s http://{CLUSTER_IP}/", "ClusterIP, from a pod"),
                (f"ip netns exec {ns_out} curl -s http://{n2.ip}:{NODE_PORT}/", "NodePort on node-2, from outside"),
                (f"ip netns exec {ns_out} curl -s http://{LB_IP}/", "LoadBalancer IP, from outside"),
            ]
        tries += [
            (f"{py[0]}ip netns exec {ns_out} {py[1]} -m e2e.netns.probe {EXTERNAL_IP} {SERVICE_PORT} --count 5",
             "externalIP, 5 requests with the harness's probe (JSON: which pod, which source it saw)"),
            (f"ip netns list | grep {cluster.prefix}", "every namespace of the demo"),
        ]
        for cmd, note in tries:
            t.say(t.dim(f"  # {note}"))
            t.say(f"  {cmd}")
        t.say(t.dim("  # change Services: edit, add or delete the manifests (e.g. drop web-2 from web.yaml);"))
        t.say(t.dim("  # the agents re-read them every 0.1 s and their log follows below"))
        t.say(f"  ls {self.manifest_dir}/")
        t.say()
        shown = {a.node.name: len(a.log_text().splitlines()) for a in self.agents.agents}
        exited: set[str] = set()
        parent = os.getppid()
        try:
            while True:
                time.sleep(0.3)
                if os.getppid() != parent:
                    t.say(t.bold("The `nftproxy demo` process went away: tearing the demo cluster down."))
                    return
                for agent in self.agents.agents:
                    lines = agent.log_text().splitlines()
                    for line in lines[shown[agent.node.name]:]:
                        t.say(f"  {t.cyan('[' + agent.node.name + ']')} {_strip_date(line)}")
                    shown[agent.node.name] = len(lines)
                    proc = agent.process
                    if proc is not None and proc.poll() is not None and agent.node.name not in exited:
                        exited.add(agent.node.name)
                        t.say(t.red(f"  [{agent.node.name}] the agent exited with status {proc.returncode}"))
        except (KeyboardInterrupt, Stopped):
            t.say()
            t.say(t.bold("Tearing the demo cluster down."))

    # -- step 5 ------------------------------------------------------------- #

    def _cleanup(self) -> bool:
        """Stop agents, delete namespaces and temporary directories. True if nothing was left behind."""
        from e2e.netns import list_netns

        t = self.t
        if self.cluster is None and self.agents is None:
            return True
        t.step(5, "Cleaning up")
        ok = True
        if self.agents is not None:
            for agent in self.agents.agents:
                try:
                    agent.stop()
                except Exception as err:  # noqa: BLE001 - keep tearing down
                    t.say(t.red(f"      could not stop the agent on {agent.node.name}: {err}"))
            t.say(f"      stopped {len(self.agents.agents)} agents")
        if self.manifest_dir is not None:
            shutil.rmtree(self.manifest_dir, ignore_errors=True)
            if self.manifest_dir.exists():
                ok = False
                t.say(t.red(f"      could not remove {self.manifest_dir}"))
            else:
                t.say(f"      removed {self.manifest_dir}")
        if self.cluster is not None:
            names = self.cluster.namespaces
            prefix = getattr(self.cluster, "prefix", None)
            try:
                self.cluster.close()
            except Exception as err:  # noqa: BLE001
                ok = False
                t.say(t.red(f"      teardown incomplete: {err}"))
            left = [ns for ns in list_netns() if prefix and ns.startswith(prefix + "-")]
            if left:
                ok = False
                t.say(t.red(f"      namespaces left behind: {', '.join(left)} "
                            f"(remove with: ip netns del NAME)"))
            else:
                t.say(f"      deleted {len(names)} namespaces ({prefix}-*) and everything running in them")
        t.say(t.dim(f"Done in {time.monotonic() - self.started:.1f} s."))
        return ok


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #

_BLOCK_START = re.compile(r"^\t(set|map|chain) (\S+) \{$")
_DATE = re.compile(r"^\d{4}-\d\d-\d\d ")
_SYNCED = re.compile(r"synced \d+ Service.*$", re.MULTILINE)


def _blocks(text: str) -> dict[str, list[str]]:
    """Top-level sets, maps and chains of `nft list table` output, by "kind name"."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if current is None:
            m = _BLOCK_START.match(line)
            if m:
                current = [line]
                blocks[f"{m.group(1)} {m.group(2)}"] = current
        else:
            current.append(line)
            if line == "\t}":
                current = None
    return blocks


def _strip_date(line: str) -> str:
    return _DATE.sub("", line, count=1)


def _probe_command_prefix() -> tuple[str, str]:
    """("cd ROOT && " or "", python) for a probe command that works from any directory."""
    from e2e.netns.cluster import REPO_ROOT

    try:
        importable = subprocess.run(
            [sys.executable, "-c", "import e2e.netns.probe"], cwd="/", capture_output=True, timeout=20,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        ).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        importable = False
    python = sys.executable
    python3 = shutil.which("python3")
    if python3 and os.path.realpath(python3) == os.path.realpath(sys.executable):
        python = "python3"
    return ("" if importable else f"cd {REPO_ROOT} && ", python)


def run_demo(keep: bool = False) -> int:
    """`nftproxy demo [--keep]`: see the module docstring. Returns the exit status.

    The demo runs in a worker process in its own session. Ctrl-C at a terminal signals the whole
    foreground process group, and would kill the harness's `ip` commands half-way (an interrupted
    `ip netns add` leaves a broken /run/netns entry no cleanup knows about). Here only this
    process sees the terminal's signals, and turns the first one into one orderly SIGINT (SIGTERM
    for SIGTERM/SIGHUP) for the worker, which then tears down everything it built.
    """
    package_parent = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "nftproxy.demo", "--worker", *(["--keep"] if keep else [])]
    worker: subprocess.Popen[bytes] | None = None
    ready = False  # the worker handles signals (before that, a Ctrl-C would break its start with a traceback)
    pending: int | None = None  # a signal that arrived before the worker was ready
    forwarded = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal forwarded, pending
        if worker is None or not ready:
            pending = signum
            return
        if forwarded:
            try:
                print("(cleaning up, one moment ...)", file=sys.stderr, flush=True)
            except OSError:
                pass
            return
        forwarded = True
        try:
            worker.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
        except OSError:
            pass

    # installed before the worker starts, so the worker never inherits an ignored SIGINT (as under `cmd &`)
    previous = {signum: signal.signal(signum, forward) for signum in _SIGNALS}
    try:
        ready_r, ready_w = os.pipe()
        env[_READY_FD_ENV] = str(ready_w)
        try:
            worker = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                      pass_fds=(ready_w,))
        except OSError as err:
            print(f"nftproxy demo: cannot start the demo: {err}", file=sys.stderr)
            return EXIT_CANNOT_RUN
        finally:
            os.close(ready_w)
        try:
            os.read(ready_r, 1)  # one byte once the worker handles signals; b"" if it exited before
        finally:
            os.close(ready_r)
        ready = True
        if pending is not None:
            forward(pending, None)
        code = worker.wait()  # retried after every signal handler (PEP 475)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - code if code < 0 else code


def _worker_main(argv: list[str]) -> int:
    """The demo itself (started by run_demo in its own session)."""
    if argv[:1] != ["--worker"] or not set(argv[1:]) <= {"--keep"}:
        print("usage: nftproxy demo [--keep]  (nftproxy.demo --worker is internal)", file=sys.stderr)
        return EXIT_CANNOT_RUN
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _raise_stopped)
        ready_fd = os.environ.pop(_READY_FD_ENV, None)
        if ready_fd:
            os.write(int(ready_fd), b"1")
            os.close(int(ready_fd))
        demo = Demo("--keep" in argv, Terminal(sys.stdout))
    except (KeyboardInterrupt, Stopped):  # before anything was built
        return EXIT_INTERRUPTED
    return demo.main()


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
