"""RFC 8656 §7.2 (steps 8-9), §8.1-§8.2, §18.11-§18.12: dual allocations — an IPv4 and an IPv6
relayed address from one Allocate with ADDITIONAL-ADDRESS-FAMILY, partial success with
ADDRESS-ERROR-CODE, data through the relay of the peer's family, and refreshing or deleting one
family alone."""

from __future__ import annotations

from typing import Any

import pytest

from stun import attributes as at
from stun.addresses import Address, AddressFamily
from stun.message import Message, Method, decode
from tests.core.harness import PEER, Client, World, core_settings, delivered, error_code, replies
from turnd.core.actions import AllocationEnded, CloseRelay, OpenRelay, SendToPeer
from turnd.core.allocate import MAX_BIND_ATTEMPTS

UDP = at.RequestedTransport(17)
IPV6 = AddressFamily.IPV6
DUAL = at.AdditionalAddressFamily(IPV6)
RELAY6 = "2001:db8::1"
PEER6 = Address("2001:db8::7", 40000)
PEER6B = Address("2001:db8::8", 40000)


def dual_world(**changes: Any) -> World:
    return World(core_settings(relay_ipv6=RELAY6, **changes))


def relayed(reply: Message) -> list[Address]:
    return [a.address for a in reply.attributes if isinstance(a, at.XorRelayedAddress)]


def address_error(reply: Message) -> tuple[int, int] | None:
    attr = reply.get(at.AddressErrorCode)
    return None if attr is None else (attr.family, attr.code)


def dual_client(world: World, **kw: Any) -> tuple[Client, Address, Address]:
    """A client with a dual allocation (lifetime 3600 s); its IPv4 and IPv6 relays."""
    client = world.client(**kw)
    reply = client.allocate(UDP, DUAL, at.Lifetime(3600))
    ipv4, ipv6 = relayed(reply)
    return client, ipv4, ipv6


def ended(actions: list[Any]) -> list[tuple[Address, str]]:
    return [(a.relay, a.reason) for a in actions if isinstance(a, AllocationEnded)]


# --- Allocate (§7.2 steps 8-9) -------------------------------------------------------------------


def test_dual_allocation_gets_an_ipv4_then_an_ipv6_relayed_address() -> None:
    """§7.2 step 9: ADDITIONAL-ADDRESS-FAMILY IPv6 gets two XOR-RELAYED-ADDRESS, IPv4 first."""
    world = dual_world()
    alice = world.client()
    reply = alice.allocate(UDP, DUAL)
    assert error_code(reply) is None and address_error(reply) is None
    ipv4, ipv6 = relayed(reply)
    assert ipv4.family is AddressFamily.IPV4 and ipv4.host == world.settings.relay_ipv4
    assert ipv6.family is IPV6 and ipv6.host == RELAY6
    assert [o.relay for o in world.opened] == [ipv4, ipv6]
    server = world.server
    assert server.by_relay[ipv4] is server.by_relay[ipv6] is server.allocations[alice.five_tuple]
    assert world.taken_ports(IPV6) == {ipv6.port}


def test_dual_allocation_is_answered_when_both_relays_are() -> None:
    """§7.2: the success response waits for both relays, whichever answers first."""
    world = dual_world()
    alice = world.client()
    alice.fetch_nonce()
    request = alice.build(Method.ALLOCATE, [UDP, DUAL])
    server = world.server
    first, second = server.handle_client(alice.five_tuple, request, world.now)
    assert isinstance(first, OpenRelay) and isinstance(second, OpenRelay)
    assert server.relay_opened(second.ticket, True, world.now) == []
    assert server.handle_client(alice.five_tuple, request, world.now) == []  # in progress
    [answer] = server.relay_opened(first.ticket, True, world.now)
    assert relayed(decode(replies([answer])[0])) == [first.relay, second.relay]


