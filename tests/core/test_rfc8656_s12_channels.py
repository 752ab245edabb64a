"""RFC 8656 §11-§12: ChannelBind, channel bindings and their lifetime and reuse delay, and
ChannelData both ways (unpadded over UDP, padded to 4 bytes over TCP/TLS)."""

from __future__ import annotations

from typing import Any

import pytest

from stun import attributes as at
from stun.addresses import Address
from stun.channeldata import frame_channel_data
from stun.message import Method, check_integrity
from tests.core.harness import (
    PEER,
    PEER2,
    SERVER,
    Client,
    World,
    core_settings,
    delivered,
    error_code,
    replies,
)
from turnd.core.actions import SendToPeer, Transport

PEER3 = Address("203.0.113.200", 7000)


def long_lived(world: World, **kw: Any) -> Client:
    """A client with an allocation that outlives the channel timers under test."""
    client = world.client(**kw)
    client.allocate(at.RequestedTransport(17), at.Lifetime(3600))
    return client


# --- ChannelBind (§11.2) -----------------------------------------------------------------------


@pytest.mark.parametrize("number", [0x4000, 0x4ABC, 0x4FFF, 0x5000, 0x7FFF])
def test_channel_numbers_0x4000_to_0x7fff_can_be_bound(number: int) -> None:
    """§12 (RFC 5766 §11 range, still used by RFC 5766 clients): 0x4000-0x7FFF can be bound."""
    world = World()
    alice = long_lived(world)
    reply = alice.channel_bind(number, PEER)
    assert error_code(reply) is None and check_integrity(reply, alice.key())
    [out] = alice.channel_data(number, b"x")
    assert out == SendToPeer(alice.relayed, PEER, b"x")


@pytest.mark.parametrize("number", [0x0000, 0x3FFF, 0x8000, 0xFFFF])
def test_channel_number_outside_the_range_is_400(number: int) -> None:
    """§11.2: a CHANNEL-NUMBER outside the channel range gets 400."""
    world = World()
    alice = long_lived(world)
    assert error_code(alice.channel_bind(number, PEER)) == 400
    assert world.server.allocations[alice.five_tuple].channels == {}


@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param((at.XorPeerAddress(PEER),), id="no-channel-number"),
        pytest.param((at.ChannelNumber(0x4000),), id="no-peer"),
    ],
)
def test_channel_bind_missing_number_or_peer_is_400(attributes: tuple[object, ...]) -> None:
    """§11.2: ChannelBind needs both CHANNEL-NUMBER and XOR-PEER-ADDRESS: 400 otherwise."""
    world = World()
    alice = long_lived(world)
    assert error_code(alice.request(Method.CHANNEL_BIND, *attributes)) == 400


def test_channel_bind_without_an_allocation_is_437() -> None:
    """§11.2, §5: ChannelBind on a 5-tuple without an allocation gets 437."""
    world = World()
    assert error_code(world.client().channel_bind(0x4000, PEER)) == 437


def test_channel_bind_to_a_peer_of_the_other_family_is_443() -> None:
    """§11.2: a peer address of another family than the relayed address gets 443."""
    world = World()
    alice = long_lived(world)
    assert error_code(alice.channel_bind(0x4000, Address("2001:db8::5", 9))) == 443


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(Address("10.1.1.1", 9), id="denied-ip"),
        pytest.param(SERVER, id="server-listener"),
    ],
)
def test_channel_bind_to_a_denied_peer_is_403(peer: Address) -> None:
    """§11.2: a peer refused by policy (denied IP, own listener) gets 403, nothing installed."""
    world = World()
    alice = long_lived(world)
    assert error_code(alice.channel_bind(0x4000, peer)) == 403
    alloc = world.server.allocations[alice.five_tuple]
    assert alloc.channels == {} and alloc.permissions == {}


def test_channel_bind_installs_a_permission_for_the_peer() -> None:
    """§11.2: a successful ChannelBind installs or refreshes the permission for the peer's IP."""
    world = World()
    alice = long_lived(world)
    alice.channel_bind(0x4000, PEER)
    assert [o.peer for o in alice.send(PEER, b"via send")] == [PEER]


