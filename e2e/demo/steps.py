"""The demo's five steps in order (see the package's docstring), its summary, `--keep`, and the teardown
that removes everything it built, also on Ctrl-C, SIGTERM and errors."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from e2e.agent import AgentCluster
from e2e.demo.ruleset import show_ruleset
from e2e.demo.services import CLUSTER_IP, EXTERNAL_IP, LB_IP, NODE_PORT, POD_PORT, SERVICE_PORT, example_services
from e2e.demo.signals import (
    EXIT_CANNOT_RUN,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TRAFFIC,
    SIGNALS,
    Stopped,
    raise_stopped,
    signals_deferred,
)
from e2e.demo.terminal import Terminal
from e2e.demo.traffic import Check, Traffic
from e2e.netns import HarnessError, NamespaceCluster, list_netns, require_root_and_netns
from e2e.netns.cluster import REPO_ROOT

_DATE = re.compile(r"^\d{4}-\d\d-\d\d ")
_SYNCED = re.compile(r"synced \d+ Service.*$", re.MULTILINE)


class CannotRun(Exception):
    """The demo cannot run in this environment (not root, tools missing, no namespaces)."""


class Demo:
    def __init__(self, keep: bool, term: Terminal) -> None:
        self.keep = keep
        self.t = term
        self.cluster: Any = None  # NamespaceCluster
        self.agents: Any = None  # AgentCluster
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
            if not isinstance(err, (HarnessError, RuntimeError, TimeoutError, OSError, ValueError)):
                raise  # a bug in the demo: the traceback helps more than a message (cleanup still runs)
            self._error(f"the demo failed: {err}")
            code = EXIT_TRAFFIC
        finally:
            # a second Ctrl-C must not leave half the namespaces behind: ignore signals while tearing down
            # (children started now inherit SIG_IGN, so `ip netns del` is not interrupted either)
            for signum in SIGNALS:
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
            (signal.SIGTERM, raise_stopped),
            (signal.SIGHUP, raise_stopped),
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
        show_ruleset(self.t, self.cluster, self.keep)
        failed = [c for c in self.checks if not c.ok]
        self._summary(failed)
        if self.keep:
            self._keep_running()
        return EXIT_TRAFFIC if failed else EXIT_OK

    # -- step 0: can we run at all? ----------------------------------------- #

    def _preflight(self) -> None:
        if shutil.which("nft") is None:
            raise CannotRun("the `nft` tool is not in PATH (install nftables)")
        if shutil.which("ip") is None:
            raise CannotRun("the `ip` tool is not in PATH (install iproute2)")
        if os.geteuid() != 0:
            raise CannotRun("it needs root, to create network namespaces and the veth pairs, bridge and nftables "
                            "tables inside them (the host's own network is left alone): try sudo nftproxy demo")
        try:
            with signals_deferred():  # it builds (and removes) two namespaces to see whether it can
                require_root_and_netns()
        except HarnessError as err:
            raise CannotRun(str(err)) from None

    # -- step 1 ------------------------------------------------------------- #

    def _build_cluster(self) -> None:
        t = self.t
        t.step(1, "Building the cluster")
        with signals_deferred():
            self.cluster = NamespaceCluster(nodes=2)
        cluster = self.cluster
        n1, n2 = cluster.nodes
        t.say(f"      namespaces {t.cyan(cluster.prefix + '-*')}, LAN {cluster.lan_cidr}, "
              f"pod network {cluster.cluster_cidr}, Services {cluster.service_cidr}")
        for node in cluster.nodes:
            t.say(f"      {t.bold(node.name)}  {node.ip:<14} pods {node.pod_cidr}")
        with signals_deferred():
            self.web = [cluster.add_pod(n1, "web-1"), cluster.add_pod(n2, "web-2"), cluster.add_pod(n1, "web-3")]
            self.client_pod = cluster.add_pod(n1, "client", tcp=(), udp=())
            self.outside = cluster.add_client("outside")
        pods = "  ".join(f"{t.bold(p.name)} {p.ip} ({p.node.name})" for p in self.web)
        t.say(f"      pods     {pods}")
        t.say(t.dim(f"               HTTP on :{POD_PORT}; each answers with its name and the client address it saw"))
        t.say(f"      {t.bold('client')}   {self.client_pod.ip} ({self.client_pod.node.name}) "
              + t.dim("a pod that only sends requests"))
        t.say(f"      {t.bold('outside')}  {self.outside.ip} " + t.dim("a machine on the LAN, outside the cluster"))

    # -- step 2 (the Services: e2e.demo.services) ---------------------------- #

    def _start_services_and_agents(self) -> None:
        t = self.t
        t.step(2, "Services and an nftproxy agent per node")
        with signals_deferred():
            self.agents = AgentCluster(self.cluster)
            self.manifest_dir = self.agents.manifests.path
        t.say(f"      manifests in {t.cyan(str(self.manifest_dir) + '/')}, one file per Service "
              "with its EndpointSlice:")
        for kind, name, frontends, objects in example_services(self.web):
            self.agents.manifests.apply(name, objects)
            t.say(f"      {kind:<13} {t.bold(name):<{12 + len(t.bold(''))}}  {frontends}")
        t.say(t.dim(f"      every EndpointSlice lists {', '.join(p.name for p in self.web)} (port {POD_PORT})"))
        t.say("      starting " + t.cyan("nftproxy run --manifests DIR") + " in each node's namespace ...")
        for agent in self.agents.agents:
            agent.start()  # interruptible: a stray agent dies with its node's namespace anyway
            synced = _SYNCED.findall(agent.log_text())
            t.say(f"      {agent.node.name}: {synced[-1] if synced else 'synced'}")

    # -- step 3 (e2e.demo.traffic) and step 4 (e2e.demo.ruleset) ------------ #

    def _send_traffic(self) -> None:
        self.checks = Traffic(self.cluster, self.web, self.client_pod, self.outside, self.t).send()

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


def _strip_date(line: str) -> str:
    return _DATE.sub("", line, count=1)


def _probe_command_prefix() -> tuple[str, str]:
    """("cd ROOT && " or "", python) for a probe command that works from any directory."""
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

