"""The worker's entry point in memory (turnd.workers.pins.WorkerEntry): which datagrams go on to
another worker, and when a pin ends."""

from __future__ import annotations

from stun import attributes as at
from stun.addresses import Address
from stun.message import Method, decode
from testkit.client import error_code
from testkit.memory import replies
from tests.core.harness import World
from turnd.core.actions import UDP as UDP_FLOW
from turnd.core.actions import FiveTuple, as_actions
from turnd.workers.pins import MAX_PINS, WorkerEntry, reservation_prefix

UDP = at.RequestedTransport(17)


class Sent:
    """What the entry forwarded: (slot, flow, data, number)."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.datagrams: list[tuple[int, FiveTuple, bytes, int]] = []

    def __call__(self, slot: int, flow: FiveTuple, data: bytes, number: int) -> bool:
        if self.up:
            self.datagrams.append((slot, flow, data, number))
        return self.up


def worker(slot: int, count: int = 2, up: bool = True) -> tuple[World, WorkerEntry, Sent]:
    world = World()
    sent = Sent(up)
    return world, WorkerEntry(world.server, slot, count, sent), sent


def test_an_allocate_with_another_workers_token_pins_its_flow_there() -> None:
    world, entry, sent = worker(1)
    client = world.client()
    token = at.ReservationToken(reservation_prefix(0) + bytes(6))
    request = client.build(Method.ALLOCATE, [UDP, token])
    assert entry.client_message(client.five_tuple, request, world.now) is None
    assert [(slot, flow) for slot, flow, _, _ in sent.datagrams] == [(0, client.five_tuple)]
    # Every later datagram of the flow follows, whatever it is; other flows do not.
    refresh = client.build(Method.REFRESH, [])
    assert entry.client_message(client.five_tuple, refresh, world.now) is None
    assert [number for *_, number in sent.datagrams] == [1, 2]
    other = world.client(address=Address("203.0.113.9", 40000))
    binding = other.build(Method.BINDING, [])
    assert entry.client_message(other.five_tuple, binding, world.now) is not None
    assert len(sent.datagrams) == 2
    assert world.server.stats["workers.pinned"] == 1
    assert world.server.stats["workers.forwarded"] == 2


def test_own_and_impossible_tokens_are_the_cores_to_answer() -> None:
    world, entry, sent = worker(0)
    client = world.client()
    client.fetch_nonce()
    for prefix in (reservation_prefix(0), reservation_prefix(5)):  # its own; no such worker
        token = at.ReservationToken(prefix + bytes(6))
        request = client.build(Method.ALLOCATE, [UDP, token])
        out = entry.client_message(client.five_tuple, request, world.now)
        actions = world.settle(as_actions(out, client.five_tuple))
        [reply] = [decode(data) for data in replies(actions, client.five_tuple)]
        assert error_code(reply) == 508
    assert sent.datagrams == [] and entry.pins == {}


def test_an_unpin_ends_the_pin_unless_a_later_datagram_went_there() -> None:
    world, entry, sent = worker(1)
    client = world.client()
    token = at.ReservationToken(reservation_prefix(0) + bytes(6))
    entry.client_message(client.five_tuple, client.build(Method.ALLOCATE, [UDP, token]), 0.0)
    entry.client_message(client.five_tuple, client.build(Method.REFRESH, []), 0.0)
    entry.unpin(client.five_tuple, 1)  # answered to datagram 1, but 2 went there since
    assert client.five_tuple in entry.pins
    entry.unpin(client.five_tuple, 2)
    assert entry.pins == {}
    assert error_code(client.allocate()) is None  # the flow is this worker's own again
    assert len(sent.datagrams) == 2


def test_a_worker_that_is_down_costs_a_counted_drop() -> None:
    world, entry, _ = worker(1, up=False)
    client = world.client()
    token = at.ReservationToken(reservation_prefix(0) + bytes(6))
    entry.client_message(client.five_tuple, client.build(Method.ALLOCATE, [UDP, token]), 0.0)
    assert world.server.stats["drop.worker_unavailable"] == 1


def test_pins_are_bounded_and_move_with_an_upgrade() -> None:
    world, entry, _ = worker(1)
    flows = [world.client(address=Address("203.0.113.9", 40000 + n)).five_tuple for n in range(3)]
    for flow in flows:
        entry.pin(flow, 0)
    successor = WorkerEntry(world.server, 1, 2, Sent())
    successor.import_pins(entry.export_pins())
    assert set(successor.pins) == set(flows)
    server = flows[0].server
    many = [
        FiveTuple(UDP_FLOW, Address(f"10.0.{n >> 16}.{n >> 8 & 255}", 1024 + (n & 255)), server)
        for n in range(MAX_PINS)
    ]
    for flow in many:
        entry.pin(flow, 0)
    assert len(entry.pins) == MAX_PINS
    assert world.server.stats["workers.pins_evicted"] == 3
    assert flows[0] not in entry.pins and many[-1] in entry.pins
