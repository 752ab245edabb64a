"""A RESERVATION-TOKEN redeemed on another worker (turnd.workers.pins): the client whose flow
the selector sends to worker 1 redeems a port worker 0 reserved, gets it, and relays through
it; its datagrams go on to worker 0, which answers from the same listener address. The pin
survives an upgrade of both workers and ends with the allocation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stun import attributes as at
from stun.addresses import Address
from testkit.client import error_code
from testkit.daemon import Daemon, start_turnd
from testkit.sync import EchoPeer, TurnClient
from tests.workers.nodes import CHANNEL, RELAY, WORKERS, client_on, echoed
from tests.workers.test_upgrade import turnctl

UDP = at.RequestedTransport(17)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Daemon]:
    daemon = start_turnd(
        tmp_path, RELAY, env={"TURND_SERVER_WORKERS": str(WORKERS)}, ready="workers.ready"
    )
    yield daemon
    assert daemon.stop() == 0


def reserve_on_0_redeem_on_1(
    node: Daemon, clients: list[TurnClient], peer: EchoPeer
) -> tuple[TurnClient, TurnClient]:
    rtp, rtcp = client_on(node, 0, clients), client_on(node, 1, clients)
    answer = rtp.allocate(UDP, at.EvenPort(reserve=True))
    assert error_code(answer) is None
    token = answer.get(at.ReservationToken)
    assert token is not None and token.token[:2] == b"\x00\x00"  # worker 0's
    assert rtp.relay is not None and rtp.relay.port % 2 == 0
    assert error_code(rtcp.allocate(UDP, token)) is None
    assert rtcp.relay == Address(rtp.relay.host, rtp.relay.port + 1)
    for client in (rtp, rtcp):
        assert error_code(client.channel_bind(CHANNEL, peer.address)) is None
    return rtp, rtcp


def worker_of(node: Daemon, client: TurnClient) -> int:
    [alloc] = [
        a for a in turnctl(node, "allocations", "list") if a["client"] == str(client.address)
    ]
    return int(alloc["worker"])


def test_a_port_reserved_on_one_worker_is_redeemed_from_a_flow_of_another(
    node: Daemon, clients: list[TurnClient]
) -> None:
    with EchoPeer() as peer:
        rtp, rtcp = reserve_on_0_redeem_on_1(node, clients, peer)
        assert worker_of(node, rtcp) == 0  # the worker of the reserved port holds it
        for number in range(20):
            assert echoed(rtcp, b"rtcp %d" % number)
            assert echoed(rtp, b"rtp %d" % number)
        assert error_code(rtcp.refresh()) is None
        scrape = node.scrape()
        assert scrape[("turnd_events_total", (("event", "workers.pinned"),))] == 1
        # Both Allocates (the 401 and the signed one), the ChannelBind and the Refresh at least;
        # the ChannelData too, unless worker 0's kernel fast path relayed it before any socket.
        assert scrape[("turnd_events_total", (("event", "workers.forwarded"),))] >= 4

        turnctl(node, "upgrade")  # both workers replaced: the pin and the allocation move
        assert worker_of(node, rtcp) == 0
        assert echoed(rtcp, b"after the upgrade")
        assert error_code(rtcp.refresh()) is None

        assert error_code(rtcp.refresh(0)) is None
        assert error_code(rtcp.refresh()) == 437  # gone; this ends the pin (test_pin_entry)
        # A fresh allocation lands on worker 1 once the pin's end is back there, or on worker 0
        # if it went out before: either way the flow and its allocation are on one worker.
        assert error_code(rtcp.allocate()) is None
        assert error_code(rtcp.channel_bind(CHANNEL, peer.address)) is None
        assert echoed(rtcp, b"a fresh allocation")


def test_a_token_naming_no_worker_gets_508(node: Daemon, clients: list[TurnClient]) -> None:
    client = client_on(node, 1, clients)
    made_up = at.ReservationToken(b"\x00\x07" + bytes(6))  # slot 7 of a node of 2
    assert error_code(client.allocate(UDP, made_up)) == 508
    other = at.ReservationToken(b"\x00\x00" + bytes(6))  # worker 0's form, but never handed out
    assert error_code(client.allocate(UDP, other)) == 508


def test_tokens_of_both_workers_from_one_flow_do_not_bounce_between_them(
    node: Daemon, clients: list[TurnClient]
) -> None:
    """Worker 1 pins the flow to worker 0 (a token of 0's); the flow then sends a token of 1's.
    Worker 0 serves what is forwarded to it in its own core (508: no such reservation), and
    never forwards it back: each datagram crosses once."""
    client = client_on(node, 1, clients)
    for slot in (0, 1, 0, 1):
        token = at.ReservationToken(slot.to_bytes(2, "big") + bytes(6))
        assert error_code(client.allocate(UDP, token)) == 508
    forwarded = node.scrape()[("turnd_events_total", (("event", "workers.forwarded"),))]
    assert 4 <= forwarded <= 8  # each Allocate (and its 401) once, not back and forth
