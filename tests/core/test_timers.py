"""The core's one deadline (STYLE.md: ``next_deadline()`` and ``handle_timer(now)``, no polling)
and the RFC 8656 lifetimes it enforces: allocations (§7), permissions (§9), channels (§12) and
EVEN-PORT reservations (§7.2)."""

from __future__ import annotations

from stun import attributes as at
from stun.addresses import Address
from tests.core.harness import PEER, World, error_code
from turnd.core.actions import AllocationEnded, CloseRelay
from turnd.core.allocation import Allocation

BOB = Address("203.0.113.80", 40000)


def test_next_deadline_is_none_with_nothing_scheduled() -> None:
    """A fresh core, and one that only answered a challenge, has no timer."""
    world = World()
    assert world.server.next_deadline() is None
    world.client().fetch_nonce()
    assert world.server.next_deadline() is None
    assert world.server.handle_timer(world.now + 10_000) == []


def test_next_deadline_is_the_earliest_expiry() -> None:
    """The deadline is the soonest of every scheduled expiry."""
    world = World()
    start = world.now
    alice = world.client()
    alice.allocate()
    assert world.server.next_deadline() == start + 600
    world.now += 10
    alice.channel_bind(0x4000, PEER)  # channel at +610, its permission at +310
    assert world.server.next_deadline() == start + 310
    world.now += 5
    alice.allocate(at.RequestedTransport(17), at.EvenPort(reserve=True))  # 437: nothing new
    bob = world.client("bob", "bob-pw", address=BOB)
    bob.allocate(at.RequestedTransport(17), at.EvenPort(reserve=True))  # reservation at +45
    assert world.server.next_deadline() == start + 15 + world.settings.reservation_lifetime


def test_handle_timer_before_the_deadline_does_nothing() -> None:
    """Waking up early (or spuriously) changes nothing."""
    world = World()
    alice = world.client()
    alice.allocate()
    deadline = world.server.next_deadline()
    assert deadline is not None
    assert world.server.handle_timer(deadline - 1) == []
    assert world.server.next_deadline() == deadline
    assert len(world.server.allocations) == 1


def test_handle_timer_is_idempotent() -> None:
    """Running the timer twice for the same instant does the work once."""
    world = World()
    alice = world.client()
    alice.allocate()
    first = world.advance(600)
    assert [type(a) for a in first] == [CloseRelay, AllocationEnded]
    assert world.server.handle_timer(world.now) == []
    assert world.advance(0) == []
    assert world.server.next_deadline() is None


def test_one_late_timer_run_does_all_the_work_due() -> None:
    """A late timer run expires everything due by then, in one call."""
    world = World()
    alice = world.client()
    alice.allocate()
    alice.channel_bind(0x4000, PEER)
    world.advance(10)
    alice.create_permission(PEER)
    actions = world.advance(10_000)
    assert [a.reason for a in actions if isinstance(a, AllocationEnded)] == ["expired"]
    assert world.server.next_deadline() is None


def test_refreshed_allocation_does_not_expire_at_its_old_deadline() -> None:
    """§8.2: after a Refresh the old expiry is void; the allocation ends at the new one."""
    world = World()
    alice = world.client()
    alice.allocate()
    world.advance(300)
    assert error_code(alice.refresh()) is None
    assert world.advance(300) == []  # the original deadline
    assert len(world.server.allocations) == 1
    assert world.advance(299) == []
    ended = world.advance(1)
    assert [a.reason for a in ended if isinstance(a, AllocationEnded)] == ["expired"]


def test_deleted_allocation_leaves_no_work_for_its_old_timers() -> None:
    """A deleted allocation's pending timers fire without effect."""
    world = World()
    alice = world.client()
    alice.allocate()
    alice.channel_bind(0x4000, PEER)
    alice.refresh(0)
    assert world.advance(10_000) == []
    assert world.server.next_deadline() is None


def test_unused_reservation_expires_and_closes_its_socket() -> None:
    """§7.2: an unclaimed EVEN-PORT reservation is released after 30 s and its socket closed."""
    world = World()
    alice = world.client()
    reply = alice.allocate(at.RequestedTransport(17), at.EvenPort(reserve=True))
    assert reply.get(at.ReservationToken) is not None
    reserved = alice.relayed._replace(port=alice.relayed.port + 1)
    assert world.advance(world.settings.reservation_lifetime - 1) == []
    assert world.advance(1) == [CloseRelay(reserved)]
    assert world.server.next_deadline() == world.now - 30 + 600


