"""RFC 8656 §7.1-§7.2 (and §5, §18): the Allocate transaction — lifetimes, retransmissions, address
families, EVEN-PORT and RESERVATION-TOKEN, DONT-FRAGMENT, quotas, relay binding, expiry."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from stun import attributes as at
from stun.addresses import Address, AddressFamily
from stun.message import Message, MessageClass, Method, check_integrity, decode
from tests.core.harness import PEER, World, core_settings, error_code, replies
from turnd.core.actions import (
    AllocationEnded,
    CloseConnection,
    CloseRelay,
    OpenRelay,
    SendToClient,
    Transport,
)
from turnd.core.allocate import MAX_BIND_ATTEMPTS

UDP = at.RequestedTransport(17)
OTHER_ADDRESS = Address("203.0.113.77", 50000)
SAME_IP_OTHER_PORT = Address("203.0.113.5", 50001)


def relayed(reply: Message) -> Address:
    attr = reply.get(at.XorRelayedAddress)
    assert attr is not None, reply
    return attr.address


def lifetime_of(reply: Message) -> int:
    attr = reply.get(at.Lifetime)
    assert attr is not None, reply
    return attr.seconds


def bind_results(*results: bool) -> Any:
    """A ``bind_ok`` callable answering ``results`` in turn, then success."""
    queue: Iterator[bool] = iter(results)
    return lambda action: next(queue, True)


# --- lifetimes (§7.2 step "LIFETIME") -----------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "granted"),
    [
        pytest.param(None, 600, id="default"),
        pytest.param(1200, 1200, id="within-range"),
        pytest.param(7200, 3600, id="above-max-clamped"),
        pytest.param(60, 600, id="below-default-raised"),
    ],
)
def test_allocation_lifetime_is_requested_clamped_to_default_and_max(
    requested: int | None, granted: int
) -> None:
    """§7.2: the lifetime is the requested one, at least the default, at most the max."""
    world = World()
    extra = () if requested is None else (at.Lifetime(requested),)
    reply = world.client().allocate(UDP, *extra)
    assert lifetime_of(reply) == granted
    [alloc] = world.server.allocations.values()
    assert alloc.expires == world.now + granted


def test_success_response_carries_relayed_mapped_address_and_lifetime() -> None:
    """§7.2: success carries XOR-RELAYED-ADDRESS in range, LIFETIME and XOR-MAPPED-ADDRESS."""
    world = World()
    alice = world.client()
    reply = alice.allocate()
    relay = relayed(reply)
    assert relay.host == world.settings.relay_ipv4
    assert world.settings.port_min <= relay.port <= world.settings.port_max
    mapped = reply.get(at.XorMappedAddress)
    assert mapped is not None and mapped.address == alice.address
    assert world.server.by_relay[relay].five_tuple == alice.five_tuple


# --- retransmissions and the 5-tuple (§7.2, §5) --------------------------------------------------


def test_retransmitted_allocate_is_answered_with_the_identical_cached_response() -> None:
    """§7.2: a retransmitted Allocate (same transaction id) gets the same success again."""
    world = World()
    alice = world.client()
    alice.fetch_nonce()
    request = alice.build(Method.ALLOCATE, [UDP])
    first = replies(world.client_packet(alice.five_tuple, request))
    again = replies(world.client_packet(alice.five_tuple, request))
    assert first == again and len(first) == 1
    assert decode(first[0]).cls is MessageClass.SUCCESS
    assert len(world.server.allocations) == 1
    assert len(world.opened) == 1
    assert world.server.stats["allocate.retransmissions"] == 1


def test_second_allocate_with_a_new_transaction_id_is_437() -> None:
    """§7.2: an Allocate on a 5-tuple that already has an allocation gets 437."""
    world = World()
    alice = world.client()
    alice.allocate()
    reply = alice.allocate()
    assert error_code(reply) == 437
    assert check_integrity(reply, alice.key())


def test_allocate_retransmitted_while_the_relay_is_being_opened_is_dropped() -> None:
    """§7.2: a retransmission while the relay is being bound is dropped, not allocated twice."""
    world = World()
    alice = world.client()
    alice.fetch_nonce()
    request = alice.build(Method.ALLOCATE, [UDP])
    server = world.server
    [opening] = server.handle_client(alice.five_tuple, request, world.now)
    assert isinstance(opening, OpenRelay)
    assert server.handle_client(alice.five_tuple, request, world.now) == []
    assert server.stats["drop.allocate_in_progress"] == 1
    [answer] = server.relay_opened(opening.ticket, True, world.now)
    assert isinstance(answer, SendToClient)
    assert decode(answer.data).cls is MessageClass.SUCCESS
    assert server.relay_opened(opening.ticket, True, world.now) == []


# --- REQUESTED-TRANSPORT (§7.2, §18.8) -----------------------------------------------------------


def test_allocate_without_requested_transport_is_400() -> None:
    """§7.2: REQUESTED-TRANSPORT is mandatory: 400 without it."""
    world = World()
    reply = world.client().request(Method.ALLOCATE)
    assert error_code(reply) == 400
    assert world.server.allocations == {}


@pytest.mark.parametrize("protocol", [1, 132, 0, 255])
def test_allocate_for_an_unsupported_transport_is_442(protocol: int) -> None:
    """§7.2: a REQUESTED-TRANSPORT other than UDP or TCP (RFC 6062 §5.1) gets 442."""
    world = World()
    assert error_code(world.client().allocate(at.RequestedTransport(protocol))) == 442


# --- address families (§7.2, §18.6, §18.11) ------------------------------------------------------


def test_ipv6_requested_without_an_ipv6_relay_is_440() -> None:
    """§7.2: REQUESTED-ADDRESS-FAMILY for a family the server does not offer gets 440."""
    world = World()
    reply = world.client().allocate(UDP, at.RequestedAddressFamily(AddressFamily.IPV6))
    assert error_code(reply) == 440


def test_ipv4_requested_without_an_ipv4_relay_is_440() -> None:
    """§7.2: with IPv4 relaying disabled an IPv4 allocation (the default family) gets 440."""
    world = World(core_settings(relay_ipv4=None, relay_ipv6="2001:db8::1"))
    assert error_code(world.client().allocate()) == 440


def test_unknown_requested_address_family_is_440() -> None:
    """§7.2: a REQUESTED-ADDRESS-FAMILY value that is neither IPv4 nor IPv6 gets 440."""
    world = World()
    assert error_code(world.client().allocate(UDP, at.RequestedAddressFamily(0x03))) == 440


def test_ipv6_requested_with_an_ipv6_relay_gets_an_ipv6_relayed_address() -> None:
    """§7.2: REQUESTED-ADDRESS-FAMILY IPv6 on a server with an IPv6 relay gets an IPv6 relay."""
    world = World(core_settings(relay_ipv6="2001:db8::1"))
    reply = world.client().allocate(UDP, at.RequestedAddressFamily(AddressFamily.IPV6))
    relay = relayed(reply)
    assert relay.family is AddressFamily.IPV6 and relay.host == "2001:db8::1"


def test_additional_address_family_gives_ipv4_relay_and_address_error_code_440() -> None:
    """§7.2: ADDITIONAL-ADDRESS-FAMILY gets the IPv4 relay and ADDRESS-ERROR-CODE 440 for IPv6."""
    world = World()
    reply = world.client().allocate(UDP, at.AdditionalAddressFamily(AddressFamily.IPV6))
    assert error_code(reply) is None
    assert relayed(reply).family is AddressFamily.IPV4
    address_error = reply.get(at.AddressErrorCode)
    assert address_error is not None
    assert (address_error.family, address_error.code) == (AddressFamily.IPV6, 440)


def test_additional_address_family_ipv4_is_400() -> None:
    """§7.2: ADDITIONAL-ADDRESS-FAMILY may only ask for IPv6: IPv4 there is 400."""
    world = World()
    reply = world.client().allocate(UDP, at.AdditionalAddressFamily(AddressFamily.IPV4))
    assert error_code(reply) == 400


def test_requested_and_additional_address_family_together_are_400() -> None:
    """§7.2: REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY exclude each other: 400."""
    world = World()
    reply = world.client().allocate(
        UDP,
        at.RequestedAddressFamily(AddressFamily.IPV4),
        at.AdditionalAddressFamily(AddressFamily.IPV6),
    )
    assert error_code(reply) == 400


# --- EVEN-PORT and RESERVATION-TOKEN (§7.2, §18.7, §18.10) ---------------------------------------


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(at.EvenPort(), id="even-port"),
        pytest.param(at.RequestedAddressFamily(AddressFamily.IPV4), id="requested-family"),
        pytest.param(at.AdditionalAddressFamily(AddressFamily.IPV6), id="additional-family"),
    ],
)
def test_reservation_token_with_even_port_or_a_family_is_400(other: Any) -> None:
    """§7.2: RESERVATION-TOKEN excludes EVEN-PORT and the address-family attributes: 400."""
    world = World()
    reply = world.client().allocate(UDP, at.ReservationToken(b"12345678"), other)
    assert error_code(reply) == 400


@pytest.mark.parametrize("seed_clients", range(4))
def test_even_port_gives_an_even_port(seed_clients: int) -> None:
    """§7.2: with EVEN-PORT the relayed transport address has an even port."""
    world = World()
    for i in range(seed_clients):
        world.client(address=Address("203.0.113.9", 1000 + i)).allocate()
    reply = world.client().allocate(UDP, at.EvenPort())
    assert relayed(reply).port % 2 == 0
    assert not reply.has(at.ReservationToken)


def test_even_port_with_r_bit_returns_a_token_and_the_token_gets_the_next_port() -> None:
    """§7.2: EVEN-PORT R=1 returns a RESERVATION-TOKEN that later allocates port+1."""
    world = World()
    alice = world.client()
    reply = alice.allocate(UDP, at.EvenPort(reserve=True))
    relay = relayed(reply)
    token = reply.get(at.ReservationToken)
    assert relay.port % 2 == 0 and token is not None and len(token.token) == 8
    assert world.opened[-1].reserve
    bob = world.client("bob", "bob-pw", address=OTHER_ADDRESS)
    second = bob.allocate(UDP, token)
    assert relayed(second) == Address(relay.host, relay.port + 1)
    assert world.opened[-1].reserved
    assert error_code(world.client(address=SAME_IP_OTHER_PORT).allocate(UDP, token)) == 508


@pytest.mark.parametrize("sweep", [True, False], ids=["timer-ran", "timer-not-yet-run"])
def test_unknown_or_expired_reservation_token_is_508_and_the_port_is_released(sweep: bool) -> None:
    """§7.2: an unknown or expired RESERVATION-TOKEN gets 508; the reserved port is released."""
    world = World()
    assert error_code(world.client().allocate(UDP, at.ReservationToken(b"\x00" * 8))) == 508
    reply = world.client().allocate(UDP, at.EvenPort(reserve=True))
    token = reply.get(at.ReservationToken)
    assert token is not None
    reserved = Address(relayed(reply).host, relayed(reply).port + 1)
    lifetime = world.settings.reservation_lifetime
    closed = world.advance(lifetime) if sweep else []
    if not sweep:
        world.now += lifetime  # the expiry then runs first thing in bob's next request
    seen: list[object] = []
    settle = world.settle
    world.settle = lambda actions: seen.extend(actions) or settle(actions)  # type: ignore[method-assign]
    bob = world.client("bob", "bob-pw", address=OTHER_ADDRESS)
    assert error_code(bob.allocate(UDP, token)) == 508
    closed += [a for a in seen if isinstance(a, CloseRelay)] + world.advance(0)
    assert closed == [CloseRelay(reserved)]
    assert reserved.port not in world.taken_ports()


def test_failed_bind_of_a_reserved_port_is_508_without_retry() -> None:
    """§7.2: the port a token names is the only acceptable one; if it cannot be adopted, 508."""
    world = World()
    token = world.client().allocate(UDP, at.EvenPort(reserve=True)).get(at.ReservationToken)
    assert token is not None
    world.bind_ok = False
    opened = len(world.opened)
    reply = world.client("bob", "bob-pw", address=OTHER_ADDRESS).allocate(UDP, token)
    assert error_code(reply) == 508
    assert len(world.opened) == opened + 1


# --- DONT-FRAGMENT (§7.2, §18.9) ---------------------------------------------------------------


@pytest.mark.parametrize("dont_fragment", [True, False])
def test_dont_fragment_is_passed_to_the_relay_socket(dont_fragment: bool) -> None:
    """§7.2: DONT-FRAGMENT reaches the adapter in OpenRelay (DF set on relayed datagrams)."""
    world = World()
    extra = (at.DontFragment(),) if dont_fragment else ()
    assert error_code(world.client().allocate(UDP, *extra)) is None
    assert world.opened[-1].dont_fragment is dont_fragment


# --- quotas (§7.2: 486, 508) -------------------------------------------------------------------


def test_per_user_quota_is_486() -> None:
    """§7.2: beyond the user's allocation quota the server answers 486 Allocation Quota Reached."""
    world = World(core_settings(max_allocations_per_user=1))
    assert error_code(world.client().allocate()) is None
    assert error_code(world.client(address=OTHER_ADDRESS).allocate()) == 486
    assert world.server.stats["quota.user"] == 1


