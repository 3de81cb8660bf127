"""The figures of one LoadBalancer allocation run, the process accounting they come from, and their
report (a summary, a Markdown table)."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# --- the report ---------------------------------------------------------------------------------
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