def test_rebinding_the_same_pair_refreshes_the_binding() -> None:
    """§11.2: ChannelBind of an existing pair refreshes the binding and its permission."""
    world = World()
    alice = long_lived(world)
    alice.channel_bind(0x4000, PEER)
    world.advance(500)
    assert error_code(alice.channel_bind(0x4000, PEER)) is None
    world.advance(250)  # 750 s after the first bind, 250 s after the refresh
    assert [o.data for o in alice.channel_data(0x4000, b"still")] == [b"still"]
    back = world.peer_packet(alice.relayed, PEER, b"back")
    assert delivered(back, alice) == [("channel", (0x4000, b"back"))]


def test_channel_bind_to_second_peer_is_400() -> None:
    """§11.2: a channel number already bound to another transport address gets 400."""
    world = World()
    alice = long_lived(world)
    alice.channel_bind(0x4000, PEER)
    assert error_code(alice.channel_bind(0x4000, PEER2)) == 400
    assert error_code(alice.channel_bind(0x4000, Address(PEER.host, PEER.port + 1))) == 400


def test_peer_bind_to_second_channel_is_400() -> None:
    """§11.2: a transport address already bound to another channel number gets 400."""
    world = World()
    alice = long_lived(world)
    alice.channel_bind(0x4000, PEER)
    assert error_code(alice.channel_bind(0x4001, PEER)) == 400


def test_channel_quota_is_508() -> None:
    """§11.2: beyond the per-allocation channel limit ChannelBind gets 508; refreshes still work."""
    world = World(core_settings(max_channels_per_allocation=1))
    alice = long_lived(world)
    assert error_code(alice.channel_bind(0x4000, PEER)) is None
    assert error_code(alice.channel_bind(0x4001, PEER2)) == 508
    assert error_code(alice.channel_bind(0x4000, PEER)) is None
    assert world.server.stats["quota.channels"] == 1


# --- lifetime and reuse delay (§12) ------------------------------------------------------------


def test_binding_expires_after_600_seconds_and_peer_data_falls_back_to_data_indication() -> None:
    """§12: a binding expires after 600 s; then peer data comes by Data indication."""
    world = World()
    alice = long_lived(world)
    alice.channel_bind(0x4000, PEER)
    world.advance(250)
    alice.create_permission(PEER)  # permissions are kept alive separately (300 s each)
    world.advance(250)
    alice.create_permission(PEER)
    world.advance(99.5)
    assert [o.data for o in alice.channel_data(0x4000, b"last")] == [b"last"]
    world.advance(0.5)
    assert alice.channel_data(0x4000, b"late") == []
    assert world.server.stats["drop.channel_data_unbound"] == 1
    back = world.peer_packet(alice.relayed, PEER, b"back")
    assert delivered(back, alice) == [("data", (PEER, b"back"))]


def test_expired_binding_is_not_used_even_before_its_timer_runs() -> None:
    """§12: expiry is a deadline, not a sweep: an expired binding relays nothing."""
    world = World()
    alice = long_lived(world)
    alice.channel_bind(0x4000, PEER)
    world.now += world.settings.channel_lifetime  # the clock moves; no timer has run
    alice.create_permission(PEER)
    assert alice.channel_data(0x4000, b"late") == []
    back = world.peer_packet(alice.relayed, PEER, b"back")
    assert delivered(back, alice) == [("data", (PEER, b"back"))]


def test_channel_number_and_peer_are_held_for_five_minutes_after_expiry() -> None:
    """§12: an expired binding's number and peer cannot be rebound elsewhere for 5 minutes."""
    world = World()
    alice = long_lived(world)
    alice.channel_bind(0x4000, PEER)
    world.advance(world.settings.channel_lifetime)
    assert world.server.allocations[alice.five_tuple].channels == {}
    assert error_code(alice.channel_bind(0x4000, PEER2)) == 400
    assert error_code(alice.channel_bind(0x4001, PEER)) == 400
    assert error_code(alice.channel_bind(0x4002, PEER3)) is None  # unrelated: fine
    world.advance(299)
    assert error_code(alice.channel_bind(0x4000, PEER2)) == 400
    world.advance(1)
    assert error_code(alice.channel_bind(0x4000, PEER2)) is None
    assert error_code(alice.channel_bind(0x4001, PEER)) is None


