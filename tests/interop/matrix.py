"""The interop matrix: clients nobody here wrote x turnd transports x credential types.

Run it from the checkout (scripts/test installs what it needs)::

    .venv/bin/python -m tests.interop.matrix --json matrix.json      # table on stdout, JSON file
    .venv/bin/python -m tests.interop.matrix --markdown              # the table for the README
    .venv/bin/python -m tests.interop.matrix --clients chromium,werift

It starts one turnd (UDP, TCP and TLS on 127.0.0.1 and ::1, see ``matrix_turnd``), gives every
cell its own username, runs the clients (``matrix_clients``) side by side and prints one table.
As root it first moves into a private network namespace with nothing but loopback (``netns``),
so no client, the browser included, can send a packet off this machine; ``--netns off`` runs on
the host's loopback instead.

A cell passes only when both sides agree that the data crossed the relay:

1. the client's own numbers are whole: every message it sent came back (echoed byte-exact, in
   order, for the data channels; uclient's summary with 0 lost), and its stack reports a relay
   candidate of the cell's protocol where it can tell (Chromium's getStats);
2. turnd's books (control API and usage file) hold allocations under the cell's username, all
   over the cell's transport and address family, that carried at least the payload bytes the
   client counted each way.

A client that exits 0, or a stack that falls back to another transport on its own (werift retries
TCP when UDP fails), therefore fails its cell. A cell is skipped only when its program is not
installed, and the reason says what is missing; combinations a client cannot do at all are shown
as n/a with the reason (``matrix_plan``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from testkit.coturn import EchoPeer, start_peer
from tests.interop import matrix_clients as clients
from tests.interop import netns
from tests.interop.matrix_clients import ClientReport, Job
from tests.interop.matrix_plan import (
    CLIENT_BY_KEY,
    CLIENTS,
    LONG_TERM,
    NO_CREDENTIAL,
    TRANSPORTS,
    Cell,
    all_cells,
    unsupported_reason,
)
from tests.interop.matrix_turnd import (
    REST_SECRET,
    MatrixTurnd,
    Relayed,
    add_users,
    books,
    drops,
    fastpath_active,
    for_tag,
    mint_credential,
    start,
)

PASS, FAIL, SKIP, UNSUPPORTED = "pass", "fail", "skip", "n/a"

#: Clients run side by side: the three batch runners plus a few coturn runs at once (each
#: uclient run mostly waits: a random 1-6 s start, then a message every 20 ms).
WORKERS = 8


@attrs.frozen
class Result:
    """A cell's verdict, with the client's numbers and turnd's books behind it."""

    cell: Cell
    status: str
    reason: str = ""
    report: ClientReport | None = None
    turnd: Relayed | None = None

    def as_json(self) -> dict[str, Any]:
        report = self.report
        return {
            "id": self.cell.id,
            "client": self.cell.client,
            "transport": self.cell.transport,
            "credential": self.cell.credential,
            "status": self.status,
            "reason": self.reason,
            "sent": report.sent if report else None,
            "received": report.received if report else None,
            "expected": report.expected if report else None,
            "bytes_out": report.bytes_out if report else None,
            "bytes_in": report.bytes_in if report else None,
            "detail": report.detail if report else "",
            "attempts": report.attempts if report else None,
            "first_attempt_problem": report.first_problem if report else None,
            "turnd": self.turnd.as_json() if self.turnd else None,
        }


