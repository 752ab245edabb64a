"""The report: the table's rows from the results, the table, its explanation, and the JSON file.

Figures only, no thresholds: each ratio is a server's figure / coturn's and ``better`` says
which direction wins; a note says where a figure is only a floor because the load generator ran
out first. turnd+fastpath is measured under the UDP channel loads only: elsewhere its cell says
"n/a".
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from bench.compare.loads import FASTPATH_TRANSPORTS, LOSS_TARGET_PERCENT, TRANSPORTS
from bench.compare.procfs import CLK_TCK
from bench.compare.servers import FASTPATH, SERVERS
from bench.compare.stats import ratio


@attrs.frozen
class Row:
    """One line of the table: a figure for each server."""

    group: str
    label: str
    unit: str
    #: "lower" or "higher": which direction is better.
    better: str
    values: Mapping[str, float | None]
    note: str = ""
    #: Servers this row's load is not run for (the fast path outside UDP channels): "n/a".
    not_applicable: tuple[str, ...] = ()


#: The server every ratio divides by.
REFERENCE = "coturn"
#: Ratio column headers, by server.
RATIO_HEADERS = {"turnd": "turnd/coturn", FASTPATH: "fastpath/coturn"}


def format_number(value: float | None) -> str:
    """A figure with sensible digits; "-" when missing."""
    if value is None or math.isnan(value):
        return "-"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(rows: Sequence[Row], servers: Sequence[str] = SERVERS) -> str:
    """Rows grouped under their metric, one column per server and a ratio to coturn for each
    other server."""
    lines: list[str] = []
    compared = [s for s in servers if s != REFERENCE] if REFERENCE in servers else []
    widths = {s: max(10, len(s)) for s in servers}
    ratio_widths = {s: max(13, len(ratio_header(s))) for s in compared}
    header = f"  {'':40} {'unit':>7}" + "".join(f" {s:>{widths[s]}}" for s in servers)
    header += "".join(f" {ratio_header(s):>{ratio_widths[s]}}" for s in compared) + "  better"
    for group, members in itertools.groupby(rows, key=lambda r: r.group):
        lines += ["", group, header]
        for row in members:
            cells = "".join(f" {cell(row, s):>{widths[s]}}" for s in servers)
            line = f"  {row.label:40} {row.unit:>7}{cells}"
            for name in compared:
                shown = "n/a" if name in row.not_applicable else format_number(row_ratio(row, name))
                line += f" {shown:>{ratio_widths[name]}}"
            lines.append(f"{line}  {row.better}")
            if row.note:
                lines.append(f"    {row.note}")
    return "\n".join(lines[1:]) if lines else "(no figures)"


def ratio_header(server: str) -> str:
    return RATIO_HEADERS.get(server, f"{server}/{REFERENCE}")


def cell(row: Row, server: str) -> str:
    """A row's figure for ``server``: "n/a" where its load is not run for that server."""
    return "n/a" if server in row.not_applicable else format_number(row.values.get(server))


def row_ratio(row: Row, server: str) -> float | None:
    """``server``'s figure / coturn's in ``row``."""
    return ratio(row.values.get(server), row.values.get(REFERENCE))


def clean_json(value: Any) -> Any:
    """``value`` with NaN and infinities as None and tuples as lists, so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def write_json(path: Path, document: Mapping[str, Any]) -> Path:
    """Write ``document`` as strict JSON to ``path``, making its directory; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean_json(document), indent=2, allow_nan=False) + "\n")
    return path


def default_json_path(now: datetime) -> Path:
    """bench/results/compare-<UTC timestamp>.json (bench/results is git-ignored)."""
    return Path(__file__).parents[1] / "results" / f"compare-{now:%Y%m%dT%H%M%SZ}.json"


def _get(results: Mapping[str, Any], *path: str) -> Any:
    value: Any = results
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


#: A load generator above this share of one core was probably the bottleneck.
GENERATOR_SATURATED_PERCENT = 85


