"""Run each client of the interop matrix and read back the numbers it reports.

Every runner takes :class:`Job` values (a cell, the port to reach, the credential to use) and
returns a :class:`ClientReport` per cell: what the *client* says it sent and got back, and a
``problem`` when it says something went wrong. No runner judges turnd's side; ``matrix.py`` holds
these numbers against turnd's own books.

* Chromium and werift run ``js/echo.mjs``: two RTCPeerConnections forced to relay, a data channel,
  every message echoed (``js/chromium_relay.mjs`` through playwright-core and Debian's Chromium,
  ``js/werift_relay.mjs`` in Node.js). One browser serves all Chromium cells, one by one.
* aioice's ``create_turn_endpoint`` sends datagrams through its relay to an echo peer.
* turnutils_uclient and turnutils_stunclient go through ``testkit.coturn``, whose parsers turn their
  printed summaries into numbers (their exit status says nothing).

:func:`unavailable` tells, per client, why it cannot run here at all (a program or package
that is not installed); only then is a cell skipped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from testkit import coturn as coturn_tools
from testkit.coturn import EchoPeer, UclientError, UclientReport
from tests.interop.aioice_peer import Collect, echo_peer
from tests.interop.matrix_plan import Cell
from tests.interop.matrix_turnd import MatrixTurnd

#: Messages each cell sends through the relay, and their size in bytes.
MESSAGES = 50
SIZE = 100

#: A WebRTC step (data channel open, all echoes back) or one aioice echo that takes longer than
#: this has failed: a safety net so a broken relay ends the cell instead of hanging it.
STEP_TIMEOUT = 20.0

#: The Node.js drivers: per cell at most two steps, plus browser start-up.
DRIVER_STARTUP = 60.0

JS_DIR = Path(__file__).resolve().parent / "js"

#: Environment variable naming the Chromium binary (default: chromium on PATH, as Debian ships).
CHROMIUM_ENV = "TURND_CHROMIUM"


@attrs.frozen
class Job:
    """One cell's inputs."""

    cell: Cell
    port: int
    username: str
    #: The password, or for turnutils_uclient's own REST computation (``-W``) the shared secret.
    password: str
    #: turnutils_uclient computes the REST credential itself from ``password`` as secret.
    client_computes_rest: bool = False


@attrs.frozen
class ClientReport:
    """What one client reported for one cell."""

    #: Messages (or Binding requests) the client sent through turnd, and the answers it counted.
    sent: int
    received: int
    #: What a clean run sends and gets back.
    expected: int
    #: Payload bytes that must have crossed turnd towards the peers and back towards the
    #: client(s); None when turnd does not count them (spliced RFC 6062 connections, Binding).
    bytes_out: int | None = None
    bytes_in: int | None = None
    #: Whether turnd must have given IPv6 relays (turnutils_uclient -x) or IPv4 ones (every
    #: other client asks for the default family); None: do not check.
    relay_ipv6: bool | None = False
    #: A short account for the table's notes ("relay/tls on both sides", "0 lost").
    detail: str = ""
    #: What the client itself says went wrong; None when its numbers are whole.
    problem: str | None = None
    #: 2 when the first attempt's data channel never opened (see _run_echo_driver), with what
    #: went wrong then.
    attempts: int = 1
    first_problem: str | None = None


def failed(problem: str) -> ClientReport:
    """A report for a client that produced no numbers."""
    return ClientReport(sent=0, received=0, expected=MESSAGES, problem=problem)


# --------------------------------------------------------------------------------------------
# What is installed


def chromium_path() -> str | None:
    explicit = os.environ.get(CHROMIUM_ENV)
    if explicit:
        return explicit
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _npm_missing(package: str) -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (Debian package nodejs)"
    if not (JS_DIR / "node_modules" / package / "package.json").exists():
        return f"npm package {package} missing in {JS_DIR} (scripts/test runs npm ci there)"
    return None


