"""The benchmark's report: a summary line per step as it finishes, and the results as text tables (the
terminal) or Markdown (`--output`, the format of BENCHMARKS.md), with the targets met or missed."""

from __future__ import annotations

from typing import Any

from e2e.bench.workload import CHANGE_KINDS

TARGET_RATIO = 1.3  # nftproxy cold sync <= 1.3 x nft -f; a cold start <= 1.3 x nft -f of its dump
TARGET_PARSE_PER_S = 50000.0  # objects parsed per second
TARGET_STEADY_MIB = 250.0  # at 30,000 x 10
TARGET_CHANGE_MS = 10.0  # median one-Service change at 30,000
TARGET_SERVICES = 30000


def _mib(kib: float) -> float:
    return kib / 1024


def summary(r: dict[str, Any]) -> str:
    head = f"{r['services']} x {r['endpoints']}{' (probe)' if r['probe'] else ''}"
    lines = [
        f"{head}: cold start {r['start_s']:.3f} s, nft -f of its dump {r['start_nft_s']:.3f} s, ratio "
        f"{r['start_ratio']:.2f}x (target <= {TARGET_RATIO}x); parsing {r['parse_objects_per_s']:,.0f} objects/s; "
        f"peak nftproxy {_mib(r['start_peak_self_kib']):.0f} MiB, its nft {_mib(r['start_peak_nft_kib']):.0f} MiB, "
        f"together {_mib(r['start_peak_together_kib']):.0f} MiB",
        f"{head}: cold sync {r['cold_s']:.3f} s, nft -f {r['nft_s']:.3f} s, ratio {r['ratio']:.2f}x "
        f"(target <= {TARGET_RATIO}x); steady RSS {_mib(r['rss_steady_kib']):.0f} MiB; "
        f"step {r['step_s']:.1f} s ({r['step_s'] - r['repeat_s']:.1f} s without the repeated cold syncs)",
    ]
    for kind, label in CHANGE_KINDS:
        c = r["change"][kind]
        lines.append(f"{head}: {label}: latency median {c['median_ms']:.2f} ms, p95 {c['p95_ms']:.2f} ms, "
                     f"{c['ops_median']:g} operations")
    return "\n".join(lines)


def _targets(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        out.append(f"{r['services']} x {r['endpoints']}: cold start ratio {r['start_ratio']:.2f}x <= {TARGET_RATIO}x: "
                   f"{'met' if r['start_ratio'] <= TARGET_RATIO else 'MISSED'}")
        rate = r["parse_objects_per_s"]
        out.append(f"{r['services']} x {r['endpoints']}: parsing {rate:,.0f} objects/s >= {TARGET_PARSE_PER_S:,.0f}: "
                   f"{'met' if rate >= TARGET_PARSE_PER_S else 'MISSED'}")
        ok = r["ratio"] <= TARGET_RATIO
        out.append(f"{r['services']} x {r['endpoints']}: cold sync ratio {r['ratio']:.2f}x <= {TARGET_RATIO}x: "
                   f"{'met' if ok else 'MISSED'}")
    big = [r for r in results if r["services"] >= TARGET_SERVICES]
    for r in big:
        steady = _mib(r["rss_steady_kib"])
        out.append(f"{r['services']} x {r['endpoints']}: steady RSS {steady:.0f} MiB <= {TARGET_STEADY_MIB:.0f} MiB: "
                   f"{'met' if steady <= TARGET_STEADY_MIB else 'MISSED'}")
        for kind, label in CHANGE_KINDS:
            med = r["change"][kind]["median_ms"]
            out.append(f"{r['services']} x {r['endpoints']}: {label} median {med:.2f} ms <= {TARGET_CHANGE_MS:.0f} ms: "
                       f"{'met' if med <= TARGET_CHANGE_MS else 'MISSED'}")
    if not big:
        out.append(f"memory and change-latency targets apply at {TARGET_SERVICES:,} Services: not measured in this run")
    return out


def _start_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Services", "Endpoints", "Objects", "Runs", "parsing", "nftproxy run --once", "nft -f of its dump",
              "ratio", "nftproxy peak", "its nft peak", "together"]
    rows = []
    for r in results:
        rows.append([
            f"{r['services']:,}{' (probe)' if r['probe'] else ''}", str(r["endpoints"]), f"{r['objects']:,}",
            str(len(r["start_runs_s"])), f"{r['parse_objects_per_s']:,.0f}/s", f"{r['start_s']:.3f} s",
            f"{r['start_nft_s']:.3f} s", f"{r['start_ratio']:.2f}x", f"{_mib(r['start_peak_self_kib']):.0f} MiB",
            f"{_mib(r['start_peak_nft_kib']):.0f} MiB", f"{_mib(r['start_peak_together_kib']):.0f} MiB",
        ])
    return header, rows


def _baseline_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Services", "Endpoints", "code", "parsing", "run --once", "ratio to nft -f", "nftproxy peak",
              "its nft peak", "together"]
    rows = []
    for r in results:
        if "base_start_s" not in r:
            continue
        for label, prefix in (("before (baseline)", "base_"), ("after (this tree)", "")):
            rows.append([f"{r['services']:,}", str(r["endpoints"]), label,
                         f"{r[prefix + 'parse_objects_per_s']:,.0f}/s",
                         f"{r[prefix + 'start_s']:.3f} s", f"{r[prefix + 'start_ratio']:.2f}x",
                         f"{_mib(r[prefix + 'start_peak_self_kib']):.0f} MiB",
                         f"{_mib(r[prefix + 'start_peak_nft_kib']):.0f} MiB",
                         f"{_mib(r[prefix + 'start_peak_together_kib']):.0f} MiB"])
    return header, rows


