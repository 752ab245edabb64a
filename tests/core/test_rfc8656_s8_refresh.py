"""RFC 8656 §8 (and §5): the Refresh transaction — extending, deleting, and the checks that
tie a Refresh to the allocation of its 5-tuple and credentials."""

from __future__ import annotations

import pytest

from stun import attributes as at
from stun.addresses import Address, AddressFamily
from stun.message import Method, check_integrity
from tests.core.harness import PEER, World, core_settings, error_code
from turnd.core.actions import AllocationEnded, CloseRelay, SendToClient, Transport


def test_refresh_extends_the_allocation() -> None:
    """§8.2: a Refresh sets the allocation's time to expiry to the granted lifetime from now."""
    world = World()
    alice = world.client()
    alice.allocate()
    world.advance(500)
    reply = alice.refresh()
    lifetime = reply.get(at.Lifetime)
    assert error_code(reply) is None and lifetime is not None and lifetime.seconds == 600
    assert check_integrity(reply, alice.key())
    assert world.advance(500) == []
    assert len(world.server.allocations) == 1
    ended = world.advance(100)
    assert [a.reason for a in ended if isinstance(a, AllocationEnded)] == ["expired"]


@pytest.mark.parametrize(
    ("requested", "granted"),
    [(1200, 1200), (99999, 3600), (1, 600)],
)
def test_refresh_lifetime_is_clamped_like_allocate(requested: int, granted: int) -> None:
    """§8.2: the Refresh lifetime is the requested one, at least the default, at most the max."""
    world = World()
    alice = world.client()
    alice.allocate()
    lifetime = alice.refresh(requested).get(at.Lifetime)
    assert lifetime is not None and lifetime.seconds == granted


def test_refresh_with_lifetime_zero_deletes_the_allocation() -> None:
    """§8.2: Refresh with LIFETIME 0 deletes the allocation at once and answers LIFETIME 0."""
    world = World()
    alice = world.client()
    alice.allocate()
    relay = alice.relay
    reply = alice.refresh(0)
    lifetime = reply.get(at.Lifetime)
    assert error_code(reply) is None and lifetime is not None and lifetime.seconds == 0
    actions = alice.last_actions
    assert isinstance(actions[0], SendToClient)
    assert actions[1] == CloseRelay(relay)  # type: ignore[arg-type]
    [ended] = [a for a in actions if isinstance(a, AllocationEnded)]
    assert ended.reason == "deleted"
    assert world.server.allocations == {}
    assert error_code(alice.create_permission(PEER)) == 437
    assert world.advance(world.settings.allocation_lifetime) == []


def test_deleting_a_stream_allocation_leaves_the_connection_open() -> None:
    """§8.2: a client deleting its allocation over TCP may go on using the connection."""
    world = World()
    alice = world.client(transport=Transport.TCP)
    alice.allocate()
    alice.refresh(0)
    assert [type(a).__name__ for a in alice.last_actions] == [
        "SendToClient",
        "CloseRelay",
        "AllocationEnded",
    ]


def test_refresh_without_an_allocation_is_437() -> None:
    """§8.2, §5: a Refresh on a 5-tuple without an allocation gets 437 Allocation Mismatch."""
    world = World()
    reply = world.client().refresh()
    assert error_code(reply) == 437


def test_refresh_by_another_user_on_the_same_five_tuple_is_441() -> None:
    """§5: another user's request on an allocation's 5-tuple gets 441 Wrong Credentials."""
    world = World()
    alice = world.client()
    alice.allocate()
    bob = world.client("bob", "bob-pw")  # same transport address as alice
    assert bob.five_tuple == alice.five_tuple
    reply = bob.refresh(0)
    assert error_code(reply) == 441
    assert check_integrity(reply, bob.key())
    assert len(world.server.allocations) == 1


def test_refresh_with_mismatching_requested_address_family_is_443() -> None:
    """§8.2: a Refresh whose REQUESTED-ADDRESS-FAMILY differs from the allocation's gets 443."""
    world = World(core_settings(relay_ipv6="2001:db8::1"))
    alice = world.client()
    alice.allocate()
    reply = alice.request(Method.REFRESH, at.RequestedAddressFamily(AddressFamily.IPV6))
    assert error_code(reply) == 443
    same = alice.request(Method.REFRESH, at.RequestedAddressFamily(AddressFamily.IPV4))
    assert error_code(same) is None


def test_refresh_from_another_source_port_is_437() -> None:
    """§5: allocations are named by 5-tuple: the same user from another port has none (437)."""
    world = World()
    world.client().allocate()
    other = world.client(address=Address("203.0.113.5", 50002))
    assert error_code(other.refresh()) == 437
