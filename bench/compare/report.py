"""The report: the table's rows from the results, the table, its explanation, and the JSON file.

Figures only, no thresholds: ``ratio`` is turnd / coturn and ``better`` says which direction
wins; a note says where a figure is only a floor because the load generator ran out first.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from bench.compare.loads import LOSS_TARGET_PERCENT, TRANSPORTS
from bench.compare.procfs import CLK_TCK
from bench.compare.servers import SERVERS
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
    """Rows grouped under their metric, one column per server and the turnd/coturn ratio."""
    lines: list[str] = []
    header = f"  {'':34} {'unit':>10}" + "".join(f" {s:>10}" for s in servers)
    header += f" {'turnd/coturn':>13}  better"
    for group, members in itertools.groupby(rows, key=lambda r: r.group):
        lines += ["", group, header]
        for row in members:
            values = [row.values.get(s) for s in servers]
            cells = "".join(f" {format_number(v):>10}" for v in values)
            line = f"  {row.label:34} {row.unit:>10}{cells}"
            line += (
                f" {format_number(ratio(row.values.get('turnd'), row.values.get('coturn'))):>13}"
            )
            line += f"  {row.better}"
            lines.append(line)
            if row.note:
                lines.append(f"    {row.note}")
    return "\n".join(lines[1:]) if lines else "(no figures)"


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

    def row(group: str, label: str, unit: str, better: str, path: str, note: str = "") -> None:
        values = {name: _get(results.get(name, {}), *path.split("/")) for name in SERVERS}
        if any(v is not None for v in values.values()):
            rows.append(Row(group, label, unit, better, values, note))

    group = "Server CPU per relayed packet (each echoed packet is relayed twice)"
    for transport, mode in TRANSPORTS:
        label = f"{transport.upper()} {'Send indications' if mode == 'send' else 'channels'}"
        row(group, label, "µs/pkt", "lower", f"cpu/{transport}-{mode}/cpu_us_per_relayed_packet")
    note = _each(results, "uclient/loss_percent", "{name} loss {value:.2f} %")
    note += "; CPU includes uclient's allocations and idle start" if note else ""
    path = "uclient/cpu_us_per_relayed_packet"
    row(group, "uclient UDP channels (cross-check)", "µs/pkt", "lower", path, note)
    group = f"Highest packet rate at ≤ {LOSS_TARGET_PERCENT} % loss (UDP channels, paced)"
    row(group, "client packets per second", "pkt/s", "higher", "rate/best_pps", _rate_note(results))
    group = "Round-trip latency through the relay, and straight to the same echo peer"
    for q in (50, 99):
        row(group, f"added by the relay, p{q}", "µs", "lower", f"rtt/added_p{q}_us")
    for q in (50, 99):
        row(group, f"through the relay, p{q}", "µs", "lower", f"rtt/relay_p{q}_us")
        row(group, f"direct to the echo peer, p{q}", "µs", "-", f"rtt/direct_p{q}_us")
    group = "STUN Binding (UDP, unauthenticated, windowed)"
    note = _generator_note(results, "binding")
    row(group, "answers per second", "1/s", "higher", "binding/answers_per_s", note)
    row(group, "server CPU per answer", "µs", "lower", "binding/cpu_us_per_answer")
    group = "Authenticated allocations (fresh socket: 401, Allocate, Refresh 0)"
    note = "; ".join(
        filter(None, (_generator_note(results, "allocations"), _failures(results, "allocations")))
    )
    row(group, "allocations per second", "1/s", "higher", "allocations/allocations_per_s", note)
    row(group, "server CPU per allocation", "µs", "lower", "allocations/cpu_us_per_allocation")
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
        rows.append(Row(group, label, "B/alloc", "lower", values, "; ".join(notes)))
    return rows


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


def table_entry(row: Row) -> dict[str, Any]:
    """A row of the table for the JSON file, with its ratio."""
    return attrs.asdict(row) | {"ratio": ratio(row.values.get("turnd"), row.values.get("coturn"))}


def explain(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """How to read the table: setup and caveats, from what actually ran."""
    lines = ["ratio = turnd / coturn; 'better' says which direction wins."]
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
    samples = [
        load["server_cpu_s"]
        for result in results.values()
        for load in (_get(result, "cpu") or {}).values()
        if isinstance(load, Mapping) and load.get("server_cpu_s")
    ]
    if samples:
        ticks = round(min(samples) * CLK_TCK)
        lines.append(
            f"The smallest CPU-per-packet sample is {ticks} ticks: about ±{100 / ticks:.0f} % "
            "from the clock tick alone (raise --packets for more)."
        )
    return lines
