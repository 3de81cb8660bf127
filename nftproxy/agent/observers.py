"""What runs once the kernel took a sync, each from what was committed (`Commit`): none of them
changes what a sync sends, so each is a small object the syncer calls in turn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from ..config import ProxyConfig
from ..desired.conntrack import StaleFlows, stale_udp_flows
from ..desired.healthcheck import HealthCheck, health_check_of
from ..objects.model import ObjectRef
from .committed import Commit

log = logging.getLogger("nftproxy.proxier")


class CommitObserver(Protocol):
    def committed(self, commit: Commit) -> None:
        """Called after every sync the kernel took."""


class ConflictLog:
    """Warns once about each element two Services want, not at every sync that finds it again."""

    def __init__(self) -> None:
        self._reported: set[tuple[str, str, str]] = set()

    def committed(self, commit: Commit) -> None:
        for c in commit.conflicts:
            key = (c.loser, c.element.set, c.element.key)
            if key in self._reported:
                continue
            self._reported.add(key)
            log.warning(
                "Service %s wants %s %s, already held by Service %s: ignored for it",
                c.loser.split(" ", 1)[-1], c.element.set, c.element.key, c.winner.split(" ", 1)[-1] or "configuration",
            )


class StaleFlowCleanup:
    """Hands on the UDP conntrack entries that point at backends a Service no longer has (UDP has
    no connection to end: without this, its flows keep going to the old backend)."""

    def __init__(self, config: ProxyConfig, on_stale_flows: Callable[[list[StaleFlows]], object]) -> None:
        self.config = config
        self.on_stale_flows = on_stale_flows

    def committed(self, commit: Commit) -> None:
        stale: list[StaleFlows] = []
        for ref, inputs in commit.inputs.items():
            old = commit.previous[ref]
            if old != inputs or commit.previous_zone != commit.zone:
                stale += stale_udp_flows(old, inputs, self.config, commit.zone, commit.previous_zone)
        if stale:
            self.on_stale_flows(stale)


class HealthCheckDiff:
    """Keeps the health-check node ports the committed Services want, and reports what changed
    (None: stop serving it), so the servers change only for the Services synced."""

    def __init__(self, node_name: str,
                 on_health_checks: Callable[[dict[ObjectRef, HealthCheck | None]], None] | None = None) -> None:
        self.node_name = node_name
        self.on_health_checks = on_health_checks
        self.health_checks: dict[ObjectRef, HealthCheck] = {}

    def committed(self, commit: Commit) -> None:
        changes: dict[ObjectRef, HealthCheck | None] = {}
        for ref, inputs in commit.inputs.items():
            check = health_check_of(inputs[0], inputs[1], self.node_name) if inputs else None
            if self.health_checks.get(ref) != check:
                changes[ref] = check
                if check is None:
                    self.health_checks.pop(ref, None)
                else:
                    self.health_checks[ref] = check
        if commit.rebuild:
            for ref in list(self.health_checks):
                if ref not in commit.inputs:
                    changes[ref] = None
                    del self.health_checks[ref]
        if changes and self.on_health_checks is not None:
            self.on_health_checks(changes)