def _cold_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Services", "Endpoints", "Elements", "Script", "Runs", "nftproxy sync", "nft -f", "ratio",
              "steady RSS", "nftproxy peak", "its nft child peak", "nft -f peak"]
    rows = []
    for r in results:
        rows.append([
            f"{r['services']:,}{' (probe)' if r['probe'] else ''}", str(r["endpoints"]), f"{r['elements']:,}",
            f"{r['script_bytes'] / 2**20:.1f} MiB", str(len(r["cold_runs_s"])), f"{r['cold_s']:.3f} s",
            f"{r['nft_s']:.3f} s",
            f"{r['ratio']:.2f}x", f"{_mib(r['rss_steady_kib']):.0f} MiB", f"{_mib(r['peak_self_kib']):.0f} MiB",
            f"{_mib(r['nft_stdin_peak_kib']):.0f} MiB" if r["via_child"] else "(in-process)",
            f"{_mib(r['nft_peak_kib']):.0f} MiB",
        ])
    return header, rows


def _change_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Services", "Change", "Runs", "median", "p95", "operations (all seen)"]
    rows = []
    for r in results:
        for kind, label in CHANGE_KINDS:
            c = r["change"][kind]
            ops = sorted(set(c["ops"]))
            rows.append([f"{r['services']:,}", label, str(len(c["ms"])), f"{c['median_ms']:.2f} ms",
                         f"{c['p95_ms']:.2f} ms", "/".join(str(o) for o in ops)])
    return header, rows


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    text_columns = {"Change", "code"}
    align = "|".join(":---" if h in text_columns else "---:" for h in header)
    out = ["| " + " | ".join(header) + " |", "|" + align + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _machine_line(m: dict[str, str], date: bool = True) -> str:
    commit = f", nftproxy {m['commit']}" if m.get("commit") else ""
    when = f", {m['date']}" if date else ""
    return (f"{m['cores']} cores, Linux {m['kernel']}, {m['nft']}, Python {m['python']}{commit}{when}, "
            f"load average {m['load']} at the start")


def render_text(results: list[dict[str, Any]], notes: list[str], machine: dict[str, str]) -> str:
    parts = [f"\nnftproxy bench: {_machine_line(machine)}"]
    if results:
        parts += ["", "Cold start (nftproxy run --manifests DIR --once, process start to rules committed):",
                  _text_table(*_start_rows(results)),
                  *(["", "Cold start, baseline checkout and this one in the same rounds:",
                     _text_table(*_baseline_rows(results))]
                    if _baseline_rows(results)[1] else []),
                  "", "Cold sync (full rebuild, table absent before each) and memory:",
                  _text_table(*_cold_rows(results)),
                  "", "One-Service changes (latency of proxier.sync()):", _text_table(*_change_rows(results)),
                  "", "Targets:", *("  " + t for t in _targets(results))]
    parts += ["", *notes] if notes else []
    return "\n".join(parts)


def render_markdown(results: list[dict[str, Any]], notes: list[str], machine: dict[str, str]) -> str:
    parts = [
        f"## nftproxy bench, {machine['date']}",
        "",
        f"Machine: {_machine_line(machine, date=False)}. Run in a throwaway network namespace.",
        "",
        "Every Service is a ClusterIP with one TCP port and one EndpointSlice.",
        "",
        "*Cold start* is what a user waits for: `nftproxy run --manifests DIR --once` as a new process "
        "(the objects as one JSON List), timed from spawn to exit, the table absent; against `nft -f` "
        "of the ruleset it left, as `nft list table inet nftproxy` prints it, loaded into a new, empty "
        "namespace (`unshare -n`), also from spawn to exit. Runs interleaved, medians compared. "
        "*parsing* is objects parsed per second as a cold start parses them (up to 10,000 Services). "
        "The peaks are sampled every 20 ms from /proc while the cold start runs: VmHWM of nftproxy and "
        "of its nft child, and the largest sum of their VmRSS (*together*).",
        "",
        "*nftproxy sync* is `Proxier.sync()` with the table absent (a full rebuild, including "
        "translation and the child nft it streams the script to); *nft -f* is `nft -f FILE` of the "
        "identical script, the table absent again. "
        "*steady RSS* is VmRSS after `gc.collect()` once synced; *nftproxy peak* is the process's "
        "ru_maxrss; *its nft child peak* is the peak of nft reading the same script from its standard "
        "input (what a rebuild runs, resident next to nftproxy while it runs), *nft -f peak* "
        "that of the plain `nft -f`. Both nft peaks are measured by spawning nft from a small process: "
        "spawned from nftproxy, a child's ru_maxrss starts at nftproxy's RSS.",
        "",
    ]
    if results:
        parts += ["### Cold start (headline)", "", _md_table(*_start_rows(results)), "",
                  *(["#### Before and after (`--baseline`)", "", _md_table(*_baseline_rows(results)), ""]
                    if _baseline_rows(results)[1] else []),
                  "### Cold sync and memory", "", _md_table(*_cold_rows(results)), "",
                  "### One-Service changes", "",
                  "Latency of `Proxier.sync()` for one change, each run on a different Service; operations are "
                  "`SyncResult.operations` (element and chain adds/deletes in the transaction), every count seen "
                  "listed.", "",
                  _md_table(*_change_rows(results)), "", "### Targets", "", *(f"- {t}" for t in _targets(results)), ""]
    if notes:
        parts += ["### Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(parts)