def test_per_client_ip_quota_is_486() -> None:
    """§7.2: a quota on one client IP (whatever the username) is answered with 486 too."""
    world = World(core_settings(max_allocations_per_ip=1))
    assert error_code(world.client().allocate()) is None
    bob = world.client("bob", "bob-pw", address=SAME_IP_OTHER_PORT)
    assert error_code(bob.allocate()) == 486
    assert world.server.stats["quota.client_ip"] == 1


def test_node_allocation_limit_is_508() -> None:
    """§7.2: a node out of capacity answers 508; allocations being opened count."""
    world = World(core_settings(max_allocations=1))
    alice = world.client()
    alice.fetch_nonce()
    world.server.handle_client(alice.five_tuple, alice.build(Method.ALLOCATE, [UDP]), world.now)
    bob = world.client("bob", "bob-pw", address=OTHER_ADDRESS)
    assert error_code(bob.allocate()) == 508
    assert world.server.stats["quota.node"] == 1


def test_quota_counts_each_live_allocation() -> None:
    """§7.2: quotas count live allocations: ending one of two frees exactly one slot."""
    world = World(core_settings(max_allocations_per_user=2, max_allocations_per_ip=2))
    clients = [world.client(address=Address("203.0.113.5", 7000 + i)) for i in range(4)]
    assert [error_code(c.allocate()) for c in clients[:3]] == [None, None, 486]
    assert error_code(clients[0].refresh(0)) is None
    assert error_code(clients[2].allocate()) is None
    assert error_code(clients[3].allocate()) == 486