def build_rows(results: Mapping[str, Mapping[str, Any]]) -> list[Row]:
    """The table's rows from the per-server results."""
    rows: list[Row] = []
    measured = FASTPATH in results

    def row(
        group: str,
        label: str,
        unit: str,
        better: str,
        path: str,
        note: str = "",
        fastpath: bool = True,
    ) -> None:
        """A row for the figure at ``path``; ``fastpath`` False: a load turnd+fastpath skips."""
        values = {name: _get(results.get(name, {}), *path.split("/")) for name in SERVERS}
        skipped = (FASTPATH,) if measured and not fastpath else ()
        if any(v is not None for v in values.values()):
            rows.append(Row(group, label, unit, better, values, note, skipped))

    group = "Server CPU per relayed packet (each echoed packet is relayed twice)"
    for transport, mode in TRANSPORTS:
        label = f"{transport.upper()} {'Send indications' if mode == 'send' else 'channels'}"
        applies = (transport, mode) in FASTPATH_TRANSPORTS
        for suffix, figure in CPU_FIGURES:
            path = f"cpu/{transport}-{mode}/{figure}"
            note = _kernel_note(results, f"cpu/{transport}-{mode}") if not suffix else ""
            shown = f"{label}{suffix or ': server process'}"
            row(group, shown, "µs/pkt", "lower", path, note, applies)
    note = _each(results, "uclient/loss_percent", "{name} loss {value:.2f} %")
    note += "; CPU includes uclient's allocations and idle start" if note else ""
    note = "; ".join(filter(None, (note, _kernel_note(results, "uclient"))))
    sparse = "uclient paces 1 packet/ms per client: the host's CPU is mostly idle-time noise"
    for suffix, figure in CPU_FIGURES[:4]:
        path = f"uclient/{figure}"
        label = f"uclient{suffix}" if suffix else "uclient UDP channels (cross-check)"
        shown = note if not suffix else sparse if figure == "host_us_per_relayed_packet" else ""
        row(group, label, "µs/pkt", "lower", path, shown)
    group = f"Highest packet rate at ≤ {LOSS_TARGET_PERCENT} % loss (UDP channels, paced)"
    note = "; ".join(filter(None, (_rate_note(results), _kernel_note(results, "rate"))))
    row(group, "client packets per second", "pkt/s", "higher", "rate/best_pps", note)
    group = "Round-trip latency through the relay, and straight to the same echo peer"
    for q in (50, 99):
        note = _kernel_note(results, "rtt") if q == 50 else ""
        row(group, f"added by the relay, p{q}", "µs", "lower", f"rtt/added_p{q}_us", note)
    for q in (50, 99):
        row(group, f"through the relay, p{q}", "µs", "lower", f"rtt/relay_p{q}_us")
        row(group, f"direct to the echo peer, p{q}", "µs", "-", f"rtt/direct_p{q}_us")
    group = "STUN Binding (UDP, unauthenticated, windowed)"
    note = _generator_note(results, "binding")
    row(group, "answers per second", "1/s", "higher", "binding/answers_per_s", note, False)
    row(group, "server CPU per answer", "µs", "lower", "binding/cpu_us_per_answer", "", False)
    group = "Authenticated allocations (fresh socket: 401, Allocate, Refresh 0)"
    note = "; ".join(
        filter(None, (_generator_note(results, "allocations"), _failures(results, "allocations")))
    )
    path = "allocations/allocations_per_s"
    row(group, "allocations per second", "1/s", "higher", path, note, False)
    path = "allocations/cpu_us_per_allocation"
    row(group, "server CPU per allocation", "µs", "lower", path, "", False)
    group = "RSS per idle allocation ((RSS after - RSS before) / allocations)"
    by_level: dict[int, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
    for name in SERVERS:
        for entry in _get(results.get(name, {}), "rss", "levels") or []:
            by_level[entry["allocations"]][name] = entry
    for level, entries in sorted(by_level.items()):
        values = {name: entries.get(name, {}).get("bytes_per_allocation") for name in SERVERS}
        notes = []
        for name, entry in entries.items():
            if "capped" in entry:
                notes.append(f"{name}: {entry['capped']}")
            elif entry["achieved"] < level:
                notes.append(f"{name}: only {entry['achieved']:,} ({entry['failures']})")
        label = f"{level:,} allocations"
        skipped = (FASTPATH,) if measured else ()
        rows.append(Row(group, label, "B/alloc", "lower", values, "; ".join(notes), skipped))
    return rows


#: The CPU figures of a relay load, each a row: (label suffix, figure). The first is the server
#: process alone, as before the fast path; (a) adds the time the kernel ran the server's BPF
#: program; (b) is the host's busy CPU less the load generator's and the echo peer's; (b') that
#: less other user processes' too (a shared host); (c) the host's busy CPU less other tenants'
#: over the same round trips sent straight to the echo peer (UDP channels).
CPU_FIGURES = (
    ("", "cpu_us_per_relayed_packet"),
    (" (a) +BPF program", "cpu_bpf_us_per_relayed_packet"),
    (" (b) host-gen-peer", "host_us_per_relayed_packet"),
    (" (b') b-tenants", "host_own_us_per_relayed_packet"),
    (" (c) host over direct", "host_over_direct_us_per_relayed_packet"),
)


def _kernel_note(results: Mapping[str, Any], path: str) -> str:
    """How many of the load's packets turnd+fastpath's program relayed in the kernel (its own
    counters), each direction, and what the core credited."""
    load = _get(results.get(FASTPATH, {}), *path.split("/"))
    if not isinstance(load, Mapping) or "kernel_packets_to_peer" not in load:
        return ""
    return (
        f"fast path program relayed {load['kernel_packets_to_peer']:,.0f} to peers, "
        f"{load['kernel_packets_to_client']:,.0f} to clients (core credited "
        f"{load['kernel_relayed_packets_to_peer']:,.0f}, "
        f"{load['kernel_relayed_packets_to_client']:,.0f})"
    )


def _each(results: Mapping[str, Any], path: str, template: str) -> str:
    """``template`` filled in for every server that has ``path``, joined by commas."""
    parts = []
    for name in SERVERS:
        value = _get(results.get(name, {}), *path.split("/"))
        if value is not None:
            parts.append(template.format(name=name, value=value))
    return ", ".join(parts)


def _generator_note(results: Mapping[str, Any], metric: str) -> str:
    parts = []
    for name in SERVERS:
        share = _get(results.get(name, {}), metric, "client_cpu_percent")
        if share is not None:
            saturated = share >= GENERATOR_SATURATED_PERCENT
            parts.append(f"{name} {share:.0f} %{' (saturated: a floor)' if saturated else ''}")
    return ("load generator CPU: " + ", ".join(parts)) if parts else ""


def _failures(results: Mapping[str, Any], metric: str) -> str:
    parts = []
    for name in SERVERS:
        failures = _get(results.get(name, {}), metric, "failures")
        if failures:
            parts.append(f"{name} failures {failures}")
    return ", ".join(parts)


def _rate_note(results: Mapping[str, Any]) -> str:
    parts = []
    for name in SERVERS:
        rate = _get(results.get(name, {}), "rate") or {}
        lossy = [step for step in rate.get("steps", []) if step["verdict"] == "loss"]
        if rate.get("limited_by") == "generator":
            parts.append(f"{name}: a floor, the Python load generator ran out first")
        elif lossy:
            first = min(lossy, key=lambda step: step["target_pps"])
            drops = ", ".join(f"{k} {v}" for k, v in first["socket_drops"].items())
            parts.append(
                f"{name}: {first['loss_percent']:.1f} % lost at {first['target_pps']:,} pkt/s "
                f"(socket drops: {drops})"
            )
        elif rate.get("limited_by"):
            parts.append(f"{name}: stopped by the {rate['limited_by']}")
    return "; ".join(parts)


def spread(rounds: Sequence[Mapping[str, Mapping[str, Any]]], rows: Sequence[Row]) -> list[str]:
    """Lowest-highest of each round for the rows the fast path is measured in (the CPU rows of
    UDP channels, rate, added latency), one line per row, for ``--rounds`` above 1."""
    each = [{(r.group, r.label): r for r in build_rows(one)} for one in rounds]
    lines = []
    for row in rows:
        if row.not_applicable or row.label.startswith(("through", "direct")):
            continue
        parts = []
        for name in SERVERS:
            found = [
                v
                for one in each
                if (r := one.get((row.group, row.label))) and (v := r.values.get(name)) is not None
            ]
            if found:
                parts.append(f"{name} {format_number(min(found))}-{format_number(max(found))}")
        if parts:
            lines.append(f"  {row.label} ({row.unit}): {', '.join(parts)}")
    return lines


def table_entry(row: Row, servers: Sequence[str] = SERVERS) -> dict[str, Any]:
    """A row of the table for the JSON file, with its ratios to coturn ("ratio": turnd's)."""
    ratios = {
        s: row_ratio(row, s) for s in servers if s != REFERENCE and s not in row.not_applicable
    }
    return attrs.asdict(row) | {"ratio": ratios.get("turnd"), "ratios": ratios}


#: Most lines naming loads another turnd's BPF program ran under (one per load and round).
FOREIGN_LINES = 8


def explain(
    results: Mapping[str, Mapping[str, Any]],
    irq_time: bool | None = None,
    rounds: Sequence[Mapping[str, Mapping[str, Any]]] = (),
) -> list[str]:
    """How to read the table: setup and caveats, from what actually ran (``results``, the
    medians of ``rounds`` when there are several); ``irq_time``: whether the kernel keeps
    softirq time apart from the tasks it interrupts."""
    lines = [
        "ratio = server / coturn (fastpath = turnd+fastpath); 'better' says which direction wins;"
        " n/a: turnd+fastpath is measured under the UDP channel loads only."
    ]
    for name, result in results.items():
        settings = _get(result, "server", "settings")
        if settings:
            threads = _get(result, "server", "threads") or {}
            named = ", ".join(f"{n} x{count}" for n, count in threads.items())
            lines.append(f"{name}: {', '.join(settings)}; threads: {named}")
        for metric, value in result.items():
            if isinstance(value, Mapping) and "error" in value:
                lines.append(f"{name} {metric}: failed: {value['error']}")
    for result in results.values():
        why, limit = (
            _get(result, "rss", "port_range_reason"),
            _get(result, "rss", "open_file_limit"),
        )
        if why:
            lines.append(f"RSS load: {why}; servers' open-file limit {limit}.")
            break
    lines.append(
        f"CPU is utime+stime of /proc/PID/stat (every thread) in ticks of 1/{CLK_TCK} s; the load "
        "generator and the echo peer share the machine's cores with the server."
    )
    lines += [
        "CPU rows: the server process alone; (a) that plus the run_time_ns of the server's own "
        "BPF program (kernel.bpf_stats_enabled); (b) host-gen-peer: the host's busy CPU "
        "(/proc/stat user+nice+system+irq+softirq, all CPUs) less the load generator's and the "
        "echo peer's processes; (b') that less what other user processes (not the bench's, "
        "kernel threads kept) spent meanwhile; (c) the host's busy CPU less other tenants' over "
        "what the same round trips cost sent straight to the echo peer.",
        "(a) counts the program only: a packet it redirects is then delivered by the kernel "
        "(loopback xmit, the peer's socket), work a userspace relay pays in its own sendto.",
    ]
    if irq_time is False:
        lines.append(
            "This kernel has no CONFIG_IRQ_TIME_ACCOUNTING: softirq time (where the fast path "
            "runs) is charged to the task it interrupts, on loopback mostly the sender, the "
            "generator or the echo peer, whose CPU (b) subtracts; (c) subtracts nothing but "
            "the direct load's cost, so it is the fairest figure here."
        )
    shares = [
        f"{name} {100 * load['tenants_cpu_s'] / load['host_busy_cpu_s']:.0f} %"
        for name, result in results.items()
        if isinstance(load := _get(result, "cpu", "udp-channel"), Mapping)
        and load.get("host_busy_cpu_s")
        and "tenants_cpu_s" in load
    ]
    if shares:
        lines.append(
            "Other tenants' share of the host's busy CPU over the UDP channel load: "
            + ", ".join(shares)
        )
    foreign = [
        f"{f'round {number} ' if len(rounds) > 1 else ''}{name} {load}: other turnd_relay "
        f"programs ran {figures['other_bpf_runs']:,.0f} times "
        f"({figures.get('other_bpf_cpu_s', 0) * 1e3:.1f} ms): another turnd's program on an "
        "interface this load crossed"
        for number, one in enumerate(rounds or [results], 1)
        for name, result in one.items()
        for load, figures in _relay_loads(result)
        if figures.get("other_bpf_runs")
    ]
    lines += foreign[:FOREIGN_LINES]
    samples = [
        load["server_cpu_s"]
        for result in results.values()
        for load in (_get(result, "cpu") or {}).values()
        if isinstance(load, Mapping) and load.get("server_cpu_s")
    ]
    if samples:
        ticks = round(min(samples) * CLK_TCK)
        lines.append(
            f"The smallest process CPU-per-packet sample is {ticks} ticks: about "
            f"±{100 / ticks:.0f} % from the clock tick alone (raise --packets for more); BPF "
            "run time is in ns, the host's CPU in ticks too."
        )
    return lines


def _relay_loads(result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, figures) of a server's CPU-measured relay loads."""
    loads = [(f"cpu {k}", v) for k, v in (_get(result, "cpu") or {}).items()]
    loads.append(("uclient", _get(result, "uclient") or {}))
    return [(name, figures) for name, figures in loads if isinstance(figures, Mapping)]


#: The table groups the scaling section compares between passes (throughput, and its cost).
SCALING_GROUPS = (
    "Highest packet rate",
    "Server CPU per relayed packet",
    "STUN Binding",
    "Authenticated",
)


def scaling(passes: Mapping[int, Mapping[str, Any]], servers: Sequence[str]) -> list[str]:
    """Per server and row of the throughput and CPU groups: the figure at 1 worker (coturn: 1
    relay thread), at N, and N's over 1's, from each pass's table."""
    counts = sorted(passes)
    if len(counts) < 2:
        return []
    low, high = counts[0], counts[-1]
    first = {(e["group"], e["label"]): e for e in passes[low]["table"]}
    lines = [
        f"Scaling: {high} turnd workers / 1, coturn {high} relay threads / 1 (the load generator "
        f"is one Python process on these {os.cpu_count()} CPUs: where it is the floor, so is "
        "the scaling; run where there are cores to spare for it)"
    ]
    for entry in passes[high]["table"]:
        group = str(entry["group"])
        if not group.startswith(SCALING_GROUPS):
            continue
        before = first.get((group, entry["label"]))
        if before is None:
            continue
        cells = []
        for server in servers:
            one, many = before["values"].get(server), entry["values"].get(server)
            if one is None or many is None:
                continue
            factor = ratio(many, one)
            cells.append(
                f"{server} {format_number(one)} -> {format_number(many)}"
                + (f" ({factor:.2f}x)" if factor is not None else "")
            )
        if cells:
            lines.append(f"  {entry['label']} [{entry['unit']}]: " + "; ".join(cells))
    return lines