def unavailable(client: str) -> str | None:
    """Why ``client`` (a ``Client.key``) cannot run on this machine, or None."""
    if client == "chromium":
        path = chromium_path()
        if path is None:
            return "Chromium is not installed (Debian package chromium; scripts/test installs it)"
        if not os.access(path, os.X_OK):
            return f"${CHROMIUM_ENV} names {path}, which is not an executable program"
        return _npm_missing("playwright-core")
    if client == "werift":
        return _npm_missing("werift")
    if client == "aioice":
        try:
            import aioice.turn  # noqa: F401
        except ImportError:
            return "aioice is not installed (pip install -e .[test])"
        return None
    needed: tuple[str, ...]
    if client.startswith("uclient"):
        needed = (coturn_tools.UCLIENT, coturn_tools.PEER)
    else:
        needed = (coturn_tools.STUNCLIENT,)
    if coturn_tools.missing_tools(*needed):
        return coturn_tools.skip_reason(*needed)
    return None


# --------------------------------------------------------------------------------------------
# Chromium and werift: the shared data-channel echo


def _js_cells(turnd: MatrixTurnd, jobs: Sequence[Job]) -> list[dict[str, Any]]:
    return [
        {
            "id": job.cell.id,
            "iceServer": {
                "urls": [job.cell.link.ice_url(job.port)],
                "username": job.username,
                "credential": job.password,
            },
            "messages": MESSAGES,
            "size": SIZE,
            "timeoutMs": int(STEP_TIMEOUT * 1000),
        }
        for job in jobs
    ]