def test_without_an_ipv6_relay_the_dual_request_gets_ipv4_and_address_error_440() -> None:
    """§7.2 step 9: a server without IPv6 relaying allocates IPv4 alone, ADDRESS-ERROR-CODE 440."""
    world = World()
    reply = world.client().allocate(UDP, DUAL)
    assert [a.family for a in relayed(reply)] == [AddressFamily.IPV4]
    assert address_error(reply) == (IPV6, 440)
    assert len(world.opened) == 1


def test_ipv6_relay_that_cannot_be_bound_leaves_ipv4_with_address_error_508() -> None:
    """§7.2 step 9: when only the IPv4 relay can be had, success with ADDRESS-ERROR-CODE 508."""
    world = dual_world()
    world.bind_ok = lambda action: action.relay.family is AddressFamily.IPV4
    alice = world.client()
    reply = alice.allocate(UDP, DUAL)
    assert error_code(reply) is None
    assert [a.family for a in relayed(reply)] == [AddressFamily.IPV4]
    assert address_error(reply) == (IPV6, 508)
    assert sum(o.relay.family is IPV6 for o in world.opened) == MAX_BIND_ATTEMPTS
    assert world.taken_ports(IPV6) == set()
    alloc = world.server.allocations[alice.five_tuple]
    assert list(alloc.relays) == [AddressFamily.IPV4]


def test_ipv6_ports_exhausted_leaves_ipv4_with_address_error_508() -> None:
    """§7.2 step 9: no free IPv6 port is a partial success too (508), without asking to bind."""
    world = dual_world(port_min=50000, port_max=50000)
    world.server.ports.pools[IPV6].take(50000)
    reply = world.client().allocate(UDP, DUAL)
    assert [a.family for a in relayed(reply)] == [AddressFamily.IPV4]
    assert address_error(reply) == (IPV6, 508)
    assert [o.relay.family for o in world.opened] == [AddressFamily.IPV4]


def test_ipv4_relay_failing_fails_the_dual_allocate_and_closes_the_ipv6_one() -> None:
    """§7.2: without its IPv4 relay the Allocate is 508; an IPv6 relay that opened is closed."""
    world = dual_world(port_min=50000, port_max=50000)
    world.bind_ok = lambda action: action.relay.family is IPV6
    before = world.client_state()
    alice = world.client()
    reply = alice.allocate(UDP, DUAL)
    assert error_code(reply) == 508
    [ipv6] = [o.relay for o in world.opened if o.relay.family is IPV6]
    assert CloseRelay(ipv6) in alice.last_actions
    assert world.client_state() == before


def test_even_port_with_r_bit_and_additional_address_family_is_400() -> None:
    """§7.2 step 8: EVEN-PORT with R=1 and ADDITIONAL-ADDRESS-FAMILY together are 400."""
    world = dual_world()
    reply = world.client().allocate(UDP, DUAL, at.EvenPort(reserve=True))
    assert error_code(reply) == 400 and world.opened == []


def test_even_port_in_a_dual_allocation_makes_both_ports_even() -> None:
    """§7.2: EVEN-PORT (R=0) applies to each relayed address of a dual allocation."""
    world = dual_world()
    for i in range(4):
        reply = world.client(address=Address("203.0.113.9", 1000 + i)).allocate(
            UDP, DUAL, at.EvenPort()
        )
        assert [a.port % 2 for a in relayed(reply)] == [0, 0]


def test_retransmitted_dual_allocate_gets_the_same_two_addresses() -> None:
    """§7.2: a retransmission is answered from the cached response, both addresses included."""
    world = dual_world()
    alice = world.client()
    alice.fetch_nonce()
    request = alice.build(Method.ALLOCATE, [UDP, DUAL])
    first = replies(world.client_packet(alice.five_tuple, request))
    assert replies(world.client_packet(alice.five_tuple, request)) == first
    assert len(world.opened) == 2


# --- data through the relay of the peer's family (§9, §11, §12) ----------------------------------


