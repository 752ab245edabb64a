"""The command line: each server kind in turn under every selected load, then the table and the
JSON file. A load that fails is recorded in the results and the run goes on.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from bench.compare.loads import FASTPATH_METRICS, MEASURES
from bench.compare.options import Options, parse_options
from bench.compare.procfs import CLK_TCK, bpf_stats, irq_time_accounting, thread_names
from bench.compare.report import (
    build_rows,
    default_json_path,
    explain,
    format_table,
    scaling,
    spread,
    table_entry,
    write_json,
)
from bench.compare.rss import FILE_MARGIN, measure_rss
from bench.compare.servers import (
    DEFAULT_PORT_RANGE,
    FASTPATH,
    STARTERS,
    EchoPeer,
    raise_file_limit,
    start_echo_peer,
)
from bench.compare.stats import median_of
from bench.compare.traffic import LOAD_DEADLINE

#: Allocation limits of the instance serving every load but RSS: far above what they use.
GENERAL_CAPACITY = 100_000


def measure_server(
    kind: str, peer: EchoPeer, work: Path, options: Options, metrics: Sequence[str]
) -> dict[str, Any]:
    """Every selected load against one server kind; failures are recorded, not raised. The
    fast path is measured under the UDP channel loads only (``FASTPATH_METRICS``)."""
    results: dict[str, Any] = {}
    if kind == FASTPATH:
        metrics = [m for m in metrics if m in FASTPATH_METRICS]
    general = [m for m in metrics if m in MEASURES]
    if general:
        results.update(_general_loads(kind, peer, work / "main", options, general))
    if "rss" in metrics:
        print(f"  {kind}: rss ...", flush=True)
        (work / "rss").mkdir()
        try:
            results["rss"] = measure_rss(kind, work / "rss", options)
        except Exception as exc:
            results["rss"] = _failure(f"{kind} rss", exc)
    return results


def _general_loads(
    kind: str, peer: EchoPeer, work: Path, options: Options, metrics: Sequence[str]
) -> dict[str, Any]:
    """The loads that share one server instance, in order."""
    work.mkdir()
    try:
        server = STARTERS[kind](work, DEFAULT_PORT_RANGE, GENERAL_CAPACITY, options.threads(kind))
    except Exception as exc:
        return {"server": _failure(f"{kind} start", exc)}
    results: dict[str, Any] = {
        "server": {"settings": server.settings, "threads": thread_names(server.pid)}
    }
    try:
        for metric in metrics:
            print(f"  {kind}: {metric} ...", flush=True)
            try:
                results[metric] = MEASURES[metric](server, peer, options)
            except Exception as exc:
                results[metric] = _failure(f"{kind} {metric}", exc)
    finally:
        server.stop()
    return results


def _run_pass(
    options: Options,
    servers: Sequence[str],
    metrics: Sequence[str],
    peer: EchoPeer,
    tmp: Path,
    notes: list[str],
) -> dict[str, Any]:
    """Every round of one worker count, then its table and explanation printed: the results
    (medians), the rounds and the table rows."""
    rounds: list[dict[str, Any]] = []
    for number in range(1, options.rounds + 1):
        if options.rounds > 1:
            print(f"round {number} of {options.rounds}", flush=True)
        one: dict[str, Any] = {}
        for kind in servers:
            work = tmp / f"{kind}-{options.workers}-{number}"
            work.mkdir()
            one[kind] = measure_server(kind, peer, work, options, metrics)
        rounds.append(one)
    results = median_of(rounds)
    rows = build_rows(results)
    print()
    if len(options.passes) > 1:
        print(f"turnd workers = {options.workers}, coturn relay-threads = "
              f"{options.threads('coturn')}:")  # fmt: skip
    print(format_table(rows, servers))
    if options.rounds > 1 and (lines := spread(rounds, rows)):
        print(f"\nSpread between rounds (lowest-highest of {options.rounds}):")
        print("\n".join(lines))
    print()
    for line in explain(results, irq_time_accounting(), rounds):
        print(line)
    if options.rounds > 1:
        print(
            f"each figure is the median of {options.rounds} rounds ({', '.join(servers)} in "
            "turn); every round's figures are in the JSON file under 'rounds'"
        )
    return {
        "workers": options.workers,
        "results": results,
        "rounds": rounds if options.rounds > 1 else [],
        "table": [table_entry(r, servers) for r in rows],
    }


def _failure(what: str, exc: Exception) -> dict[str, str]:
    error = f"{type(exc).__name__}: {exc}"
    print(f"    {what} failed: {error}", flush=True)
    return {"error": error}


def main(argv: Sequence[str] | None = None) -> None:
    """Measure the servers under the loads the flags select, print the table, write the JSON."""
    from testkit.coturn import find_tool

    options, metrics, servers, json_path = parse_options(argv)
    started = datetime.now(UTC)
    notes: list[str] = []
    if "coturn" in servers and find_tool("turnserver") is None:
        servers.remove("coturn")
        notes.append("coturn's turnserver is not installed: turnd is measured alone")
    if "uclient" in metrics and find_tool("turnutils_uclient") is None:
        metrics.remove("uclient")
        notes.append("turnutils_uclient is not installed: no uclient cross-check")
    if FASTPATH in servers and not any(m in FASTPATH_METRICS for m in metrics):
        servers.remove(FASTPATH)  # none of its loads is selected
    wanted = max(options.allocations) + 4 * FILE_MARGIN if "rss" in metrics else 0
    limit = raise_file_limit(wanted)
    if limit < wanted:
        notes.append(
            f"the open-file limit stays at {limit} (the hard limit; raising it needs "
            f"CAP_SYS_RESOURCE): servers cannot hold {max(options.allocations):,} allocations"
        )
    print(
        f"bench.compare: {', '.join(servers)} on loopback; {'quick' if options.quick else 'full'}"
        f" mode; {os.cpu_count()} CPUs; payload {options.size} B, window {options.window}, "
        f"{options.clients} clients; open-file limit {limit}"
    )
    for note in notes:
        print(f"note: {note}")
    passes: dict[int, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        relaying = any(m in FASTPATH_METRICS for m in metrics)
        why = stack.enter_context(bpf_stats()) if relaying else ""
        if why:
            notes.append(why)
            print(f"note: {why}")
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-compare-"))
        lifetime = LOAD_DEADLINE * 10 * options.rounds * len(options.passes)
        peer = start_echo_peer(lifetime=lifetime)
        print(f"echo peer: {peer.kind} on {peer.address[0]}:{peer.address[1]}")
        try:
            for workers in options.passes:
                chosen = attrs.evolve(options, workers=workers)
                if len(options.passes) > 1:
                    print(f"pass: turnd workers = {workers}, coturn relay-threads = "
                          f"{chosen.threads('coturn')}", flush=True)  # fmt: skip
                passes[workers] = _run_pass(chosen, servers, metrics, peer, Path(tmp), notes)
        finally:
            peer.stop()
    if len(passes) > 1:
        print()
        for line in scaling(passes, servers):
            print(line)
    elapsed = (datetime.now(UTC) - started).total_seconds()
    last = passes[options.passes[-1]]
    document = {
        "started": started.isoformat(),
        "elapsed_s": elapsed,
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "options": attrs.asdict(options),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "clock_ticks_per_s": CLK_TCK,
            "echo_peer": peer.kind,
            "irq_time_accounting": irq_time_accounting(),
        },
        "servers": servers,
        "notes": notes,
        "table": last["table"],
        "results": last["results"],
        "rounds": last["rounds"],
        "passes": {str(workers): one for workers, one in passes.items()},
    }
    path = write_json(json_path or default_json_path(started), document)
    print(f"\nresults: {path}  ({elapsed:.0f} s)")
