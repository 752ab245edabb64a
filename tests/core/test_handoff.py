"""Handing allocations from one core to another (turnd.core.handoff): the client goes on
relaying, refreshing and expiring on the new core as if nothing happened, the old one forgets
them without ending them, and what cannot move stays."""

from __future__ import annotations

import json

import pytest

from stun import attributes as at
from stun.addresses import Address
from stun.channeldata import frame_channel_data
from tests.core.harness import PEER, PEER2, World, error_code
from turnd.core.actions import AllocationEnded, SendToClient, SendToPeer, Transport
from turnd.core.allocation import Allocation
from turnd.core.handoff import VERSION

CH = 0x4000
UDP = at.RequestedTransport(17)


def moved(old: World, new: World) -> list[Address]:
    """Export everything movable from ``old`` (through JSON, as it travels), import it into
    ``new`` and forget it in ``old``; the relays that moved."""
    records = json.loads(json.dumps(old.server.export_allocations(old.now)))
    taken = new.server.import_allocations(records, new.now)
    return old.server.forget_exported([alloc.five_tuple for alloc in taken])


def alloc_in(world: World, five_tuple: object) -> Allocation:
    return world.server.allocations[five_tuple]  # type: ignore[index]


def test_a_moved_allocation_relays_refreshes_and_expires_on_the_new_core() -> None:
    old, new = World(), World()
    alice = old.client()
    assert error_code(alice.allocate(UDP, at.Lifetime(600))) is None
    assert error_code(alice.channel_bind(CH, PEER)) is None
    assert error_code(alice.create_permission(PEER2)) is None
    alice.channel_data(CH, b"before")
    relay = alice.relayed

    assert moved(old, new) == [relay]
    alice.world = new
    assert alice.channel_data(CH, b"after") == [SendToPeer(relay, PEER, b"after")]
    [back] = new.peer_packet(relay, PEER, b"pong")
    assert back == SendToClient(alice.five_tuple, frame_channel_data(CH, b"pong"))
    assert alice.send(PEER2, b"by send") == [SendToPeer(relay, PEER2, b"by send")]
    assert error_code(alice.refresh(600)) is None  # same key, same nonce key: accepted
    alloc = alloc_in(new, alice.five_tuple)
    assert alloc.relays[relay.family].packets_to_peer == 3  # the old core's one, and two here
    assert new.server.quotas.per_user["alice"] == 1
    assert relay.port in new.taken_ports()

    ended = [a for a in new.advance(601 + 1) if isinstance(a, AllocationEnded)]
    assert [(e.relay, e.reason, e.packets_to_peer) for e in ended] == [(relay, "expired", 3)]


def test_the_old_core_forgets_them_without_ending_them() -> None:
    old, new = World(), World()
    alice = old.client()
    alice.allocate(UDP)
    alice.channel_bind(CH, PEER)
    moved(old, new)
    state = old.client_state()
    assert state["allocations"] == {} and state["by_relay"] == {}
    assert state["per_user"] == {} and state["taken_ports"][alice.relayed.family] == set()
    later = old.advance(3600)
    assert not [a for a in later if isinstance(a, AllocationEnded)]  # no usage from here
    assert old.server.stats["handoff.exported"] == 1
    assert new.server.stats["handoff.imported"] == 1


def test_channel_timers_and_the_reuse_delay_move_too() -> None:
    old, new = World(), World()
    alice = old.client()
    alice.allocate(UDP, at.Lifetime(3600))
    alice.channel_bind(CH, PEER)
    moved(old, new)
    alice.world = new
    new.advance(601)  # the binding's 600 s ran out on the new core
    assert alloc_in(new, alice.five_tuple).channels == {}
    assert error_code(alice.channel_bind(CH, PEER2)) == 400  # §12: the number is cooling


def test_kernel_routes_are_taken_back_before_export_and_handed_to_the_new_cache() -> None:
    old, new = World(routes=True), World(routes=True)
    alice = old.client()
    alice.allocate(UDP, at.Lifetime(3600))
    alice.channel_bind(CH, PEER)
    assert old.routes is not None and new.routes is not None
    alice.channel_data(CH, b"by the kernel")  # relayed by the old cache
    moved(old, new)
    assert old.routes.installed == set()
    assert len(new.routes.installed) == 1
    relay = alloc_in(new, alice.five_tuple).relays[alice.relayed.family]
    assert relay.kernel_packets_to_peer == 1 and relay.packets_to_peer == 1


def test_a_hand_off_called_off_gives_the_routes_back_to_the_old_cache() -> None:
    old = World(routes=True)
    alice = old.client()
    alice.allocate(UDP, at.Lifetime(3600))
    alice.channel_bind(CH, PEER)
    assert old.routes is not None and len(old.routes.installed) == 1
    records = old.server.export_allocations(old.now)
    assert old.routes.installed == set()  # the packets come to the sockets for the hand-off
    five_tuples = [alice.five_tuple]
    assert old.server.resume_exported(five_tuples, old.now) == 1  # type: ignore[list-item]
    assert len(old.routes.installed) == 1
    assert len(records) == 1 and alice.five_tuple in old.server.allocations


def test_a_stream_clients_allocation_stays() -> None:
    old = World()
    bob = old.client("bob", "bob-pw", transport=Transport.TCP)
    assert error_code(bob.allocate(UDP)) is None
    assert old.server.export_allocations(old.now) == []
    assert bob.five_tuple in old.server.allocations


def test_records_of_another_version_are_refused_whole() -> None:
    old, new = World(), World()
    old.client().allocate(UDP)
    records = old.server.export_allocations(old.now)
    with pytest.raises(ValueError, match=f"reads version {VERSION} only"):
        new.server.import_allocations([*records, {**records[0], "version": VERSION + 1}], new.now)
    assert new.server.allocations == {}


def test_a_clash_with_an_allocation_held_here_is_refused() -> None:
    old = World()
    old.client().allocate(UDP)
    records = old.server.export_allocations(old.now)
    with pytest.raises(ValueError, match="held here already"):
        old.server.import_allocations(records, old.now)
