"""DESIGN.md "Security defaults" against the relay loop of issue 20 (items 1 and 7): a peer enters
an allocation's memory of peers (which lets later Send indications skip the policy) only after
every check of the request has passed, so a refused ChannelBind to the node's own listener cannot
open the way for Send indications to it; and RFC 6062 Connect spends the same new-peer budget as
Send, so one permission cannot sweep a host's ports."""

from __future__ import annotations

from stun.addresses import Address
from tests.core.harness import PEER, SERVER, World, core_settings, error_code
from tests.core.test_rfc6062_tcp_allocations import tcp_client

SERVER_IN_IPV6 = Address(f"::ffff:{SERVER.host}", SERVER.port)


def test_refused_channel_bind_to_own_listener_leaves_no_trace_for_send() -> None:
    """A ChannelBind to the server's own listener is 403 and the following Send to the same
    address is dropped as a denied peer, not relayed (it used to be, nesting allocations)."""
    world = World()
    alice = world.client()
    alice.allocate()
    assert error_code(alice.create_permission(SERVER)) is None  # the IP is a fine permission
    assert error_code(alice.channel_bind(0x4000, SERVER)) == 403
    alloc = world.server.allocations[alice.five_tuple]
    assert SERVER not in alloc.peers_seen
    for _ in range(3):
        assert alice.send(SERVER, b"loop") == []
    assert world.server.stats["drop.send_denied_peer"] == 3
    assert SERVER not in alloc.peers_seen


def test_channel_bind_refused_after_the_policy_remembers_no_peer() -> None:
    """A ChannelBind that passes the policy but fails a later check (here a channel number
    already bound to another peer, §11.2) leaves its peer unremembered."""
    world = World()
    alice = world.client()
    alice.allocate()
    assert error_code(alice.channel_bind(0x4000, PEER)) is None
    other = Address("198.51.100.9", 41000)
    assert error_code(alice.channel_bind(0x4000, other)) == 400
    assert other not in world.server.allocations[alice.five_tuple].peers_seen


def test_send_to_own_listener_in_ipv6_form_is_dropped() -> None:
    """The IPv4-mapped form of the server's listener is the listener too."""
    world = World()
    alice = world.client()
    alice.allocate()
    alice.create_permission(SERVER)
    assert alice.send(SERVER, b"x") == []
    assert world.server.stats["drop.send_denied_peer"] == 1
    assert error_code(alice.channel_bind(0x4001, SERVER_IN_IPV6)) in (403, 443)


def test_successful_channel_bind_and_send_remember_their_peer() -> None:
    """The memory still works for what passed: a bound peer and a sent-to peer are remembered."""
    world = World()
    alice = world.client()
    alice.allocate()
    alice.create_permission(PEER)
    alice.channel_bind(0x4000, PEER)
    other = Address(PEER.host, PEER.port + 1)
    assert len(alice.send(other, b"x")) == 1
    assert {PEER, other} <= world.server.allocations[alice.five_tuple].peers_seen


def test_connect_spends_the_new_peer_budget() -> None:
    """RFC 6062 Connect to ever new ports of one permitted IP is refused (403) once the
    new-peer budget is spent, and counted; the budget refills with time."""
    world = World(core_settings(new_peer_rate=1, new_peer_burst=3))
    alice = tcp_client(world)  # its CreatePermission spent one of the three
    codes = [error_code(alice.connect(Address(PEER.host, 20000 + port))) for port in range(10)]
    assert codes[:2] == [None, None]
    assert set(codes[2:]) == {403}
    assert world.server.stats["quota.new_peer_rate"] == 8
    world.advance(2)
    assert error_code(alice.connect(Address(PEER.host, 30000))) is None


def test_connect_to_own_listener_is_refused() -> None:
    """RFC 6062 Connect to the server's own listener is 403 (DESIGN.md own addresses)."""
    world = World()
    alice = tcp_client(world)
    assert error_code(alice.create_permission(SERVER)) is None
    assert error_code(alice.connect(SERVER)) == 403
