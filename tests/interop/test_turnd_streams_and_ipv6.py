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

import pytest

from testkit.coturn import (
    PEER,
    UCLIENT,
    EchoPeer,
    UclientReport,
    needs_tools,
    run_uclient,
    start_peer,
    uclient_sessions,
)
from testkit.coturn import (
    assert_lossless as check_lossless,
)
from testkit.daemon import PASSWORD, USER, Daemon, start_turnd
from tests.interop.aioice_peer import Collect, echo_peer

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


#: id -> (server host, listener transport, which of its ports, uclient options). Each run must
#: relay every packet and every byte.
UCLIENT_RUNS: dict[str, tuple[str, str, int, dict[str, bool]]] = {
    # UDP relaying for a client that reaches turnd over TCP (RFC 8656 §3.1).
    "over_tcp": ("127.0.0.1", "tcp", 0, {"tcp": True}),
    # The same over TLS (uclient settles on TLS 1.2).
    "over_tls": ("127.0.0.1", "tls", 0, {"tls": True}),
    # RFC 6062: TCP allocations, Connect, ConnectionAttempt, ConnectionBind, spliced data; the
    # relays talk to each other, no peer.
    "tcp_relay_allocations": ("127.0.0.1", "tcp", 0, {"tcp_relay": True}),
    # REQUESTED-ADDRESS-FAMILY IPv6 (-x): an IPv6 relay on ::1 relays to an IPv6 peer.
    "ipv6_relay_on_loopback": ("::1", "udp", 1, {"ipv6": True}),
}


@uclient_needed
@pytest.mark.parametrize("run", UCLIENT_RUNS)
def test_uclient_relays_every_packet(daemon: Daemon, peer: EchoPeer, run: str) -> None:
    """uclient over TCP, TLS, TCP relays and an IPv6 relay: 0 lost, bytes equal."""
    host, transport, index, options = UCLIENT_RUNS[run]
    tcp_relay = options.get("tcp_relay", False)
    report = run_uclient(
        host, daemon.ports[transport][index], None if tcp_relay else host,
        None if tcp_relay else peer.port,
        user=USER, password=PASSWORD, messages=MESSAGES, length=LENGTH, **options,
    )  # fmt: skip
    assert_lossless(report, uclient_sessions(1, tcp_relay=tcp_relay))


async def _aioice_round_trips(
    daemon: Daemon, transport: str, port: int, context: ssl.SSLContext | None
) -> list[bytes]:
    turn = pytest.importorskip("aioice.turn")
    async with echo_peer() as peer:
        relay, protocol = await turn.create_turn_endpoint(
            Collect, ("127.0.0.1", port), USER, PASSWORD, transport=transport, ssl=context
        )
        try:
            answers = []
            for i in range(10):
                relay.sendto(f"over {transport} #{i}".encode(), peer)
                data, _ = await asyncio.wait_for(protocol.received.get(), WAIT)
                answers.append(data)
            return answers
        finally:
            await protocol.close(relay, WAIT)


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
