"""RFC 8656 §10: Send and Data indications — relaying through a permission, and silent discards
(counted by reason) for everything else."""

from __future__ import annotations

from typing import Any

import pytest

from stun import attributes as at
from stun.addresses import Address, AddressFamily
from stun.message import Message, MessageClass, Method, decode, encode
from tests.core.harness import PEER, PEER2, SERVER, Client, World, core_settings, replies
from turnd.core.actions import SendToPeer, Transport


def send_indication(client: Client, *attributes: Any) -> list[Any]:
    message = Message(Method.SEND, MessageClass.INDICATION, client.new_txid(), attributes)
    return client.world.client_packet(client.five_tuple, encode(message))


def allocated(world: World, **kw: Any) -> Client:
    client = world.client(**kw)
    client.allocate()
    return client


def test_send_to_a_permitted_peer_is_relayed_from_the_relayed_address() -> None:
    """§10.2: Send to a permitted peer relays DATA from the relayed transport address."""
    world = World()
    alice = allocated(world)
    alice.create_permission(PEER)
    actions = send_indication(alice, at.XorPeerAddress(PEER), at.Data(b"payload"))
    assert actions == [SendToPeer(alice.relayed, PEER, b"payload")]
    alloc = world.server.allocations[alice.five_tuple]
    assert (alloc.packets_to_peer, alloc.bytes_to_peer) == (1, 7)


def test_send_without_a_permission_is_dropped_and_counted() -> None:
    """§10.2: with no permission for the peer's IP the Send indication is silently discarded."""
    world = World()
    alice = allocated(world)
    alice.create_permission(PEER)
    assert alice.send(PEER2, b"x") == []
    assert alice.last_actions == []
    assert world.server.stats["drop.send_no_permission"] == 1


def test_send_without_an_allocation_is_dropped() -> None:
    """§10.2: a Send indication on a 5-tuple without an allocation is discarded."""
    world = World()
    alice = world.client()
    assert alice.send(PEER, b"x") == []
    assert world.server.stats["drop.send_no_allocation"] == 1


@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param((at.XorPeerAddress(PEER),), id="no-data"),
        pytest.param((at.Data(b"x"),), id="no-peer"),
    ],
)
def test_send_missing_data_or_peer_is_dropped(attributes: tuple[Any, ...]) -> None:
    """§10.2: a Send indication lacking XOR-PEER-ADDRESS or DATA is discarded."""
    world = World()
    alice = allocated(world)
    alice.create_permission(PEER)
    assert send_indication(alice, *attributes) == []
    assert world.server.stats["drop.send_missing_attribute"] == 1


def test_send_with_an_unknown_comprehension_required_attribute_is_dropped() -> None:
    """RFC 8489 §6.3.2: an indication with an unknown required attribute is dropped."""
    world = World()
    alice = allocated(world)
    alice.create_permission(PEER)
    unknown = at.UnknownAttribute(0x0042, b"\x00\x00\x00\x00")
    assert send_indication(alice, at.XorPeerAddress(PEER), at.Data(b"x"), unknown) == []
    assert world.server.stats["drop.send_unknown_attribute"] == 1


def test_send_to_a_peer_of_the_other_family_is_dropped() -> None:
    """§10.2: a peer address of another family than the relayed address cannot be reached."""
    world = World()
    alice = allocated(world)
    alice.create_permission(PEER)
    assert alice.send(Address("2001:db8::9", 1), b"x") == []
    assert world.server.stats["drop.send_family_mismatch"] == 1


def test_send_to_the_servers_own_listener_is_dropped() -> None:
    """DESIGN.md: the server's own listener is never a peer, even with a permission for its IP."""
    world = World()
    alice = allocated(world)
    assert alice.create_permission(SERVER).get(at.ErrorCode) is None
    assert alice.send(SERVER, b"x") == []
    assert world.server.stats["drop.send_denied_peer"] == 1
    assert [o.peer for o in alice.send(Address(SERVER.host, 9), b"y")] == [Address(SERVER.host, 9)]


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_peer_data_without_a_channel_is_a_data_indication(transport: Transport) -> None:
    """§10.3: peer data without a channel reaches the client as a Data indication."""
    world = World()
    alice = allocated(world, transport=transport)
    alice.create_permission(PEER)
    actions = world.peer_packet(alice.relayed, PEER, b"from peer")
    [data] = replies(actions, alice.five_tuple)
    message = decode(data)
    assert (message.method, message.cls) == (Method.DATA, MessageClass.INDICATION)
    peer, payload = message.get(at.XorPeerAddress), message.get(at.Data)
    assert peer is not None and peer.address == PEER
    assert payload is not None and payload.value == b"from peer"
    assert not message.has(at.MessageIntegrity)
    alloc = world.server.allocations[alice.five_tuple]
    assert (alloc.packets_to_client, alloc.bytes_to_client) == (1, 9)


