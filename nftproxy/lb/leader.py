"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Only one agent allocates addresses at a time, so two nodes never hand the same address out. The
holder renews the Lease every `renew` seconds; others take it over once `duration` has passed since
the last renewal they saw change (they time it on their own clock, never trusting another's). Every
write carries the resourceVersion it read, so two candidates racing for an expired Lease cannot both win.
Losing the API means losing the lease after `duration`: allocation stops, announcements do not (they
never depend on the API).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from kubernetes.client.exceptions import ApiException

log = logging.getLogger("nftproxy.lb.leader")


def _now_micro() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        coordination_api: Any,
        namespace: str,
        name: str,
        identity: str,
        on_change: Callable[[bool], None],
        duration: float = 15.0,
        renew: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = coordination_api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.on_change = on_change
        self.duration = duration
        self.renew = renew
        self.clock = clock
        self.leading = False
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lb-leader", daemon=True)

    def start(self) -> LeaseElector:
        self._thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        """Stop campaigning; a leader gives the lease up so a successor need not wait `duration`."""
        self._stop.set()
        if release and self.leading:
            try:
                lease = self.api.read_namespaced_lease(self.name, self.namespace)
                if lease.spec.holder_identity == self.identity:
                    lease.spec.holder_identity = None
                    lease.spec.lease_duration_seconds = 1
                    self.api.replace_namespaced_lease(self.name, self.namespace, lease)
            except Exception as err:  # noqa: BLE001 - best effort on the way out
                log.info("could not release lease %s/%s: %s", self.namespace, self.name, err)
        self._set_leading(False)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                held = self._try_acquire_or_renew()
            except Exception as err:  # noqa: BLE001 - the API failing is a reason to retry, not to die
                log.debug("lease %s/%s: %s", self.namespace, self.name, err)
                held = self.leading and self.clock() - self._observed_at < self.duration
            self._set_leading(held)
            self._stop.wait(self.renew if held else min(self.renew, self.duration / 4))

    def _set_leading(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.info("%s the LoadBalancer allocator lease %s/%s", "holding" if leading else "not holding",
                     self.namespace, self.name)
            self.on_change(leading)

    def _body(self, transitions: int, acquire: str | None) -> dict[str, Any]:
        now = _now_micro()
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, int(round(self.duration))),
            "acquireTime": acquire or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _try_acquire_or_renew(self) -> bool:
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _preload_content=False)
        except ApiException as err:
            if err.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._body(0, None)}
            try:
                self.api.create_namespaced_lease(self.namespace, body)
            except ApiException as create_err:
                if create_err.status == 409:
                    return False
                raise
            self._observed_at = self.clock()
            return True
        obj = json.loads(lease.data)
        spec = obj.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        seen = (holder, str(spec.get("renewTime") or ""))
        now = self.clock()
        if seen != self._observed:
            self._observed, self._observed_at = seen, now
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        if holder and holder != self.identity and now - self._observed_at < duration:
            return False  # someone else holds a live lease
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquire = spec.get("acquireTime") if holder == self.identity else None
        obj["spec"] = self._body(transitions, acquire)
        try:
            self.api.replace_namespaced_lease(self.name, self.namespace, obj)
        except ApiException as err:
            if err.status == 409:
                return False  # another candidate wrote first
            raise
        self._observed_at = now
        return True
