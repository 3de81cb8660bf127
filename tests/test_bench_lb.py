"""`python -m e2e.bench.lb`, small, and the write path it measures: one status write per decision.

The benchmark test runs the real three processes (API stand-in, allocator, driver) at 200 Services and
checks the outcome only: every Service allocated, every address distinct, one write each. No timing is
asserted (the figures belong in BENCHMARKS.md, measured on a quiet machine).
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes.client.exceptions import ApiException

from e2e.bench.lb.driver import measure
from e2e.bench.lb.result import render_markdown
from nftproxy.lb.controller import AllocatorController, StatusWrite, StatusWriter, WriteDone
from nftproxy.lb.parse import ALLOCATED_FROM_ANNOTATION
from nftproxy.lb.view import ClusterView
from nftproxy.objects.model import ObjectRef


def test_bench_small_allocates_every_service_once_with_distinct_addresses() -> None:
    result = measure(200, rate=200.0, clients=4, timeout=120.0)
    assert result.complete, result.summary()
    assert result.missing == [] and result.duplicates == []
    assert result.allocated == result.unique_addresses == 200
    # one write per Service: the half-written object sends no second one (it did: 400); a request that
    # failed on a loaded machine may be retried, hence no equality
    assert 200 <= result.allocator_stats["status_writes"] < 300
    assert result.allocator_stats["pending"] == result.allocator_stats["inflight"] == 0
    assert set(result.latency_ms) >= {"p50", "p99", "max"} and result.allocations_per_second > 0
    assert "| 200 | subprocess |" in render_markdown([result], "today", "2 cores")


# --- the controller's writes, with a fake writer ----------------------------------------------------
POOL = {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": "p", "namespace": "metallb-system"}, "spec": {"addresses": ["10.0.0.0/24"]}}
REF = ObjectRef("default", "web")


def service(rv: int, ip: str | None = None, annotated: bool = False, port: int = 80) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web", "namespace": "default", "resourceVersion": str(rv),
                            "creationTimestamp": "2026-12-04T10:00:00Z"}
    if annotated:
        meta["annotations"] = {ALLOCATED_FROM_ANNOTATION: "p"}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv4"], "ports": [{"port": port, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]} if ip else {}}}


class FakeWriter:
    def __init__(self) -> None:
        self.sent: list[StatusWrite] = []

    def submit(self, write: StatusWrite) -> None:
        self.sent.append(write)


def controller(clock: list[float] | None = None, usage: list[Any] | None = None,
               ) -> tuple[AllocatorController, ClusterView, FakeWriter]:
    view = ClusterView()
    view.upsert(POOL)
    writer = FakeWriter()
    ctl = AllocatorController(view, writer, on_usage=usage.append if usage is not None else None,  # type: ignore[arg-type]
                              clock=(lambda: clock[0]) if clock is not None else time.monotonic)
    ctl.start_leading()
    return ctl, view, writer


def see(ctl: AllocatorController, view: ClusterView, obj: dict[str, Any]) -> None:
    view.upsert(obj)
    ctl.reconcile()
    view.changes.clear()


def test_the_half_written_object_sends_no_second_write_whichever_comes_first() -> None:
    # the watch shows the status (rv 2) while the write is still in flight
    ctl, view, writer = controller()
    see(ctl, view, service(1))
    assert [(w.resource_version, w.ips, w.annotate) for w in writer.sent] == [("1", ("10.0.0.0",), True)]
    see(ctl, view, service(2, "10.0.0.0"))
    assert ctl.write_done(WriteDone(REF, writer.sent[0], False, ("2", "3"))) is False
    see(ctl, view, service(3, "10.0.0.0", annotated=True))
    assert len(writer.sent) == 1 and not ctl.inflight and not ctl.skipped and not ctl.landed

    # the write reports back before the watch shows either of its objects
    ctl, view, writer = controller()
    see(ctl, view, service(1))
    ctl.write_done(WriteDone(REF, writer.sent[0], False, ("2", "3")))
    see(ctl, view, service(2, "10.0.0.0"))
    see(ctl, view, service(3, "10.0.0.0", annotated=True))
    assert len(writer.sent) == 1 and not ctl.landed


def test_an_edit_seen_during_a_write_that_then_conflicts_is_decided_again() -> None:
    ctl, view, writer = controller()
    see(ctl, view, service(1))
    see(ctl, view, service(2, port=81))  # someone edits the Service: same address, so nothing new is sent
    assert len(writer.sent) == 1 and ctl.skipped == {REF: "2"}
    ctl.write_done(WriteDone(REF, writer.sent[0], False))  # 409: rv 1 was stale
    assert [(w.resource_version, w.ips) for w in writer.sent] == [("1", ("10.0.0.0",)), ("2", ("10.0.0.0",))]
    # a later object with the addresses but not the annotation still gets its annotation
    ctl.write_done(WriteDone(REF, writer.sent[1], False, ("3", "4")))
    see(ctl, view, service(5, "10.0.0.0"))  # neither of the write's own objects: someone dropped the annotation
    assert [(w.resource_version, w.annotate) for w in writer.sent][-1] == ("5", True)


def test_status_writer_reports_the_versions_its_requests_made() -> None:
    class Response:
        def __init__(self, rv: str) -> None:
            self.data = ('{"metadata": {"resourceVersion": "%s"}}' % rv).encode()

    class Core:
        def __init__(self, fail: int | None = None) -> None:
            self.fail = fail

        def patch_namespaced_service_status(self, *args: Any, **kwargs: Any) -> Response:
            if self.fail:
                raise ApiException(status=self.fail, reason="Conflict")
            return Response("7")

        def patch_namespaced_service(self, *args: Any, **kwargs: Any) -> Response:
            return Response("8")

    write = StatusWrite(REF, "6", ("10.0.0.0",), "p", True)
    for core, expected in ((Core(), WriteDone(REF, write, False, ("7", "8"))),
                           (Core(409), WriteDone(REF, write, False, ())),
                           (Core(500), WriteDone(REF, write, True, ()))):
        done: list[WriteDone] = []
        writer = StatusWriter(core, done.append, workers=1)
        writer._write(write)
        writer.stop()
        assert done == [expected]


def test_pool_usage_is_reported_at_most_once_per_interval() -> None:
    clock, usage = [100.0], []
    ctl, view, _ = controller(clock, usage)
    assert usage == [{"p": (0, 256)}]  # on taking the lease
    see(ctl, view, service(1))
    assert len(usage) == 1  # counting walks every address: not on every change
    clock[0] += AllocatorController.USAGE_INTERVAL
    ctl.reconcile()
    assert usage[-1] == {"p": (1, 256)} and len(usage) == 2
    ctl.reconcile()
    clock[0] += 5
    ctl.reconcile()
    assert len(usage) == 2  # nothing changed since


def test_events_that_change_nothing_the_decision_reads_reuse_it(monkeypatch: Any) -> None:
    from nftproxy.lb import controller as module

    parsed: list[str] = []
    real = module.parse_request
    monkeypatch.setattr(module, "parse_request",
                        lambda obj: parsed.append(obj["metadata"]["resourceVersion"]) or real(obj))
    ctl, view, writer = controller()
    see(ctl, view, service(1))
    see(ctl, view, service(2, "10.0.0.0"))  # our own writes coming back: nothing to parse or check again
    see(ctl, view, service(3, "10.0.0.0", annotated=True))
    assert parsed == ["1"] and len(writer.sent) == 1
    see(ctl, view, service(4, "10.0.0.0", annotated=True, port=81))  # a spec change is decided afresh
    assert parsed == ["1", "4"] and len(writer.sent) == 1
    view.changes.everything = True  # so are all Services when pools or namespaces change
    ctl.reconcile()
    assert parsed == ["1", "4", "4"]
