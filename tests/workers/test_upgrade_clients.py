"""Real clients through an upgrade in place: coturn's turnutils_uclient and werift (a WebRTC stack
in Node.js, relay-only, as a browser would) relay while every worker is replaced, and none of what
they sent is lost. uclient counts its own echoes; werift's data channel resends nothing
(maxRetransmits 0), so a datagram the relay lost would be a message missing. The hand-off window
each run saw is printed (pytest -s shows it)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.coturn import (
    PEER,
    UCLIENT,
    UclientReport,
    assert_lossless,
    needs_tools,
    run_uclient,
    start_peer,
    uclient_sessions,
)
from testkit.daemon import PASSWORD, USER, Daemon, start_turnd
from testkit.sync import wait_until
from tests.interop.matrix_clients import JS_DIR, unavailable
from tests.workers.nodes import RELAY, WORKERS
from tests.workers.test_upgrade import turnctl

#: uclient: 4 clients (8 sessions, RTP and RTCP), each sending one message every 20 ms for 8 s,
#: so that every session is sending while the workers are replaced (each starts 1-6 s late).
CLIENTS, MESSAGES, LENGTH = 4, 400, 120

#: werift: one message every 10 ms for 6 s, both ways through two relays.
WERIFT_MESSAGES, WERIFT_SIZE, WERIFT_INTERVAL_MS = 600, 200, 10


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Daemon]:
    daemon = start_turnd(
        tmp_path,
        RELAY,
        listen='["udp:0"]',
        env={"TURND_SERVER_WORKERS": str(WORKERS)},
        ready="workers.ready",
    )
    yield daemon
    assert daemon.stop() == 0


def relaying_allocations(daemon: Daemon, count: int) -> bool:
    """``count`` allocations at least have relayed something (uclient also makes two that
    never relay)."""
    allocations = turnctl(daemon, "allocations", "list")
    return sum(a["packets_to_peer"] > 0 for a in allocations) >= count


def upgrade_while(daemon: Daemon, allocations: int, run: threading.Thread) -> list[dict[str, Any]]:
    """Once ``allocations`` relay, upgrade every worker, and wait for ``run`` to end."""
    run.start()
    try:
        assert wait_until(lambda: relaying_allocations(daemon, allocations), timeout=30.0)
        upgraded: list[dict[str, Any]] = turnctl(daemon, "upgrade")["workers"]
    finally:
        run.join()
    assert sum(w["moved"] for w in upgraded) >= allocations, upgraded
    windows = ", ".join(f"worker {w['slot']} {w['window_ms']} ms" for w in upgraded)
    print(f"hand-off windows: {windows}; moved {[w['moved'] for w in upgraded]}")
    return upgraded


@needs_tools(UCLIENT, PEER)
def test_uclient_loses_nothing_across_an_upgrade(node: Daemon) -> None:
    reports: list[UclientReport] = []
    sessions = uclient_sessions(CLIENTS)

    def relay() -> None:
        reports.append(
            run_uclient(
                "127.0.0.1",
                node.port,
                "127.0.0.1",
                peer.port,
                user=USER,
                password=PASSWORD,
                clients=CLIENTS,
                messages=MESSAGES,
                length=LENGTH,
            )
        )

    with start_peer(("127.0.0.1",)) as peer:
        upgrade_while(node, sessions, threading.Thread(target=relay))
    [report] = reports
    assert_lossless(report, sessions, MESSAGES, LENGTH)


def test_a_webrtc_client_loses_nothing_across_an_upgrade(node: Daemon) -> None:
    if (why := unavailable("werift")) is not None:
        pytest.skip(why)
    cell = {
        "id": "upgrade",
        "iceServer": {
            "urls": [f"turn:127.0.0.1:{node.port}?transport=udp"],
            "username": USER,
            "credential": PASSWORD,
        },
        "messages": WERIFT_MESSAGES,
        "size": WERIFT_SIZE,
        "intervalMs": WERIFT_INTERVAL_MS,
        "unreliable": True,
        "timeoutMs": 30_000,
    }
    done: list[subprocess.CompletedProcess[str]] = []

    def relay() -> None:
        done.append(
            subprocess.run(
                ["node", "werift_relay.mjs"],
                input=json.dumps({"cells": [cell]}),
                capture_output=True,
                text=True,
                cwd=JS_DIR,
                timeout=120,
                check=False,
            )
        )

    # Two peer connections, each on its own relay: two allocations (werift's own refreshes and
    # permissions go on through the upgrade).
    upgrade_while(node, 2, threading.Thread(target=relay))
    [finished] = done
    lines = [json.loads(line) for line in finished.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, f"werift printed {finished.stdout!r}, stderr {finished.stderr[-500:]}"
    result = lines[0]
    assert result["error"] is None, result
    assert result["sent"] == result["answered"] == result["echoed"] == WERIFT_MESSAGES, result
    assert result["outOfOrder"] == 0, result
    assert result["bytesEchoed"] == WERIFT_MESSAGES * WERIFT_SIZE, result