def _run_node(script: str, job: dict[str, Any], cells: int) -> tuple[dict[str, Any], str]:
    """Run a driver, return its per-cell results by id and whatever it wrote to stderr."""
    try:
        done = subprocess.run(
            ["node", script],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            cwd=JS_DIR,
            timeout=DRIVER_STARTUP + cells * 2 * STEP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return {"fatal": f"{script} did not finish within {exc.timeout} s"}, ""
    results: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if "fatal" in entry:
                results["fatal"] = entry["fatal"]
            else:
                results[entry["id"]] = entry
    if done.returncode != 0 and "fatal" not in results:
        results["fatal"] = f"{script} exited with status {done.returncode}"
    return results, done.stderr.strip()


def _echo_report(job: Job, result: dict[str, Any], protocol_known: bool) -> ClientReport:
    """Read echo.mjs's numbers: every message answered and echoed back byte-exact, in order,
    and both peer connections on a relay candidate (of the cell's protocol, where the stack
    reports it)."""
    sent, echoed, answered = (
        result.get("sent", 0),
        result.get("echoed", 0),
        result.get("answered", 0),
    )
    protocols = list(result.get("relayProtocols", []))
    detail = f"{answered} answered, {echoed} echoed; selected candidates {protocols or '?'}"
    if result.get("candidateErrors"):  # e.g. one of several networks could not reach turnd
        detail += "; ICE candidate errors: " + "; ".join(result["candidateErrors"])
    report = ClientReport(
        sent=sent,
        received=echoed,
        expected=MESSAGES,
        # Offerer to answerer and the echoes back: each crosses both relays once.
        bytes_out=result.get("bytesSent", 0) + answered * SIZE,
        bytes_in=answered * SIZE + result.get("bytesEchoed", 0),
        detail=detail,
    )
    problems = []
    if result.get("error"):
        problems.append(str(result["error"]))
    if not (sent == answered == echoed == MESSAGES):
        problems.append(f"sent {sent}, answered {answered}, echoed {echoed} of {MESSAGES}")
    if result.get("outOfOrder"):
        problems.append(f"{result['outOfOrder']} echoes out of order or altered")
    if result.get("bytesEchoed") != MESSAGES * SIZE:
        problems.append(f"{result.get('bytesEchoed')} of {MESSAGES * SIZE} bytes echoed intact")
    kinds = {p.split("/")[0] for p in protocols}
    if protocol_known and protocols != [f"relay/{job.cell.link.kind}"] * 2:
        problems.append(
            f"selected local candidates {protocols}, expected relay/{job.cell.link.kind}"
        )
    elif protocols and kinds != {"relay"}:
        problems.append(f"selected local candidates {protocols}, expected relay")
    return attrs.evolve(report, problem="; ".join(problems) or None)


def _echo_pass(
    script: str, turnd: MatrixTurnd, jobs: Sequence[Job], extra: dict[str, Any], known: bool
) -> dict[str, tuple[ClientReport, bool]]:
    """One driver run: per cell its report and whether the data channel opened."""
    results, stderr = _run_node(script, {**extra, "cells": _js_cells(turnd, jobs)}, len(jobs))
    reports = {}
    for job in jobs:
        result = results.get(job.cell.id)
        if result is None:
            why = results.get("fatal", f"{script} printed nothing for this cell")
            report = failed(f"{why}; stderr: {stderr[-500:] or '<nothing>'}")
            reports[job.cell.id] = (report, True)  # the driver broke: no second attempt
        else:
            reports[job.cell.id] = (_echo_report(job, result, known), bool(result.get("opened")))
    return reports


def _run_echo_driver(
    script: str, turnd: MatrixTurnd, jobs: Sequence[Job], extra: dict[str, Any], known: bool
) -> dict[str, ClientReport]:
    """Run the cells; those whose data channel never opened get one more attempt.

    A WebRTC stack can wedge its own handshake: werift, rarely and only under load, leaves the
    DTLS server silent while turnd delivers every ClientHello retransmission (turnd's books show
    each side's bytes arriving whole at the other). The second attempt is reported, never
    hidden: the report keeps the first attempt's problem and the table marks the cell.
    """
    first = _echo_pass(script, turnd, jobs, extra, known)
    reports = {cell_id: report for cell_id, (report, _) in first.items()}
    again = [job for job in jobs if not first[job.cell.id][1]]
    if again:
        second = _echo_pass(script, turnd, again, extra, known)
        for job in again:
            problem = reports[job.cell.id].problem
            reports[job.cell.id] = attrs.evolve(
                second[job.cell.id][0], attempts=2, first_problem=problem
            )
    return reports


def run_chromium(turnd: MatrixTurnd, jobs: Sequence[Job]) -> dict[str, ClientReport]:
    """All Chromium cells in one headless browser, one page each."""
    extra = {"executable": chromium_path(), "spki": turnd.spki}
    return _run_echo_driver("chromium_relay.mjs", turnd, jobs, extra, known=True)


def run_werift(turnd: MatrixTurnd, jobs: Sequence[Job]) -> dict[str, ClientReport]:
    """All werift cells in one Node.js process, TLS verified against turnd's certificate."""
    extra = {"ca": str(turnd.cert)}
    return _run_echo_driver("werift_relay.mjs", turnd, jobs, extra, known=False)


# --------------------------------------------------------------------------------------------
# aioice


async def _aioice_cell(turnd: MatrixTurnd, job: Job) -> ClientReport:
    from aioice import turn

    link = job.cell.link
    context = ssl.create_default_context(cafile=str(turnd.cert)) if link.kind == "tls" else None
    sent = received = intact = 0
    async with echo_peer() as peer:
        try:
            relay, protocol = await turn.create_turn_endpoint(
                Collect,
                (link.host, job.port),
                job.username,
                job.password,
                transport="udp" if link.kind == "udp" else "tcp",
                ssl=context,
            )
            try:
                relayed = relay.get_extra_info("sockname")
                for i in range(MESSAGES):
                    payload = f"m{i}:".encode().ljust(SIZE, b"x")
                    relay.sendto(payload, peer)
                    sent += 1
                    answer, _ = await asyncio.wait_for(protocol.received.get(), STEP_TIMEOUT)
                    received += 1
                    intact += answer == payload
            finally:
                await protocol.close(relay, STEP_TIMEOUT)
        except Exception as exc:  # aioice raises its own types and plain ones alike
            failure = failed(f"{type(exc).__name__}: {exc}")
            return attrs.evolve(failure, sent=sent, received=received)
    problem = None
    if not (sent == received == intact == MESSAGES):
        problem = f"sent {sent}, echoed {received}, intact {intact} of {MESSAGES}"
    return ClientReport(
        sent=sent,
        received=received,
        expected=MESSAGES,
        bytes_out=sent * SIZE,
        bytes_in=intact * SIZE,
        detail=f"relayed address {relayed[0]}:{relayed[1]}",
        problem=problem,
    )


def run_aioice(turnd: MatrixTurnd, jobs: Sequence[Job]) -> dict[str, ClientReport]:
    """Each cell in turn on one event loop."""

    async def all_cells() -> dict[str, ClientReport]:
        return {job.cell.id: await _aioice_cell(turnd, job) for job in jobs}

    return asyncio.run(all_cells())


# --------------------------------------------------------------------------------------------
# coturn's clients


def _uclient_report(job: Job, report: UclientReport, sessions: int) -> ClientReport:
    expected = sessions * MESSAGES
    tcp_relay = job.cell.client == "uclient-tcp-relay"
    problems = []
    if report.sent_packets != expected:
        problems.append(f"sent {report.sent_packets} of {expected} messages")
    if report.received_packets != report.sent_packets:
        problems.append(f"received {report.received_packets} of {report.sent_packets}")
    if report.lost_packets or report.send_dropped:
        problems.append(f"lost {report.lost_packets}, send dropped {report.send_dropped}")
    if report.sent_bytes != report.received_bytes or report.sent_bytes != expected * SIZE:
        problems.append(f"bytes sent {report.sent_bytes}, received {report.received_bytes}")
    return ClientReport(
        sent=report.sent_packets,
        received=report.received_packets,
        expected=expected,
        bytes_out=None if tcp_relay else report.sent_bytes,
        bytes_in=None if tcp_relay else report.received_bytes,
        relay_ipv6=job.cell.link.ipv6,
        detail=(
            f"{sessions} sessions, lost {report.lost_packets} ({report.lost_percent:g} %)"
            + (", turnd does not count spliced RFC 6062 bytes" if tcp_relay else "")
        ),
        problem="; ".join(problems) or None,
    )


def run_uclient(job: Job, peer: EchoPeer) -> ClientReport:
    """One turnutils_uclient run; over IPv6 it asks for an IPv6 relay (-x) and an IPv6 peer."""
    link = job.cell.link
    tcp_relay = job.cell.client == "uclient-tcp-relay"
    peer_host = "::1" if link.ipv6 else "127.0.0.1"
    try:
        report = coturn_tools.run_uclient(
            link.host,
            job.port,
            None if tcp_relay else peer_host,
            None if tcp_relay else peer.port,
            user=job.username,
            messages=MESSAGES,
            length=SIZE,
            tcp=link.kind == "tcp",
            tls=link.kind == "tls",
            tcp_relay=tcp_relay,
            send_indications=job.cell.client == "uclient-send",
            ipv6=link.ipv6,
            password=None if job.client_computes_rest else job.password,
            secret=job.password if job.client_computes_rest else None,
        )
    except UclientError as exc:
        return failed(str(exc).splitlines()[0])
    return _uclient_report(job, report, coturn_tools.uclient_sessions(1, tcp_relay=tcp_relay))


def run_stunclient(job: Job) -> ClientReport:
    """One Binding request; the reflexive address must be the client's own loopback address."""
    host = job.cell.link.host
    try:
        report = coturn_tools.run_stunclient(host, job.port)
    except coturn_tools.StunClientError as exc:
        return attrs.evolve(failed(str(exc).splitlines()[0]), expected=1)
    mapped = report.mapped
    problem = None
    if ipaddress.ip_address(mapped.host) != ipaddress.ip_address(host):
        problem = f"reflexive address {mapped} is not the client's {host}"
    return ClientReport(
        sent=1,
        received=1,
        expected=1,
        relay_ipv6=None,
        detail=f"reflexive address {mapped}",
        problem=problem,
    )