def test_quota_is_given_back_when_an_allocation_ends_or_fails() -> None:
    """§7.2: quotas count live allocations only: a deleted or failed one frees its slot."""
    world = World(core_settings(max_allocations_per_user=1, max_allocations_per_ip=1))
    alice = world.client()
    alice.allocate()
    assert error_code(alice.refresh(0)) is None
    world.bind_ok = False
    assert error_code(alice.allocate()) == 508
    world.bind_ok = True
    assert error_code(alice.allocate()) is None


# --- relay ports (§7.2: 508) -------------------------------------------------------------------


def test_relay_bind_failure_is_retried_on_another_port_then_508() -> None:
    """§7.2: an unbindable relay port is retried elsewhere, then 508 after MAX_BIND_ATTEMPTS."""
    world = World(bind_ok=False)
    before = world.client_state()
    assert error_code(world.client().allocate()) == 508
    ports = [o.relay.port for o in world.opened]
    assert len(ports) == MAX_BIND_ATTEMPTS
    assert all(a != b for a, b in itertools.pairwise(ports))
    assert world.server.stats["relay.bind_failures"] == MAX_BIND_ATTEMPTS
    assert world.client_state() == before


def test_failed_bind_of_a_reserving_allocate_releases_both_ports() -> None:
    """§7.2: an EVEN-PORT R=1 Allocate that cannot bind gets 508 and holds neither port."""
    world = World(bind_ok=False)
    before = world.client_state()
    reply = world.client().allocate(UDP, at.EvenPort(reserve=True))
    assert error_code(reply) == 508 and not reply.has(at.ReservationToken)
    assert all(o.reserve for o in world.opened)
    assert world.client_state() == before


