"""RFC 8656 §9 (permissions) and §9.1-§9.2 (CreatePermission), with the peer deny-list of
DESIGN.md "Security defaults" applied to permission requests."""

from __future__ import annotations

import pytest

from stun import attributes as at
from stun.addresses import Address, AddressFamily
from stun.message import Method, check_integrity
from tests.core.harness import PEER, PEER2, World, core_settings, delivered, error_code

PEER3 = Address("203.0.113.200", 7000)
IPV6_PEER = Address("2001:db8:55::7", 40000)


def test_create_permission_installs_one_permission_per_peer_address() -> None:
    """§9.2: every XOR-PEER-ADDRESS of a CreatePermission gets a permission."""
    world = World()
    alice = world.client()
    alice.allocate()
    reply = alice.create_permission(PEER, PEER2, PEER3)
    assert error_code(reply) is None and check_integrity(reply, alice.key())
    for peer in (PEER, PEER2, PEER3):
        back = world.peer_packet(alice.relayed, peer, b"hi")
        assert delivered(back, alice) == [("data", (peer, b"hi"))]


def test_create_permission_without_xor_peer_address_is_400() -> None:
    """§9.2: at least one XOR-PEER-ADDRESS is required: 400 without one."""
    world = World()
    alice = world.client()
    alice.allocate()
    assert error_code(alice.request(Method.CREATE_PERMISSION)) == 400


def test_create_permission_without_an_allocation_is_437() -> None:
    """§9.2, §5: CreatePermission on a 5-tuple without an allocation gets 437."""
    world = World()
    assert error_code(world.client().create_permission(PEER)) == 437


def test_create_permission_by_another_user_is_441() -> None:
    """§5: only the allocation's own credentials may install permissions: 441 otherwise."""
    world = World()
    world.client().allocate()
    assert error_code(world.client("bob", "bob-pw").create_permission(PEER)) == 441


def test_peer_of_the_other_address_family_is_443() -> None:
    """§9.2: an XOR-PEER-ADDRESS of a family other than the relayed address's gets 443."""
    world = World(core_settings(relay_ipv6="2001:db8::1"))
    alice = world.client()
    alice.allocate()
    assert error_code(alice.create_permission(PEER, IPV6_PEER)) == 443
    assert not world.server.allocations[alice.five_tuple].permissions
    bob = world.client("bob", "bob-pw", address=Address("203.0.113.6", 1))
    bob.allocate(at.RequestedTransport(17), at.RequestedAddressFamily(AddressFamily.IPV6))
    assert error_code(bob.create_permission(PEER)) == 443
    assert error_code(bob.create_permission(IPV6_PEER)) is None


@pytest.mark.parametrize(
    "denied",
    ["10.0.0.1", "127.0.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0"],
)
def test_denied_ipv4_peer_is_403_and_nothing_is_installed(denied: str) -> None:
    """§9.2: one denied peer makes CreatePermission 403 and installs none of its peers."""
    world = World()
    alice = world.client()
    alice.allocate()
    reply = alice.create_permission(PEER, Address(denied, 9))
    assert error_code(reply) == 403
    assert world.server.allocations[alice.five_tuple].permissions == {}
    assert world.peer_packet(alice.relayed, PEER, b"x") == []
    assert world.server.stats["denied.peer"] == 1


@pytest.mark.parametrize(
    "denied",
    [
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "::192.168.0.1",
        "64:ff9b::a00:1",
        "2002:a00:1::1",
        "2001:0:a00:1::",
    ],
)
def test_denied_ipv6_peer_is_403(denied: str) -> None:
    """DESIGN.md: IPv6 denied ranges and IPv6 forms of denied IPv4 addresses get 403."""
    world = World(core_settings(relay_ipv6="2001:db8::1"))
    alice = world.client()
    alice.allocate(at.RequestedTransport(17), at.RequestedAddressFamily(AddressFamily.IPV6))
    assert error_code(alice.create_permission(IPV6_PEER, Address(denied, 9))) == 403
    assert world.server.allocations[alice.five_tuple].permissions == {}


