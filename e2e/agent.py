"""Run nftproxy as each node's agent inside the namespace cluster, fed from a manifest directory.

The agent runs exactly as a user runs it (`python -m nftproxy run --manifests DIR ...`), inside the
node's network namespace, so its transactions land in that namespace's kernel and nowhere else.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from e2e.netns import NamespaceCluster
from e2e.netns.cluster import Node

REPO_ROOT = Path(__file__).resolve().parents[1]
_SYNCED = re.compile(r"synced (\d+) Service")


class ManifestDir:
    """A directory of manifests that agents watch; each write is atomic (write + rename)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or Path(tempfile.mkdtemp(prefix="nfp-manifests-"))

    def apply(self, name: str, objects: Iterable[Mapping[str, Any]]) -> None:
        text = yaml.safe_dump_all([dict(o) for o in objects], sort_keys=False)
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.path / f"{name}.yaml")

    def delete(self, name: str) -> None:
        (self.path / f"{name}.yaml").unlink(missing_ok=True)


class NodeAgent:
    """One `nftproxy run` process in a node namespace; counts its syncs from its log.

    `source_args` says where objects come from: ["--manifests", DIR] or ["--kubeconfig", FILE].
    """

    def __init__(self, cluster: NamespaceCluster, node: Node, source_args: list[str], *extra_args: str) -> None:
        self.cluster = cluster
        self.node = node
        self.source_args = source_args
        self.extra_args = extra_args
        self.lines: list[str] = []
        self.syncs = 0
        self.process: subprocess.Popen[str] | None = None
        self._cond = threading.Condition()

    def argv(self) -> list[str]:
        cidrs = [c for c in (self.cluster.cluster_cidr, self.cluster.cluster_cidr6) if c]
        services = [c for c in (self.cluster.service_cidr, self.cluster.service_cidr6) if c]
        return [
            "ip", "netns", "exec", self.node.netns, sys.executable, "-m", "nftproxy", "run",
            *self.source_args, "--node-name", self.node.name,
            "--cluster-cidr", ",".join(cidrs), "--service-cidr", ",".join(services),
            "--poll-interval", "0.1", "--min-sync-period", "0", *self.extra_args,
        ]

    def start(self, timeout: float = 15.0, wait: bool = True) -> NodeAgent:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.process = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT
        )
        self.syncs = 0
        threading.Thread(target=self._read, daemon=True).start()
        if wait:
            self.wait_synced(0, timeout)
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            with self._cond:
                self.lines.append(line.rstrip())
                if _SYNCED.search(line):
                    self.syncs += 1
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return self.syncs

    def wait_synced(self, after: int, timeout: float = 15.0) -> None:
        """Wait until the agent logged a sync beyond `after` (a value from mark())."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.syncs <= after:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"agent on {self.node.name} exited:\n" + "\n".join(self.lines[-30:]))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"agent on {self.node.name} did not sync:\n" + "\n".join(self.lines[-30:]))
                self._cond.wait(min(left, 0.2))

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class AgentCluster:
    """An agent on every node, all watching one manifest directory."""

    def __init__(self, cluster: NamespaceCluster, *extra_args: str) -> None:
        self.cluster = cluster
        self.manifests = ManifestDir()
        source = ["--manifests", str(self.manifests.path)]
        self.agents = [NodeAgent(cluster, node, source, *extra_args) for node in cluster.nodes]

    def start(self) -> AgentCluster:
        for agent in self.agents:
            agent.start()
        return self

    def apply(self, name: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """Write a manifest and wait until every agent synced it."""
        marks = [a.mark() for a in self.agents]
        self.manifests.apply(name, list(objects))
        for agent, mark in zip(self.agents, marks):
            agent.wait_synced(mark)

    def delete(self, name: str) -> None:
        marks = [a.mark() for a in self.agents]
        self.manifests.delete(name)
        for agent, mark in zip(self.agents, marks):
            agent.wait_synced(mark)

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        for path in self.manifests.path.glob("*"):
            path.unlink()
        self.manifests.path.rmdir()