def test_bind_failure_in_a_one_port_range_is_508_at_once() -> None:
    """§7.2: a refused port is not retried for the same request; none left means 508."""
    world = World(core_settings(port_min=50000, port_max=50000), bind_ok=False)
    reply = world.client().allocate()
    assert error_code(reply) == 508
    assert len(world.opened) == 1
    assert world.taken_ports() == set()


@pytest.mark.parametrize("reserve", [False, True])
def test_bind_retry_keeps_the_even_port_promise(reserve: bool) -> None:
    """§7.2: a retried bind for EVEN-PORT picks another even port (and free pair for R=1)."""
    world = World(bind_ok=bind_results(*[False, True] * 8))
    relays = []
    for i in range(8):
        client = world.client(address=Address("203.0.113.9", 1000 + i))
        relays.append(relayed(client.allocate(UDP, at.EvenPort(reserve=reserve))))
    refused, bound = world.opened[0::2], world.opened[1::2]
    assert [o.relay for o in bound] == relays
    assert all(o.relay.port % 2 == 0 for o in world.opened)
    assert all(a.relay != b.relay for a, b in zip(refused, bound, strict=True))
    assert all(o.reserve is reserve for o in world.opened)
    held = {r.port for r in relays} | ({r.port + 1 for r in relays} if reserve else set())
    assert world.taken_ports() == held