def test_allow_list_reopens_a_denied_range() -> None:
    """DESIGN.md: an allow-list entry re-opens a denied range (tests reach loopback this way)."""
    world = World(allow=["127.0.0.0/8"])
    alice = world.client()
    alice.allocate()
    loopback = Address("127.0.0.1", 5000)
    assert error_code(alice.create_permission(loopback)) is None
    assert [o.peer for o in alice.send(loopback, b"x")] == [loopback]


def test_permission_compares_the_ip_address_only() -> None:
    """§9: a permission is for an IP address; any port of that IP may send and be sent to."""
    world = World()
    alice = world.client()
    alice.allocate()
    alice.create_permission(PEER)
    other_port = Address(PEER.host, PEER.port + 1)
    back = world.peer_packet(alice.relayed, other_port, b"from another port")
    assert delivered(back, alice) == [("data", (other_port, b"from another port"))]
    [out] = alice.send(other_port, b"to another port")
    assert out.peer == other_port


@pytest.mark.parametrize("sweep", [True, False], ids=["timer-ran", "timer-not-yet-run"])
def test_permission_expires_after_300_seconds(sweep: bool) -> None:
    """§9: a permission lasts 300 s; then data both ways is dropped and counted."""
    world = World()
    alice = world.client()
    alice.allocate()
    alice.create_permission(PEER)
    world.advance(299.5)
    assert delivered(world.peer_packet(alice.relayed, PEER, b"a"), alice)
    if sweep:
        world.advance(0.5)
    else:
        world.now += 0.5
    assert world.peer_packet(alice.relayed, PEER, b"b") == []
    assert world.server.stats["drop.peer_no_permission"] == 1
    assert alice.send(PEER, b"c") == []
    assert world.server.stats["drop.send_no_permission"] == 1
    # Due expiries run before a packet is handled, so the permission is gone either way.
    assert PEER.host not in world.server.allocations[alice.five_tuple].permissions


def test_create_permission_again_refreshes_it() -> None:
    """§9: a CreatePermission for an IP with a permission restarts its 300 s."""
    world = World()
    alice = world.client()
    alice.allocate()
    alice.create_permission(PEER)
    world.advance(200)
    assert error_code(alice.create_permission(PEER)) is None
    world.advance(250)  # 450 s after the first, 250 s after the refresh
    assert delivered(world.peer_packet(alice.relayed, PEER, b"x"), alice)
    world.advance(50)
    assert world.peer_packet(alice.relayed, PEER, b"y") == []


def test_permission_quota_is_508_and_installs_nothing() -> None:
    """§9.2: beyond the permission limit CreatePermission gets 508 and installs nothing."""
    world = World(core_settings(max_permissions_per_allocation=2))
    alice = world.client()
    alice.allocate()
    assert error_code(alice.create_permission(PEER, PEER2)) is None
    assert error_code(alice.create_permission(PEER, PEER3)) == 508
    assert set(world.server.allocations[alice.five_tuple].permissions) == {PEER.host, PEER2.host}
    assert error_code(alice.create_permission(PEER2, PEER)) is None
    assert world.server.stats["quota.permissions"] == 1


def test_channel_bind_counts_against_the_permission_quota() -> None:
    """§11.2: the permission a ChannelBind installs counts against the permission limit."""
    world = World(core_settings(max_permissions_per_allocation=2))
    alice = world.client()
    alice.allocate()
    assert error_code(alice.create_permission(PEER, PEER2)) is None
    assert error_code(alice.channel_bind(0x4000, PEER3)) == 508
    alloc = world.server.allocations[alice.five_tuple]
    assert set(alloc.permissions) == {PEER.host, PEER2.host} and alloc.channels == {}
    assert error_code(alice.channel_bind(0x4001, PEER2)) is None
