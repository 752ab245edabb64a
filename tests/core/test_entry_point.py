"""The core's one entry point per datagram: ``client_message`` and ``peer_message`` decide, for
every kind of packet, exactly what the general inputs (``handle_client``, ``handle_peer``) decide,
answering relayed data and bare Binding requests with plain tuples and bytes (DESIGN.md "Hot
path exception") and everything else with actions, timers first."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stun import attributes as at
from stun.channeldata import frame_channel_data
from stun.message import Message, MessageClass, Method, encode
from tests.core.harness import PEER, PEER2, Client, World, as_actions
from turnd.core.actions import SendToClient, SendToPeer, Transport

CHANNEL = 0x4001


def _world(transport: Transport = Transport.UDP) -> tuple[World, Client]:
    """Alice allocated over ``transport``, a channel to PEER, a permission for PEER2."""
    world = World()
    alice = world.client(transport=transport)
    alice.allocate()
    alice.channel_bind(CHANNEL, PEER)
    alice.create_permission(PEER2)
    return world, alice


def _send(peer: object, extra: tuple[object, ...] = ()) -> bytes:
    attributes = (at.XorPeerAddress(peer), at.Data(b"payload"), *extra)  # type: ignore[arg-type]
    return encode(Message(Method.SEND, MessageClass.INDICATION, b"\x07" * 12, attributes))


def _binding() -> bytes:
    return encode(Message(Method.BINDING, MessageClass.REQUEST, b"\x09" * 12, ()))


#: Client messages, each built against a world from _world(): name -> bytes.
CLIENT_MESSAGES: dict[str, Callable[[Client], bytes]] = {
    "channel data": lambda c: frame_channel_data(CHANNEL, b"media"),
    "channel data, unbound channel": lambda c: frame_channel_data(0x4002, b"media"),
    "channel data, short": lambda c: b"\x40\x01\x00\x10abc",
    "plain send": lambda c: _send(PEER2),
    "send, no permission": lambda c: _send(PEER.__class__("198.51.100.99", 1)),
    "send with another attribute": lambda c: _send(PEER2, (at.Software("odd"),)),
    "bare binding": lambda c: _binding(),
    "signed refresh": lambda c: c.build(Method.REFRESH, [at.Lifetime(600)]),
    "not stun": lambda c: b"\xff" * 24,
    "empty": lambda c: b"",
}


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
@pytest.mark.parametrize("name", sorted(CLIENT_MESSAGES))
def test_client_message_decides_as_handle_client(name: str, transport: Transport) -> None:
    """Twin worlds: the entry point's outcome stands for handle_client's actions, with the same
    counters, for every kind of client message."""
    entry_world, entry_alice = _world(transport)
    general_world, general_alice = _world(transport)
    ft = entry_alice.five_tuple
    data = CLIENT_MESSAGES[name](entry_alice)
    assert data == CLIENT_MESSAGES[name](general_alice)  # the twins take the same bytes
    out = entry_world.server.client_message(ft, data, entry_world.now)
    actions = general_world.server.handle_client(ft, data, general_world.now)
    assert as_actions(out, ft) == actions
    assert entry_world.server.stats == general_world.server.stats


def test_relayed_channel_data_comes_back_as_a_plain_tuple() -> None:
    """The hot path builds no action object: (relay, peer, payload) for ChannelData and plain
    Send, the answer's bytes for a bare Binding over UDP, None for a counted drop."""
    world, alice = _world()
    server, ft = world.server, alice.five_tuple
    assert server.client_message(ft, frame_channel_data(CHANNEL, b"m"), world.now) == (
        alice.relay,
        PEER,
        b"m",
    )
    assert server.client_message(ft, _send(PEER2), world.now) == (alice.relay, PEER2, b"payload")
    assert type(server.client_message(ft, _binding(), world.now)) is bytes
    before = server.stats["drop.channel_data_unbound"]
    assert server.client_message(ft, frame_channel_data(0x4003, b"m"), world.now) is None
    assert server.stats["drop.channel_data_unbound"] == before + 1


def test_due_timers_run_before_relayed_data() -> None:
    """Past the channel's and the permissions' lifetimes, ChannelData gets the timers' actions
    (through handle_client), and the expired channel no longer relays."""
    world, alice = _world()
    server = world.server
    world.now += 601.0  # channels live 600 s, permissions 300 s
    assert server.timers_due(world.now)
    out = server.client_message(alice.five_tuple, frame_channel_data(CHANNEL, b"m"), world.now)
    assert isinstance(out, list)
    assert not [a for a in out if isinstance(a, SendToPeer)]
    assert not server.timers_due(world.now)


def test_peer_message_decides_as_handle_peer() -> None:
    """A peer datagram: the client's 5-tuple and frame, exactly handle_peer's SendToClient; a
    drop is None with the same counter."""
    entry_world, entry_alice = _world()
    general_world, _ = _world()
    relay = entry_alice.relay
    assert relay is not None
    for peer in (PEER, PEER2, PEER.__class__("198.51.100.99", 1)):
        out = entry_world.server.peer_message(relay, peer, b"from peer", entry_world.now)
        actions = general_world.server.handle_peer(relay, peer, b"from peer", general_world.now)
        assert as_actions(out) == actions
    assert entry_world.server.stats == general_world.server.stats
    assert entry_world.server.stats["drop.peer_no_permission"] == 1
    [sent] = as_actions(entry_world.server.peer_message(relay, PEER, b"x", entry_world.now))
    assert isinstance(sent, SendToClient) and sent.five_tuple == entry_alice.five_tuple