def test_same_pair_may_be_bound_again_during_the_reuse_delay() -> None:
    """§12: re-binding the expired pair itself is allowed at once, and ends its reuse delay."""
    world = World()
    alice = long_lived(world)
    alice.channel_bind(0x4000, PEER)
    world.advance(world.settings.channel_lifetime + 10)
    assert error_code(alice.channel_bind(0x4000, PEER)) is None
    assert [o.data for o in alice.channel_data(0x4000, b"again")] == [b"again"]
    world.advance(300)  # the old reuse-delay deadline passes: nothing to undo
    assert world.server.allocations[alice.five_tuple].channels[0x4000].peer == PEER


def test_channel_data_needs_a_live_permission_for_the_bound_peer() -> None:
    """§12.5, §12.6: a bound channel relays nothing while its peer has no permission."""
    world = World()
    alice = long_lived(world)
    alice.channel_bind(0x4000, PEER)
    world.advance(world.settings.permission_lifetime)
    assert alice.channel_data(0x4000, b"x") == []
    assert world.server.stats["drop.channel_data_no_permission"] == 1
    assert world.peer_packet(alice.relayed, PEER, b"y") == []
    assert world.server.stats["drop.peer_no_permission"] == 1
    alice.create_permission(PEER)
    assert [o.data for o in alice.channel_data(0x4000, b"z")] == [b"z"]


# --- ChannelData (§12.5, §12.6) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "padded"),
    [(Transport.UDP, False), (Transport.TCP, True), (Transport.TLS, True)],
)
def test_channel_data_to_the_client_is_padded_only_over_streams(
    transport: Transport, padded: bool
) -> None:
    """§12.5: ChannelData is padded to 4 bytes over TCP/TLS and not over UDP."""
    world = World()
    alice = long_lived(world, transport=transport)
    alice.channel_bind(0x4123, PEER)
    [frame] = replies(world.peer_packet(alice.relayed, PEER, b"abcde"), alice.five_tuple)
    assert frame == frame_channel_data(0x4123, b"abcde", pad=padded)
    assert len(frame) == (12 if padded else 9)


def test_channel_data_with_trailing_padding_from_the_client_is_relayed_exactly() -> None:
    """§12.5: bytes after the data (padding, over UDP too) are not part of the payload."""
    world = World()
    alice = long_lived(world)
    alice.channel_bind(0x4000, PEER)
    actions = world.client_packet(alice.five_tuple, frame_channel_data(0x4000, b"abc") + b"\0")
    assert actions == [SendToPeer(alice.relayed, PEER, b"abc")]
    alloc = world.server.allocations[alice.five_tuple]
    assert (alloc.packets_to_peer, alloc.bytes_to_peer) == (1, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"\x40", "channel_data_short", id="one-byte"),
        pytest.param(b"\x40\x00\x00", "channel_data_short", id="short-header"),
        pytest.param(b"\x40\x00\x00\x08abc", "channel_data_short", id="shorter-than-length"),
        pytest.param(b"\x40\x07\x00\x01x", "channel_data_unbound", id="unbound-number"),
    ],
)
def test_bad_channel_data_is_dropped_and_counted(data: bytes, reason: str) -> None:
    """§12.5: ChannelData shorter than its length, or on an unbound channel, is dropped."""
    world = World()
    alice = long_lived(world)
    alice.channel_bind(0x4000, PEER)
    assert world.client_packet(alice.five_tuple, data) == []
    assert world.server.stats["drop." + reason] == 1


def test_channel_data_without_an_allocation_is_dropped() -> None:
    """§12.5: ChannelData on a 5-tuple without an allocation is discarded."""
    world = World()
    alice = world.client()
    assert alice.channel_data(0x4000, b"x") == []
    assert world.server.stats["drop.channel_data_no_allocation"] == 1