def verdict(cell: Cell, report: ClientReport, seen: Relayed | None) -> Result:
    """Hold the client's numbers against turnd's books (see the module docstring)."""
    if report.problem:
        return Result(cell, FAIL, report.problem, report, seen)
    if report.sent != report.expected or report.received != report.expected:
        why = f"{report.received} of {report.expected} came back ({report.sent} sent)"
        return Result(cell, FAIL, why, report, seen)
    if cell.credential == NO_CREDENTIAL:
        return Result(cell, PASS, "", report, None)  # a Binding carries no username to match
    link = cell.link
    if seen is None or seen.allocations == 0:
        return Result(cell, FAIL, f"turnd has no allocation for {cell.tag}", report, seen)
    if seen.transports != {link.kind}:
        why = f"turnd saw {sorted(seen.transports)} allocations, not {link.kind}"
        return Result(cell, FAIL, why, report, seen)
    wrong_family = [c for c in seen.clients if c.startswith("[") != link.ipv6]
    if wrong_family:
        why = f"turnd saw clients {wrong_family}, not over IPv{6 if link.ipv6 else 4}"
        return Result(cell, FAIL, why, report, seen)
    if report.relay_ipv6 is not None:
        family = 6 if report.relay_ipv6 else 4
        wrong = [r for r in seen.relays if r.startswith("[") != report.relay_ipv6]
        if wrong:
            return Result(cell, FAIL, f"turnd gave relays {wrong}, not IPv{family}", report, seen)
    for direction, claimed, counted in (
        ("towards peers", report.bytes_out, seen.bytes_to_peer),
        ("towards clients", report.bytes_in, seen.bytes_to_client),
    ):
        if claimed is not None and counted < claimed:
            why = f"turnd relayed {counted} bytes {direction}, the client counted {claimed}"
            return Result(cell, FAIL, why, report, seen)
    return Result(cell, PASS, "", report, seen)


# --------------------------------------------------------------------------------------------
# Running


def _jobs(turnd: MatrixTurnd, cells: Sequence[Cell]) -> list[Job]:
    """A username per cell: static users are added to turnd, REST ones minted by its endpoint
    (turnutils_uclient computes its own from the shared secret, which is its REST support)."""
    jobs, users = [], {}
    for cell in cells:
        port = turnd.port(cell.link)
        if cell.credential == LONG_TERM:
            users[cell.tag] = f"pw-{cell.tag}"
            jobs.append(Job(cell, port, cell.tag, users[cell.tag]))
        elif cell.credential == NO_CREDENTIAL:
            jobs.append(Job(cell, port, "", ""))
        elif cell.client.startswith("uclient"):
            jobs.append(Job(cell, port, cell.tag, REST_SECRET, client_computes_rest=True))
        else:
            username, password = mint_credential(turnd, cell.tag)
            jobs.append(Job(cell, port, username, password))
    add_users(turnd, users)
    return jobs


BatchRunner = Callable[[MatrixTurnd, Sequence[Job]], dict[str, ClientReport]]

#: Clients whose cells run together in one process (one browser, one Node.js, one event loop).
BATCHES: Mapping[str, BatchRunner] = {
    "chromium": clients.run_chromium,
    "werift": clients.run_werift,
    "aioice": clients.run_aioice,
}


def _batch(runner: BatchRunner, turnd: MatrixTurnd, jobs: Sequence[Job]) -> dict[str, ClientReport]:
    try:
        return runner(turnd, jobs)
    except Exception as exc:  # a crashed runner fails its cells, it does not end the matrix
        return {job.cell.id: clients.failed(f"runner crashed: {exc!r}") for job in jobs}


def _single(job: Job, peer: EchoPeer | None) -> dict[str, ClientReport]:
    try:
        if peer is None:
            return {job.cell.id: clients.run_stunclient(job)}
        return {job.cell.id: clients.run_uclient(job, peer)}
    except Exception as exc:
        return {job.cell.id: clients.failed(f"runner crashed: {exc!r}")}


@attrs.frozen
class Run:
    """The results in table order, and how turnd ended (0: a clean shutdown)."""

    results: list[Result]
    turnd_status: int | None
    #: turnd's dropped packets by reason over the whole run (nonzero ones only).
    turnd_drops: Mapping[str, int] = attrs.field(factory=dict)
    #: Whether turnd's kernel fast path ran (None: turnd was not started).
    fastpath: bool | None = None