def test_exhausted_relay_ports_are_508() -> None:
    """§7.2: when no relay port is free the Allocate gets 508 Insufficient Capacity."""
    world = World(core_settings(port_min=50000, port_max=50001))
    assert error_code(world.client(address=Address("203.0.113.1", 1)).allocate()) is None
    assert error_code(world.client(address=Address("203.0.113.2", 1)).allocate()) is None
    assert error_code(world.client(address=Address("203.0.113.3", 1)).allocate()) == 508
    assert (
        error_code(world.client(address=Address("203.0.113.4", 1)).allocate(UDP, at.EvenPort()))
        == 508
    )


# --- the end of an allocation (§7, §3.1) -------------------------------------------------------


def test_allocation_expires_with_close_relay_and_usage_counters() -> None:
    """§7: an unrefreshed allocation ends at its lifetime, closing the relay, with usage counts."""
    world = World()
    alice = world.client()
    alice.allocate()
    assert alice.relay is not None
    alice.create_permission(PEER)
    alice.send(PEER, b"hello")
    alice.send(PEER, b"goodbye")
    world.peer_packet(alice.relay, PEER, b"hey")
    started = world.now
    assert world.advance(world.settings.allocation_lifetime - 0.5) == []
    actions = world.advance(0.5)
    assert actions == [
        CloseRelay(alice.relay),
        AllocationEnded(
            alice.five_tuple,
            alice.relay,
            "alice",
            None,
            started,
            world.now,
            "expired",
            packets_to_peer=2,
            bytes_to_peer=12,
            packets_to_client=1,
            bytes_to_client=3,
            kernel_packets_to_peer=0,
            kernel_bytes_to_peer=0,
            kernel_packets_to_client=0,
            kernel_bytes_to_client=0,
        ),
    ]
    assert world.server.allocations == {} and world.server.by_relay == {}
    assert world.server.stats["allocations.ended.expired"] == 1