def test_claimed_reservation_timer_does_nothing() -> None:
    """§7.2: a claimed reservation's timer leaves the new allocation's port alone."""
    world = World()
    reply = world.client().allocate(at.RequestedTransport(17), at.EvenPort(reserve=True))
    token = reply.get(at.ReservationToken)
    assert token is not None
    bob = world.client("bob", "bob-pw", address=BOB)
    assert error_code(bob.allocate(at.RequestedTransport(17), token)) is None
    assert world.advance(world.settings.reservation_lifetime) == []
    assert bob.relayed in world.server.by_relay


def test_refreshes_do_not_grow_the_timer_queue() -> None:
    """Quotas bound memory: refreshes keep one timer per allocation, permission and channel."""
    world = World()
    alice = world.client()
    alice.allocate()
    peers = [PEER._replace(port=PEER.port + i) for i in range(200)]  # one IP, 200 ports
    for _ in range(50):
        assert error_code(alice.create_permission(*peers)) is None
        assert error_code(alice.channel_bind(0x4000, PEER)) is None
        assert error_code(alice.refresh()) is None
    assert len(world.client_state()["timers"]) <= 3  # allocation, permission, channel


def test_expired_allocation_never_answers_before_the_timer_runs() -> None:
    """§7: past its lifetime an allocation is gone, even if handle_timer was not called yet."""
    world = World()
    alice = world.client()
    alice.allocate()
    assert alice.relay is not None
    world.now += world.settings.allocation_lifetime  # the clock moves; no timer call
    assert error_code(alice.refresh()) == 437
    assert world.server.allocations == {}
    assert world.peer_packet(alice.relay, PEER, b"late") == []


def test_traffic_totals_count_live_and_ended_relays() -> None:
    """traffic() adds what live relays carried to what ended ones did (metrics read it live)."""
    world = World()
    alice = world.client()
    alice.allocate()
    alice.create_permission(PEER)
    alice.send(PEER, b"12345")
    assert alice.relay is not None
    world.peer_packet(alice.relay, PEER, b"abc")
    live = world.server.traffic()
    assert live == {
        "packets_to_peer": 1,
        "bytes_to_peer": 5,
        "packets_to_client": 1,
        "bytes_to_client": 3,
    }
    alice.refresh(0)
    assert world.server.allocations == {}
    assert world.server.traffic() == live


def test_timers_due_says_when_the_fast_path_must_yield() -> None:
    """timers_due(now) is True exactly when handle_timer has work (the adapter's hot path
    checks it before calling the tuple-returning routes)."""
    world = World()
    assert not world.server.timers_due(world.now)
    alice = world.client()
    alice.allocate()
    deadline = world.server.next_deadline()
    assert deadline is not None
    assert not world.server.timers_due(deadline - 0.001)
    assert world.server.timers_due(deadline)


def _dead_entries(world: World) -> int:
    """Timer entries whose allocation has ended (they would keep it in memory)."""
    live = world.server.allocations
    return sum(
        1
        for subject in world.server.timers.subjects()
        if type(subject) is Allocation and live.get(subject.five_tuple) is not subject
    )


def test_a_deleted_allocation_leaves_no_timer_behind() -> None:
    """Delete (Refresh 0) drops the allocation's relay, permission and channel timers at once,
    not when they would have fallen due (up to channel_lifetime + the reuse delay later): an
    ended allocation is not held in memory by its timers."""
    world = World()
    alice = world.client()
    alice.allocate()
    assert error_code(alice.channel_bind(0x4000, PEER)) is None
    assert error_code(alice.create_permission(Address("198.51.100.9", 1))) is None
    assert world.server.timers.entries()
    assert error_code(alice.refresh(0)) is None
    assert world.server.timers.entries() == []
    assert world.server.next_deadline() is None


def test_allocate_delete_loops_cannot_grow_the_timer_queue() -> None:
    """Many clients allocate, bind and delete: at most half the queue is ever stale, and the
    live allocations' timers all stay."""
    world = World()
    clients = []
    for index in range(60):
        client = world.client(address=Address("203.0.113.90", 20000 + index))
        client.allocate()
        assert error_code(client.channel_bind(0x4000, PEER)) is None
        clients.append(client)
    for client in clients[:50]:
        assert error_code(client.refresh(0)) is None
        assert _dead_entries(world) * 2 <= len(world.server.timers)
    live = {id(world.server.allocations[c.five_tuple]) for c in clients[50:]}
    scheduled = {id(s) for s in world.server.timers.subjects() if type(s) is Allocation}
    assert live <= scheduled
    world.advance(700.0)  # everything that was due ran without errors