def run(directory: Path, only: frozenset[str] | None = None) -> Run:
    """Run every cell (of the ``only`` clients when given), all against one turnd."""
    chosen = [c for c in all_cells() if only is None or c.client in only]
    results: dict[str, Result] = {}
    runnable = []
    for cell in chosen:
        if (why := unsupported_reason(cell)) is not None:
            results[cell.id] = Result(cell, UNSUPPORTED, why)
        elif (why := clients.unavailable(cell.client)) is not None:
            results[cell.id] = Result(cell, SKIP, why)
        else:
            runnable.append(cell)
    if not runnable:
        return Run([results[cell.id] for cell in chosen], None)
    reports: dict[str, ClientReport] = {}
    turnd = start(directory)
    try:
        jobs = _jobs(turnd, runnable)
        with contextlib.ExitStack() as stack:
            uclient_jobs = [j for j in jobs if j.cell.client.startswith("uclient")]
            peer = stack.enter_context(start_peer(("127.0.0.1", "::1"))) if uclient_jobs else None
            pool = stack.enter_context(ThreadPoolExecutor(WORKERS))
            futures = [
                pool.submit(_batch, runner, turnd, batch)
                for key, runner in BATCHES.items()
                if (batch := [job for job in jobs if job.cell.client == key])
            ]
            futures += [
                pool.submit(_single, job, peer if job in uclient_jobs else None)
                for job in jobs
                if job.cell.client not in BATCHES
            ]
            for future in futures:
                reports.update(future.result())
        totals = books(turnd)
        dropped = drops(turnd)
        kernel = fastpath_active(turnd)
    finally:
        status = turnd.stop()
    for cell in runnable:
        results[cell.id] = verdict(cell, reports[cell.id], for_tag(totals, cell.tag))
    return Run([results[cell.id] for cell in chosen], status, dropped, kernel)


# --------------------------------------------------------------------------------------------
# Reporting


def _mark(result: Result | None) -> str:
    if result is None:
        return ""
    if result.status == PASS and result.report is not None:
        retried = "*" if result.report.attempts > 1 else ""
        return f"ok{retried} {result.report.received}/{result.report.expected}"
    return {FAIL: "FAIL", SKIP: "skip", UNSUPPORTED: "n/a"}.get(result.status, result.status)


def _rows(results: Sequence[Result]) -> list[list[str]]:
    by_id = {r.cell.id: r for r in results}
    rows = []
    for client in CLIENTS:
        for credential in client.credentials:
            marks = [by_id.get(Cell(client.key, t.name, credential).id) for t in TRANSPORTS]
            if any(marks):
                rows.append([client.label, credential, *(_mark(m) for m in marks)])
    return rows


HEADER = ["client", "credential", *(t.name for t in TRANSPORTS)]