def test_dual_allocation_relays_each_family_through_its_own_address() -> None:
    """§7.2, §11-§12: an IPv4 peer is reached from the IPv4 relay, an IPv6 peer from the IPv6
    one, by Send, channels and in return; usage is counted per relay."""
    world = dual_world()
    alice, ipv4, ipv6 = dual_client(world)
    assert error_code(alice.create_permission(PEER, PEER6)) is None
    assert alice.send(PEER6, b"six") == [SendToPeer(ipv6, PEER6, b"six")]
    assert alice.send(PEER, b"four") == [SendToPeer(ipv4, PEER, b"four")]
    assert error_code(alice.channel_bind(0x4001, PEER6B)) is None
    assert alice.channel_data(0x4001, b"chan") == [SendToPeer(ipv6, PEER6B, b"chan")]
    back = world.peer_packet(ipv6, PEER6, b"hi")
    assert delivered(back, alice) == [("data", (PEER6, b"hi"))]
    alloc = world.server.allocations[alice.five_tuple]
    six, four = alloc.relays[IPV6], alloc.relays[AddressFamily.IPV4]
    assert (six.packets_to_peer, six.bytes_to_peer, six.packets_to_client) == (2, 7, 1)
    assert (four.packets_to_peer, four.bytes_to_peer, four.packets_to_client) == (1, 4, 0)
    assert (alloc.packets_to_peer, alloc.bytes_to_client) == (3, 2)


@pytest.mark.parametrize("family", [AddressFamily.IPV4, IPV6])
def test_single_family_allocation_refuses_peers_of_the_other_family(
    family: AddressFamily,
) -> None:
    """§10.2, §12.2: a peer of a family the allocation has no relay for is 443; Send is dropped."""
    world = dual_world()
    alice = world.client()
    alice.allocate(UDP, at.RequestedAddressFamily(family))
    other = PEER if family is IPV6 else PEER6
    assert error_code(alice.create_permission(other)) == 443
    assert error_code(alice.channel_bind(0x4000, other)) == 443
    assert alice.send(other, b"x") == []
    assert world.server.stats["drop.send_family_mismatch"] == 1


# --- refreshing and deleting one family (§8.1, §8.2) ---------------------------------------------


def test_refresh_with_requested_address_family_refreshes_that_family_alone() -> None:
    """§8.1: a Refresh naming a family refreshes that relay; the other expires on its own time,
    and the allocation lives on until its last relay expires."""
    world = dual_world()
    alice, ipv4, ipv6 = dual_client(world)
    world.advance(3000)
    reply = alice.refresh(3600, at.RequestedAddressFamily(IPV6))
    assert error_code(reply) is None
    assert ended(world.advance(600)) == [(ipv4, "expired")]
    alloc = world.server.allocations[alice.five_tuple]
    assert list(alloc.relays) == [IPV6] and alloc.relay == ipv6
    assert ipv4 not in world.server.by_relay and world.taken_ports() == set()
    assert error_code(alice.create_permission(PEER)) == 443
    assert ended(world.advance(3000)) == [(ipv6, "expired")]
    assert world.server.allocations == {}


def test_refresh_without_a_family_refreshes_both() -> None:
    """§8.1: a Refresh without REQUESTED-ADDRESS-FAMILY applies to every relay."""
    world = dual_world()
    alice, ipv4, ipv6 = dual_client(world)
    world.advance(3000)
    assert error_code(alice.refresh(3600)) is None
    assert world.advance(3599) == []
    assert sorted(ended(world.advance(1))) == sorted([(ipv4, "expired"), (ipv6, "expired")])


