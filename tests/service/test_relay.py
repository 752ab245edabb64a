"""End to end through a real turnd over UDP: allocate, permission, Send/Data, channels."""

from __future__ import annotations

from stun import attributes as at
from stun.addresses import Address
from testkit.daemon import Daemon
from testkit.sync import ChannelData, DataIndication, EchoPeer, error_code, wait_until
from tests.service.conftest import ClientFactory

CHANNEL = 0x4000
#: Payload sizes around the 4-byte padding boundary, plus one every byte value fits in.
PAYLOAD_SIZES = (1, 2, 3, 4, 5, 7, 8, 255, 256, 1200)


def payloads(tag: int) -> list[bytes]:
    """Byte strings of the sizes above, using every byte value (NULs and 0xFF included)."""
    return [bytes((tag + i) % 256 for i in range(size)) for size in PAYLOAD_SIZES]


def test_send_indication_reaches_peer_and_echo_returns_as_data_indication(
    daemon: Daemon, make_client: ClientFactory, echo_peer: EchoPeer
) -> None:
    """Send indications leave from the relayed address and the peer's answers come back as
    Data indications naming the peer, every payload byte-exact (RFC 8656 §10)."""
    client = make_client(daemon)
    assert error_code(client.allocate()) is None
    assert client.relay is not None and client.relay.host == "127.0.0.1"
    assert error_code(client.create_permission(echo_peer.address)) is None
    sent = payloads(1)
    back = []
    for payload in sent:
        client.send_indication(echo_peer.address, payload)
        back.append(client.receive())
    assert back == [DataIndication(echo_peer.address, p) for p in sent]
    assert [data for data, _ in echo_peer.received] == sent
    assert {source for _, source in echo_peer.received} == {client.relay}


def test_channel_data_relays_both_ways_byte_exact(
    daemon: Daemon, make_client: ClientFactory, echo_peer: EchoPeer
) -> None:
    """After ChannelBind, ChannelData reaches the peer as plain UDP and the peer's answers come
    back as ChannelData on the same channel, byte-exact (RFC 8656 §12.4, §12.5)."""
    client = make_client(daemon)
    assert error_code(client.allocate()) is None
    assert error_code(client.channel_bind(CHANNEL, echo_peer.address)) is None
    sent = payloads(7)
    back = []
    for payload in sent:
        client.send_channel_data(CHANNEL, payload)
        back.append(client.receive())
    assert back == [ChannelData(CHANNEL, p) for p in sent]
    assert echo_peer.received == [(p, client.relay) for p in sent]


def test_send_indication_then_channel_switches_peer_traffic_to_channel_data(
    daemon: Daemon, make_client: ClientFactory, echo_peer: EchoPeer
) -> None:
    """The peer's traffic arrives as Data indications until a channel is bound, then as
    ChannelData (RFC 8656 §12.6: the server uses the channel once it exists)."""
    client = make_client(daemon)
    assert error_code(client.allocate()) is None
    assert error_code(client.create_permission(echo_peer.address)) is None
    client.send_indication(echo_peer.address, b"before")
    assert client.receive() == DataIndication(echo_peer.address, b"before")
    assert error_code(client.channel_bind(CHANNEL, echo_peer.address)) is None
    client.send_indication(echo_peer.address, b"after")
    assert client.receive() == ChannelData(CHANNEL, b"after")


def test_peer_without_permission_is_not_relayed(
    daemon: Daemon, make_client: ClientFactory, echo_peer: EchoPeer
) -> None:
    """A Send indication to a peer with no permission is dropped (RFC 8656 §10.2); a
    permitted peer on the same allocation still gets through."""
    client = make_client(daemon)
    assert error_code(client.allocate()) is None
    with EchoPeer() as stranger:
        client.send_indication(stranger.address, b"not allowed")
        assert error_code(client.create_permission(echo_peer.address)) is None
        client.send_indication(echo_peer.address, b"allowed")
        assert client.receive() == DataIndication(echo_peer.address, b"allowed")
        assert stranger.received == []


def test_refresh_keeps_and_zero_lifetime_deletes_the_allocation(
    daemon: Daemon, make_client: ClientFactory
) -> None:
    """Refresh answers with the granted LIFETIME; LIFETIME 0 deletes the allocation, after
    which a Refresh is 437 Allocation Mismatch (RFC 8656 §7.3, §8)."""
    client = make_client(daemon)
    assert error_code(client.allocate()) is None
    refreshed = client.refresh(1200)
    assert error_code(refreshed) is None
    lifetime = refreshed.get(at.Lifetime)
    assert lifetime is not None and lifetime.seconds == 1200
    assert error_code(client.refresh(0)) is None
    assert error_code(client.refresh()) == 437


def test_allocation_is_answered_with_mapped_and_relayed_addresses(
    daemon: Daemon, make_client: ClientFactory
) -> None:
    """A successful Allocate carries XOR-MAPPED-ADDRESS (the client as the server saw it) and a
    loopback XOR-RELAYED-ADDRESS (RFC 8656 §7.3)."""
    client = make_client(daemon)
    reply = client.allocate()
    mapped = reply.get(at.XorMappedAddress)
    assert mapped is not None and mapped.address == client.address
    assert client.relay is not None and client.relay != Address(daemon.host, daemon.port)


def test_events_are_logged_for_allocations(daemon: Daemon, make_client: ClientFactory) -> None:
    """Deleting an allocation is logged as ``allocation.ended`` with its user and relay."""
    client = make_client(daemon)
    assert error_code(client.allocate()) is None
    relay = str(client.relay)
    assert error_code(client.refresh(0)) is None

    def logged() -> bool:
        return any(
            e.get("event") == "allocation.ended" and e.get("relay") == relay
            for e in daemon.log_events()
        )

    assert wait_until(logged)
