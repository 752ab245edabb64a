"""Per-allocation limits (issue 8): a traffic budget, and a budget for new peer addresses."""

from __future__ import annotations

import pytest

from stun.addresses import Address
from tests.core.harness import PEER, Client, World, core_settings, delivered, error_code
from turnd.core import allocation


def relayed_world(**settings: float) -> tuple[World, Client]:
    world = World(core_settings(**settings))
    alice = world.client()
    alice.allocate()
    assert error_code(alice.channel_bind(0x4000, PEER)) is None
    return world, alice


def test_packets_beyond_the_allocation_rate_are_dropped_and_counted() -> None:
    """limits: past allocation_packet_rate a second (burst: one second's worth) packets drop."""
    world, alice = relayed_world(allocation_packet_rate=5, allocation_byte_rate=0)
    sent = [len(alice.channel_data(0x4000, b"x")) for _ in range(8)]
    assert sent == [1] * 5 + [0] * 3
    assert world.server.stats["drop.channel_data_allocation_rate"] == 3
    relay = alice.relay
    assert relay is not None
    assert world.peer_packet(relay, PEER, b"y") == []  # the budget is shared by both directions
    assert world.server.stats["drop.allocation_rate"] == 1
    world.now += 1.0  # a second later the bucket is full again
    assert delivered(world.peer_packet(relay, PEER, b"y"), alice)


def test_bytes_beyond_the_allocation_byte_rate_are_dropped() -> None:
    """allocation_byte_rate bounds payload bytes a second; a packet that does not fit drops."""
    _, alice = relayed_world(allocation_packet_rate=0, allocation_byte_rate=100)
    assert len(alice.channel_data(0x4000, b"a" * 60)) == 1
    assert alice.channel_data(0x4000, b"b" * 60) == []
    assert len(alice.channel_data(0x4000, b"c" * 40)) == 1


def test_send_indications_spend_the_same_budget() -> None:
    """Send indications are limited like ChannelData (drop.send_allocation_rate)."""
    world = World(core_settings(allocation_packet_rate=2, allocation_byte_rate=0))
    alice = world.client()
    alice.allocate()
    alice.create_permission(PEER)
    assert [len(alice.send(PEER, b"z")) for _ in range(3)] == [1, 1, 0]
    assert world.server.stats["drop.send_allocation_rate"] == 1


def test_new_peer_addresses_are_rate_limited_known_ones_are_not() -> None:
    """The port-scan guard: Send to many new ports of a permitted IP stops at the burst; peers
    already used keep working; ChannelBind to a new peer past the budget gets 403."""
    world = World(core_settings(new_peer_rate=1, new_peer_burst=3))
    alice = world.client()
    alice.allocate()
    alice.create_permission(PEER)  # one new IP: one token
    ports = [Address(PEER.host, 41000 + i) for i in range(4)]
    assert [len(alice.send(p, b"scan")) for p in ports] == [1, 1, 0, 0]
    assert world.server.stats["drop.send_new_peer_rate"] == 2
    assert len(alice.send(ports[0], b"known")) == 1
    assert error_code(alice.channel_bind(0x4001, ports[3])) == 403
    assert world.server.stats["quota.new_peer_rate"] == 1
    world.now += 1.0
    assert len(alice.send(ports[3], b"later")) == 1


def test_create_permission_counts_new_ips_not_ports() -> None:
    """A permission is per IP: naming one IP with many ports costs one token; many IPs, many."""
    world = World(core_settings(new_peer_rate=1, new_peer_burst=2))
    alice = world.client()
    alice.allocate()
    one_ip = [Address(PEER.host, 40000 + i) for i in range(10)]
    assert error_code(alice.create_permission(*one_ip)) is None
    others = [Address(f"198.51.100.{i}", 40000) for i in (20, 21)]
    assert error_code(alice.create_permission(*others)) == 403


def test_remembered_peers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """An allocation remembers at most MAX_PEERS_SEEN peers; past that it starts over."""
    monkeypatch.setattr(allocation, "MAX_PEERS_SEEN", 3)
    world = World(core_settings(new_peer_rate=1000, new_peer_burst=1000))
    alice = world.client()
    alice.allocate()
    alice.create_permission(PEER)
    for i in range(5):
        alice.send(Address(PEER.host, 42000 + i), b"x")
    [alloc] = world.server.allocations.values()
    assert len(alloc.peers_seen) <= 3
