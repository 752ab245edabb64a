"""Issue 20 item 2, DESIGN.md "Security defaults": with listeners on a wildcard address (the
default ``server.addresses = ["0.0.0.0"]``), turnd's own listener ports are no peers on any
address the host accepts as its own — loopback allowed as peers or not — so a client cannot
point the relay at turnd itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stun.addresses import Address
from testkit.daemon import Daemon, start_turnd
from testkit.sync import EchoPeer, error_code
from tests.service.conftest import ClientFactory
from tests.service.test_metrics_and_usage import scrape

DENIED_SENDS = ("turnd_drops_total", (("reason", "send_denied_peer"),))


@pytest.fixture(scope="module")
def wildcard_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """turnd on 0.0.0.0 (UDP and TCP), relaying from 127.0.0.1, loopback peers allowed."""
    running = start_turnd(
        tmp_path_factory.mktemp("wildcard"),
        '[relay]\naddress = "127.0.0.1"\n',
        listen='["udp:0", "tcp:0"]',
        addresses='["0.0.0.0"]',
    )
    yield running
    assert running.stop() == 0


def test_wildcard_listener_ports_are_refused_as_peers_on_every_local_address(
    wildcard_daemon: Daemon, make_client: ClientFactory, echo_peer: EchoPeer
) -> None:
    """ChannelBind to the UDP or TCP listener's port on 127.0.0.1, 127.0.0.2 or the relay
    address is 403; a real peer on loopback is still bound."""
    client = make_client(wildcard_daemon)
    assert error_code(client.allocate()) is None
    own_ports = wildcard_daemon.ports["udp"] + wildcard_daemon.ports["tcp"]
    channel = 0x4000
    for port in own_ports:
        for host in ("127.0.0.1", "127.0.0.2", "127.255.255.254"):
            assert error_code(client.channel_bind(channel, Address(host, port))) == 403, host
            channel += 1
    assert error_code(client.channel_bind(channel, echo_peer.address)) is None


def test_send_to_own_listener_is_not_relayed_after_a_refused_channel_bind(
    wildcard_daemon: Daemon, make_client: ClientFactory
) -> None:
    """Issue 20 item 1 end to end: after a refused ChannelBind to the listener, Send indications
    to it are dropped (counted as send_denied_peer), not relayed into turnd."""
    client = make_client(wildcard_daemon)
    assert error_code(client.allocate()) is None
    listener = Address("127.0.0.1", wildcard_daemon.ports["udp"][0])
    assert error_code(client.create_permission(listener)) is None
    assert error_code(client.channel_bind(0x4000, listener)) == 403
    before = scrape(wildcard_daemon).get(DENIED_SENDS, 0)
    for _ in range(3):
        client.send_indication(listener, b"loop")
    assert error_code(client.refresh()) is None  # the Sends were handled before this answer
    assert scrape(wildcard_daemon)[DENIED_SENDS] == before + 3