def table(results: Sequence[Result]) -> str:
    """The matrix as fixed-width text: one row per client and credential type."""
    rows = [HEADER, *_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def markdown(results: Sequence[Result]) -> str:
    """The matrix as a Markdown table (the README's)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    return "\n".join(lines)


def notes(results: Sequence[Result]) -> list[str]:
    """One line per failed, skipped or retried cell, and one per client and n/a reason."""
    lines = [
        f"{r.status.upper()} {r.cell.id}: {r.reason}" for r in results if r.status in (FAIL, SKIP)
    ]
    lines += [
        f"ok* {r.cell.id}: passed on a second attempt; the first: {r.report.first_problem}"
        for r in results
        if r.status == PASS and r.report is not None and r.report.attempts > 1
    ]
    unsupported: dict[tuple[str, str], list[str]] = {}
    for result in results:
        if result.status == UNSUPPORTED:
            transports = unsupported.setdefault((result.cell.client, result.reason), [])
            if result.cell.transport not in transports:
                transports.append(result.cell.transport)
    lines += [
        f"n/a {client} over {', '.join(transports)}: {reason}"
        for (client, reason), transports in unsupported.items()
    ]
    return lines


def summary(results: Sequence[Result]) -> dict[str, int]:
    return {
        status: sum(r.status == status for r in results)
        for status in (PASS, FAIL, SKIP, UNSUPPORTED)
    }


def _command_output(argv: Sequence[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "unknown"


def versions() -> dict[str, str]:
    """The versions of the programs in the matrix, for the header and the JSON."""
    found = {
        "chromium": _command_output([clients.chromium_path() or "chromium", "--version"]),
        "node": _command_output(["node", "--version"]),
        "coturn": _command_output(["dpkg-query", "-W", "-f=${Version}", "coturn"]),
    }
    for package in ("werift", "playwright-core"):
        path = clients.JS_DIR / "node_modules" / package / "package.json"
        found[package] = (
            json.loads(path.read_text())["version"] if path.exists() else "not installed"
        )
    try:
        found["aioice"] = importlib.metadata.version("aioice")
    except importlib.metadata.PackageNotFoundError:
        found["aioice"] = "not installed"
    return found


def document(results: Sequence[Result], network: str, seconds: float) -> dict[str, Any]:
    """The JSON written by ``--json``."""
    return {
        "network": network,
        "seconds": round(seconds, 1),
        "versions": versions(),
        "clients": {c.key: c.label for c in CLIENTS},
        "transports": {t.name: f"{t.kind} to {t.host}" for t in TRANSPORTS},
        "summary": summary(results),
        "cells": [r.as_json() for r in results],
    }


# --------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.interop.matrix", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", type=Path, help="write the matrix as JSON to this file")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--clients",
        help="comma-separated client keys to run: " + ", ".join(CLIENT_BY_KEY),
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep turnd's directory (config, log, usage file)"
    )
    parser.add_argument(
        "--netns",
        choices=("auto", "on", "off"),
        default="auto",
        help="run inside a private network namespace (auto: when root and ip are there)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print the matrix; exit 1 when a cell failed, 2 on bad usage."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(args_list)
    only = None
    if args.clients:
        only = frozenset(k.strip() for k in args.clients.split(",") if k.strip())
        unknown = only - set(CLIENT_BY_KEY)
        if unknown:
            print(f"unknown client(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
    network = "host loopback"
    if args.netns != "off":
        why = netns.unavailable()
        if why is None:
            inner = [sys.executable, "-m", "tests.interop.matrix", *args_list, "--netns", "off"]
            try:
                with netns.private_namespace() as name:
                    return netns.run_inside(name, inner)
            except netns.NamespaceError as exc:
                why = str(exc)
        if args.netns == "on":
            print(f"cannot make a network namespace: {why}", file=sys.stderr)
            return 2
        print(f"note: running on the host's loopback: {why}", file=sys.stderr)
    if netns.INSIDE_ENV in os.environ:
        network = f"private network namespace {os.environ[netns.INSIDE_ENV]} (lo only)"
    began = time.monotonic()
    if args.keep:
        directory = tempfile.mkdtemp(prefix="turnd-matrix-")
        print(f"turnd's config, log and usage file stay in {directory}", file=sys.stderr)
        outcome = run(Path(directory), only)
    else:
        with tempfile.TemporaryDirectory(prefix="turnd-matrix-") as directory:
            outcome = run(Path(directory), only)
    seconds = time.monotonic() - began
    results = outcome.results
    counts = summary(results)
    print(markdown(results) if args.markdown else table(results))
    for line in notes(results):
        print(line)
    if outcome.turnd_status not in (None, 0):
        print(f"FAIL turnd exited with status {outcome.turnd_status}")
    if outcome.turnd_drops:
        counted = ", ".join(f"{reason} {n}" for reason, n in sorted(outcome.turnd_drops.items()))
        print(f"turnd dropped packets: {counted}")
    if outcome.fastpath is not None:
        print(f"turnd's kernel fast path: {'active' if outcome.fastpath else 'inactive'}")
    print(
        f"{counts[PASS]} cells passed, {counts[FAIL]} failed, {counts[SKIP]} skipped and "
        f"{counts[UNSUPPORTED]} n/a, in {seconds:.0f} s on the {network}"
    )
    if args.json:
        report = document(results, network, seconds)
        report["turnd_exit_status"] = outcome.turnd_status
        report["turnd_drops"] = dict(outcome.turnd_drops)
        report["turnd_fastpath_active"] = outcome.fastpath
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if counts[FAIL] or outcome.turnd_status not in (None, 0) else 0


if __name__ == "__main__":
    sys.exit(main())
