"""TCP, TLS, RFC 6062 TCP relays and IPv6 relays, driven by clients nobody here wrote.

coturn's turnutils_uclient over TCP (-t), TLS (-t -S) and with TCP relay allocations (-T), and
an IPv6 relay exercised end to end on ::1 (-x); aioice's TURN client over TCP and over TLS with
the self-signed certificate turnd generated (verified, not ignored). Every uclient run must relay
every packet and every byte.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncio_dgram
import pytest

from tests.daemon import PASSWORD, USER, Daemon, start_turnd
from tests.interop.coturn_tools import (
    PEER,
    UCLIENT,
    EchoPeer,
    UclientReport,
    needs_tools,
    run_uclient,
    start_peer,
    uclient_sessions,
)
from tests.interop.coturn_tools import (
    assert_lossless as check_lossless,
)

pytestmark = pytest.mark.interop

MESSAGES = 30
LENGTH = 120
WAIT = 10.0
uclient_needed = needs_tools(UCLIENT, PEER)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """turnd on 127.0.0.1 and ::1, UDP, TCP and TLS, with an IPv6 relay address."""
    running = start_turnd(
        tmp_path_factory.mktemp("turnd"),
        '[relay]\naddress6 = "::1"\n',
        listen='["udp:0", "tcp:0", "tls:0"]',
        addresses='["127.0.0.1", "::1"]',
    )
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def peer() -> Iterator[EchoPeer]:
    with start_peer(("127.0.0.1", "::1")) as echo:
        yield echo


def assert_lossless(report: UclientReport, sessions: int) -> None:
    """Every packet and byte of every session came back."""
    check_lossless(report, sessions, MESSAGES, LENGTH)


@uclient_needed
def test_uclient_over_tcp(daemon: Daemon, peer: EchoPeer) -> None:
    """UDP relaying for a client that reaches turnd over TCP (RFC 8656 §3.1): 0 lost."""
    report = run_uclient(
        "127.0.0.1", daemon.ports["tcp"][0], "127.0.0.1", peer.port,
        user=USER, password=PASSWORD, messages=MESSAGES, length=LENGTH, tcp=True,
    )  # fmt: skip
    assert_lossless(report, uclient_sessions(1))


@uclient_needed
def test_uclient_over_tls(daemon: Daemon, peer: EchoPeer) -> None:
    """The same over TLS (uclient settles on TLS 1.2): 0 lost."""
    report = run_uclient(
        "127.0.0.1", daemon.ports["tls"][0], "127.0.0.1", peer.port,
        user=USER, password=PASSWORD, messages=MESSAGES, length=LENGTH, tls=True,
    )  # fmt: skip
    assert_lossless(report, uclient_sessions(1))


@uclient_needed
def test_uclient_tcp_relay_allocations(daemon: Daemon) -> None:
    """RFC 6062: TCP allocations, Connect, ConnectionAttempt, ConnectionBind, spliced data."""
    report = run_uclient(
        "127.0.0.1", daemon.ports["tcp"][0], None, None,
        user=USER, password=PASSWORD, messages=MESSAGES, length=LENGTH, tcp_relay=True,
    )  # fmt: skip
    assert_lossless(report, uclient_sessions(1, tcp_relay=True))


@uclient_needed
def test_uclient_ipv6_relay_on_loopback(daemon: Daemon, peer: EchoPeer) -> None:
    """REQUESTED-ADDRESS-FAMILY IPv6 (-x): an IPv6 relay on ::1 relays to an IPv6 peer."""
    report = run_uclient(
        "::1", daemon.ports["udp"][1], "::1", peer.port,
        user=USER, password=PASSWORD, messages=MESSAGES, length=LENGTH, ipv6=True,
    )  # fmt: skip
    assert_lossless(report, uclient_sessions(1))


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()  # aioice deleted the allocation and closed its socket

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait(data)


async def _aioice_round_trips(
    daemon: Daemon, transport: str, port: int, context: ssl.SSLContext | None
) -> list[bytes]:
    turn = pytest.importorskip("aioice.turn")
    echo = await asyncio_dgram.bind(("127.0.0.1", 0))

    async def serve() -> None:
        while True:
            data, addr = await echo.recv()
            await echo.send(data, addr)

    task = asyncio.create_task(serve())
    relay, protocol = await turn.create_turn_endpoint(
        _Collect, ("127.0.0.1", port), USER, PASSWORD, transport=transport, ssl=context
    )
    try:
        answers = []
        for i in range(10):
            relay.sendto(f"over {transport} #{i}".encode(), echo.sockname)
            answers.append(await asyncio.wait_for(protocol.received.get(), WAIT))
        return answers
    finally:
        relay.close()
        # close() only starts a task; returning now would leave aioice's socket open.
        await asyncio.wait_for(protocol.closed.wait(), WAIT)
        task.cancel()
        echo.close()


def test_aioice_over_tcp(daemon: Daemon) -> None:
    """aioice's TURN client over a TCP control connection relays every datagram."""
    answers = asyncio.run(_aioice_round_trips(daemon, "tcp", daemon.ports["tcp"][0], None))
    assert answers == [f"over tcp #{i}".encode() for i in range(10)]


def test_aioice_over_tls_verifies_the_generated_certificate(daemon: Daemon) -> None:
    """Over TLS, with turnd's self-signed certificate as the trust anchor (SAN has 127.0.0.1)."""
    cert = Path(daemon.config_path).parent / "state" / "tls" / "cert.pem"
    context = ssl.create_default_context(cafile=str(cert))
    answers = asyncio.run(_aioice_round_trips(daemon, "tcp", daemon.ports["tls"][0], context))
    assert answers == [f"over tcp #{i}".encode() for i in range(10)]