def test_deleting_one_family_keeps_the_other_with_its_permissions_and_channels() -> None:
    """§8.1: LIFETIME 0 with REQUESTED-ADDRESS-FAMILY deletes that relay, its permissions and its
    channels; the other family's stay."""
    world = dual_world()
    alice, ipv4, ipv6 = dual_client(world)
    alice.create_permission(PEER)
    alice.channel_bind(0x4000, PEER6)
    alice.channel_bind(0x4001, PEER)
    alice.send(PEER6, b"bye")
    reply = alice.refresh(0, at.RequestedAddressFamily(IPV6))
    assert error_code(reply) is None
    actions = alice.last_actions
    assert CloseRelay(ipv6) in actions and CloseRelay(ipv4) not in actions
    [six] = [a for a in actions if isinstance(a, AllocationEnded)]
    assert (six.relay, six.reason, six.packets_to_peer, six.bytes_to_peer) == (
        ipv6,
        "deleted",
        1,
        3,
    )
    alloc = world.server.allocations[alice.five_tuple]
    assert set(alloc.permissions) == {PEER.host} and set(alloc.channels) == {0x4001}
    assert world.peer_packet(ipv6, PEER6, b"late") == []
    assert alice.channel_data(0x4000, b"x") == []
    assert alice.channel_data(0x4001, b"y") == [SendToPeer(ipv4, PEER, b"y")]
    assert error_code(alice.refresh(600, at.RequestedAddressFamily(IPV6))) == 443
    assert world.taken_ports(IPV6) == set()
    assert world.server.stats["relays.ended.deleted"] == 1


def test_channel_number_of_a_deleted_family_waits_out_its_reuse_delay() -> None:
    """§12: a channel destroyed with its family keeps its number unusable for 5 minutes."""
    world = dual_world()
    alice, _, _ = dual_client(world)
    alice.channel_bind(0x4000, PEER6)
    alice.refresh(0, at.RequestedAddressFamily(IPV6))
    assert error_code(alice.channel_bind(0x4000, PEER)) == 400
    world.advance(299)
    assert error_code(alice.channel_bind(0x4000, PEER)) == 400
    world.advance(1000)  # the cooling ends, and the IPv6 channel's old timer finds nothing
    assert error_code(alice.channel_bind(0x4000, PEER)) is None


def test_deleting_the_last_family_deletes_the_allocation() -> None:
    """§8.1: deleting one family, then the other, ends the allocation."""
    world = dual_world()
    alice, _, ipv6 = dual_client(world)
    alice.refresh(0, at.RequestedAddressFamily(AddressFamily.IPV4))
    assert len(world.server.allocations) == 1
    alice.refresh(0, at.RequestedAddressFamily(IPV6))
    assert ended(alice.last_actions) == [(ipv6, "deleted")]
    assert world.server.allocations == {} and world.server.by_relay == {}


@pytest.mark.parametrize("how", ["refresh-0", "kill", "expiry"])
def test_ending_a_dual_allocation_closes_both_relays_with_their_usage(how: str) -> None:
    """§7, §8.2: a dual allocation ends with a CloseRelay and an AllocationEnded per relay."""
    world = dual_world()
    before = world.client_state()
    alice, ipv4, ipv6 = dual_client(world)
    alice.create_permission(PEER6)
    alice.send(PEER6, b"abc")
    if how == "refresh-0":
        alice.refresh(0)
        actions = alice.last_actions
    elif how == "kill":
        actions = world.server.kill(alice.five_tuple, world.now)
    else:
        actions = world.advance(3600)
    assert [a for a in actions if isinstance(a, CloseRelay)] == [CloseRelay(ipv4), CloseRelay(ipv6)]
    usage = [(a.relay, a.packets_to_peer) for a in actions if isinstance(a, AllocationEnded)]
    assert usage == [(ipv4, 0), (ipv6, 1)]
    reason = {"refresh-0": "deleted", "kill": "killed", "expiry": "expired"}[how]
    assert world.server.stats["allocations.ended." + reason] == 1
    after = world.client_state()
    assert {k: v for k, v in after.items() if k != "timers"} == {
        k: v for k, v in before.items() if k != "timers"
    }