def test_data_indications_get_distinct_transaction_ids() -> None:
    """RFC 8489 §6: each indication is a new transaction with its own transaction id."""
    world = World()
    alice = allocated(world)
    alice.create_permission(PEER)
    indications = [world.peer_packet(alice.relayed, PEER, b"x") for _ in range(3)]
    ids = {decode(data).transaction_id for actions in indications for data in replies(actions)}
    assert len(ids) == 3


def test_peer_traffic_from_an_unpermitted_ip_is_dropped() -> None:
    """§10.3: a datagram from an IP without a permission is silently discarded."""
    world = World()
    alice = allocated(world)
    alice.create_permission(PEER)
    assert world.peer_packet(alice.relayed, PEER2, b"x") == []
    assert world.server.stats["drop.peer_no_permission"] == 1


def test_peer_traffic_to_a_relay_without_allocation_is_dropped() -> None:
    """§10.3: a datagram to a relayed address no allocation holds is discarded."""
    world = World()
    assert world.peer_packet(Address(SERVER.host, 50000), PEER, b"x") == []
    assert world.server.stats["drop.peer_no_allocation"] == 1


def test_ipv6_allocation_relays_both_ways() -> None:
    """§10.2, §10.3: relaying works the same way in an IPv6 allocation."""
    world = World(core_settings(relay_ipv6="2001:db8::1"))
    alice = world.client()
    alice.allocate(at.RequestedTransport(17), at.RequestedAddressFamily(AddressFamily.IPV6))
    peer = Address("2001:db8:77::1", 3000)
    alice.create_permission(peer)
    [out] = alice.send(peer, b"six")
    assert out.relay == alice.relayed and out.peer == peer


# --- the hot path agrees with the general path ------------------------------------------------


def _send_world(case: str) -> tuple[World, Client]:
    world = World(
        core_settings(relay_ipv6="2001:db8::1", new_peer_burst=2.0),
        deny=["198.51.100.8/32"],
    )
    alice = world.client()
    if case != "no allocation":
        alice.allocate()
    if case not in ("no allocation", "no permission"):
        alice.create_permission(PEER, PEER2 if case == "denied" else PEER)
    if case == "new peer rate":  # the burst of 2: the permission's IP, then one more peer
        send_indication(alice, at.XorPeerAddress(Address(PEER.host, 1)), at.Data(b"burst"))
    return world, alice


@pytest.mark.parametrize(
    ("case", "peer"),
    [
        ("relayed", PEER),
        ("no allocation", PEER),
        ("no permission", PEER),
        ("denied", Address("198.51.100.8", 40001)),
        ("family", Address("2001:db8::9", 5000)),
        ("new peer rate", Address(PEER.host, 2)),
    ],
)
@pytest.mark.parametrize("fingerprint", [False, True])
def test_send_route_decides_as_handle_client_does(
    case: str, peer: Address, fingerprint: bool
) -> None:
    """The adapter's hot path (send_route) relays, drops and counts exactly as handle_client."""
    data = encode(
        Message(
            Method.SEND,
            MessageClass.INDICATION,
            b"\x05" * 12,
            (at.XorPeerAddress(peer), at.Data(b"payload")),
        ),
        fingerprint=fingerprint,
    )
    slow_world, slow_alice = _send_world(case)
    fast_world, fast_alice = _send_world(case)
    actions = slow_world.server.handle_client(slow_alice.five_tuple, data, slow_world.now)
    route = fast_world.server.send_route(fast_alice.five_tuple, data, fast_world.now)
    assert route is not False
    assert actions == ([] if route is None else [SendToPeer(*route)])
    assert fast_world.server.stats == slow_world.server.stats
    if case == "relayed":
        assert route == (fast_alice.relayed, peer, b"payload")


def test_send_route_declines_what_is_not_a_plain_send() -> None:
    """A Send with another attribute goes down the general path (False), untouched."""
    world = World()
    alice = allocated(world)
    alice.create_permission(PEER)
    message = Message(
        Method.SEND,
        MessageClass.INDICATION,
        b"\x05" * 12,
        (at.XorPeerAddress(PEER), at.Data(b"x"), at.Software("odd")),
    )
    before = dict(world.server.stats)
    assert world.server.send_route(alice.five_tuple, encode(message), world.now) is False
    assert dict(world.server.stats) == before