def test_expired_stream_allocation_closes_its_connection() -> None:
    """§3.1 (RFC 6062 §5): over TCP/TLS the allocation's lifetime ends the connection too."""
    world = World()
    alice = world.client(transport=Transport.TLS)
    alice.allocate()
    actions = world.advance(world.settings.allocation_lifetime)
    assert CloseConnection(alice.five_tuple) in actions


def test_closed_stream_connection_deletes_its_allocation() -> None:
    """§3.1: a TCP/TLS allocation ends with its connection."""
    world = World()
    alice = world.client(transport=Transport.TCP)
    alice.allocate()
    actions = world.server.connection_closed(alice.five_tuple, world.now)
    assert [type(a) for a in actions] == [CloseRelay, AllocationEnded]
    assert world.server.allocations == {}
    assert world.server.connection_closed(alice.five_tuple, world.now) == []


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_killed_allocation_ends_with_reason_killed(transport: Transport) -> None:
    """Operator kill: the allocation ends now (its stream connection too) with reason killed."""
    world = World()
    alice = world.client(transport=transport)
    alice.allocate()
    actions = world.server.kill(alice.five_tuple, world.now)
    ended = [a for a in actions if isinstance(a, AllocationEnded)]
    assert [e.reason for e in ended] == ["killed"]
    assert (CloseConnection(alice.five_tuple) in actions) is transport.is_stream
    assert world.server.kill(alice.five_tuple, world.now) == []


@pytest.mark.parametrize("method", [Method.CONNECT, Method.CONNECTION_BIND])
def test_tcp_relay_requests_are_400_without_tcp_allocations(method: Method) -> None:
    """RFC 6062 §5.2, §5.4: Connect and ConnectionBind without a TCP allocation get 400."""
    world = World()
    alice = world.client()
    alice.allocate()
    reply = alice.request(method, at.XorPeerAddress(PEER))
    assert error_code(reply) == 400
    assert check_integrity(reply, alice.key())


@pytest.mark.parametrize("bound", [True, False])
def test_stream_connection_closed_while_opening_gets_no_allocation(bound: bool) -> None:
    """§3.1: an allocation lives on its TCP/TLS connection; one that closed while its relay was
    being opened gets none, and the relay is closed (or the failed bind just forgotten)."""
    world = World()
    alice = world.client(transport=Transport.TCP)
    alice.fetch_nonce()
    before = world.client_state()
    server = world.server
    [opening] = server.handle_client(
        alice.five_tuple, alice.build(Method.ALLOCATE, [UDP]), world.now
    )
    assert isinstance(opening, OpenRelay)
    assert server.connection_closed(alice.five_tuple, world.now) == []
    actions = server.relay_opened(opening.ticket, bound, world.now)
    assert actions == ([CloseRelay(opening.relay)] if bound else [])
    assert world.client_state() == before
    assert server.stats["allocate.abandoned"] == 1


def test_draining_server_refuses_new_allocations_and_keeps_old_ones() -> None:
    """Drain: new Allocates get 508; an existing allocation keeps relaying and refreshing."""
    world = World()
    alice = world.client()
    alice.allocate()
    world.server.draining = True
    bob = world.client("bob", "bob-pw", address=OTHER_ADDRESS)
    assert error_code(bob.allocate()) == 508
    assert world.server.stats["quota.draining"] == 1
    assert error_code(alice.refresh()) is None
    assert error_code(alice.create_permission(PEER)) is None


def test_a_cluster_node_relays_only_from_its_own_port_slices() -> None:
    """Relay ports come from the node's slices; restricting later applies to new allocations."""
    world = World(core_settings(port_min=50000, port_max=50099, port_ranges=((50010, 50019),)))
    first = world.client()
    assert error_code(first.allocate()) is None
    assert 50010 <= first.relayed.port <= 50019
    world.server.restrict_ports([(50090, 50099)])
    second = world.client(address=Address("192.0.2.98", 40000))
    assert error_code(second.allocate()) is None
    assert 50090 <= second.relayed.port <= 50099
    world.server.restrict_ports([])
    third = world.client(address=Address("192.0.2.99", 40000))
    assert error_code(third.allocate()) == 508
    assert first.five_tuple in world.server.allocations
