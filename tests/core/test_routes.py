"""The route cache of the kernel fast path (turnd.core.routes): which channels the core installs
and when it takes them back, and how the cache's counters fold into relay usage, the allocation's
rate budget, drop counters and ``fastpath.*`` — driven through testkit's MemoryRouteCache."""

from __future__ import annotations

from typing import Any

from stun import attributes as at
from stun.addresses import Address, AddressFamily
from stun.channeldata import frame_channel_data
from testkit.memory import MemoryClient, MemoryRouteCache
from tests.core.harness import (
    PEER,
    PEER2,
    SERVER,
    Client,
    World,
    core_settings,
    delivered,
    error_code,
)
from turnd.core import routes
from turnd.core.actions import AllocationEnded, SendToPeer, Transport
from turnd.core.allocation import Allocation
from turnd.core.routes import ROUTE_COLLECT_INTERVAL, ChannelRoute, RouteTraffic
from turnd.core.teardown import TRAFFIC_COUNTERS
from turnd.core.timers import TimerKind

CH = 0x4000
CH2 = 0x4001
UDP = at.RequestedTransport(17)
RELAY6 = "2001:db8::1"
PEER6 = Address("2001:db8::7", 40000)
CLIENT6 = Address("2001:db8:1::5", 50000)
SERVER6 = Address("2001:db8::2", 3478)


def bound(**settings: Any) -> tuple[World, Client, MemoryRouteCache]:
    """A world with a route cache and alice's channel CH to PEER (allocation for 3600 s)."""
    world = World(core_settings(**settings), routes=True)
    alice = world.client()
    alice.allocate(UDP, at.Lifetime(3600))
    assert error_code(alice.channel_bind(CH, PEER)) is None
    assert world.routes is not None
    return world, alice, world.routes


def route_of(client: MemoryClient, number: int = CH, peer: Address = PEER) -> ChannelRoute:
    return ChannelRoute(client.five_tuple, number, client.relayed, peer)


def alloc_of(world: World, client: MemoryClient) -> Allocation:
    return world.server.allocations[client.five_tuple]


def ended(actions: list[Any]) -> list[AllocationEnded]:
    return [a for a in actions if isinstance(a, AllocationEnded)]


def usage(end: AllocationEnded) -> tuple[int, int, int, int]:
    return (end.packets_to_peer, end.bytes_to_peer, end.packets_to_client, end.bytes_to_client)


def kernel_usage(end: AllocationEnded) -> tuple[int, int, int, int]:
    return (
        end.kernel_packets_to_peer,
        end.kernel_bytes_to_peer,
        end.kernel_packets_to_client,
        end.kernel_bytes_to_client,
    )


def kernel_counters(alloc: Allocation) -> tuple[int, ...]:
    """The relays' kernel_* counters, summed, in TRAFFIC_COUNTERS order."""
    return tuple(
        sum(getattr(r, "kernel_" + c) for r in alloc.relays.values()) for c in TRAFFIC_COUNTERS
    )


def reaches_core(world: World, client: MemoryClient, number: int = CH) -> bool:
    """Whether ChannelData on ``number`` now goes to the core (it relays or drops it, counted),
    not to the cache."""
    cache = MemoryRouteCache() if world.routes is None else world.routes

    def seen() -> tuple[int, int, int]:
        relayed = alloc_of(world, client).packets_to_peer
        return (
            cache.total.packets_to_peer + cache.total.dropped_to_peer,
            relayed,
            sum(world.server.stats.values()),
        )

    before = seen()
    client.channel_data(number, b"probe")
    after = seen()
    return after[0] == before[0] and after[1:] != before[1:]


# --- installing ----------------------------------------------------------------------------------


def test_channel_bind_installs_the_route_and_the_cache_relays_both_ways() -> None:
    """A new UDP channel with its permission is live: the cache holds it and relays it."""
    world, alice, cache = bound()
    assert cache.installed == {route_of(alice)}
    assert alloc_of(world, alice).routes == {CH: route_of(alice)}
    assert alice.channel_data(CH, b"hi") == [SendToPeer(alice.relayed, PEER, b"hi")]
    assert delivered(world.peer_packet(alice.relayed, PEER, b"yo"), alice) == [
        ("channel", (CH, b"yo"))
    ]
    assert cache.total.packets_to_peer == cache.total.packets_to_client == 1
    assert alloc_of(world, alice).packets_to_peer == 0  # not read back yet
    assert world.server.stats["fastpath.installed"] == 1


def test_refreshing_an_installed_channel_installs_nothing_more() -> None:
    """A ChannelBind refresh of an installed route installs nothing more; the cache is told
    the route was refreshed (so it may look again at how it reaches the route's ends), as it
    is by a CreatePermission refreshing the peer's permission."""
    world, alice, cache = bound()
    assert cache.refreshed == []
    alice.channel_bind(CH, PEER)
    assert cache.installed == {route_of(alice)}
    assert world.server.stats["fastpath.installed"] == 1
    assert cache.refreshed == [route_of(alice)]
    alice.create_permission(PEER)
    assert cache.refreshed == [route_of(alice)] * 2


def test_attaching_a_cache_installs_every_live_route() -> None:
    """attach_routes installs the channels that are live already; a later one too."""
    world = World()
    alice = world.client()
    alice.allocate(UDP, at.Lifetime(3600))
    alice.channel_bind(CH, PEER)
    assert alloc_of(world, alice).routes == {}
    cache = world.attach_routes()
    assert cache.installed == {route_of(alice)}
    alice.channel_bind(CH2, PEER2)
    assert cache.installed == {route_of(alice), route_of(alice, CH2, PEER2)}


def test_without_a_cache_nothing_is_installed_or_scheduled() -> None:
    """No cache: no routes and no read-back timer."""
    world = World()
    alice = world.client()
    alice.allocate()
    alice.channel_bind(CH, PEER)
    assert alloc_of(world, alice).routes == {}
    assert TimerKind.ROUTES not in [entry[2] for entry in world.server.timers.entries()]


def test_ipv4_client_with_an_ipv6_peer_is_never_installed_nor_asked() -> None:
    """An IPv4 client's channel to an IPv6 peer stays in userspace; the cache is not asked."""
    asked: list[ChannelRoute] = []
    world = World(core_settings(relay_ipv6=RELAY6))
    world.attach_routes(MemoryRouteCache(refuse=lambda r: asked.append(r) is not None))
    alice = world.client()
    alice.allocate(UDP, at.AdditionalAddressFamily(AddressFamily.IPV6), at.Lifetime(3600))
    assert error_code(alice.channel_bind(CH, PEER6)) is None
    assert alloc_of(world, alice).routes == {} and asked == []
    assert world.server.stats["fastpath.install_refused"] == 0
    relay6 = alloc_of(world, alice).relays[AddressFamily.IPV6].address
    assert alice.channel_data(CH, b"x") == [SendToPeer(relay6, PEER6, b"x")]


def test_ipv6_client_with_an_ipv6_relay_is_installed() -> None:
    """Same family both sides (IPv6): installed, relayed by the cache."""
    world = World(core_settings(relay_ipv6=RELAY6), routes=True)
    bob = MemoryClient(world, "bob", "bob-pw", address=CLIENT6, server=SERVER6, max_retries=1)
    bob.allocate(UDP, at.RequestedAddressFamily(AddressFamily.IPV6))
    bob.channel_bind(CH, PEER6)
    assert world.routes is not None
    assert world.routes.installed == {route_of(bob, CH, PEER6)}
    assert bob.channel_data(CH, b"6") == [SendToPeer(bob.relayed, PEER6, b"6")]
    assert world.routes.total.packets_to_peer == 1


def test_stream_clients_never_install() -> None:
    """A UDP relay used over TCP or TLS: ChannelData is framed on a stream, never installed."""
    for transport in (Transport.TCP, Transport.TLS):
        world = World(routes=True)
        alice = world.client(transport=transport)
        alice.allocate(UDP)
        assert error_code(alice.channel_bind(CH, PEER)) is None
        assert alloc_of(world, alice).routes == {}


def test_rfc6062_tcp_allocations_never_install() -> None:
    """RFC 6062 TCP allocations relay over peer connections: nothing to install."""
    world = World(routes=True)
    alice = world.client(transport=Transport.TCP)
    alice.allocate(at.RequestedTransport(6))
    alice.create_permission(PEER)
    assert alloc_of(world, alice).tcp and alloc_of(world, alice).routes == {}
    assert world.routes is not None and world.routes.installed == set()


def test_refused_install_is_counted_and_the_core_keeps_relaying() -> None:
    """install() False: fastpath.install_refused, not recorded; the core relays; tried again."""
    world = World()
    cache = world.attach_routes(MemoryRouteCache(capacity=0))
    alice = world.client()
    alice.allocate()
    alice.channel_bind(CH, PEER)
    assert world.server.stats["fastpath.install_refused"] == 1
    assert alloc_of(world, alice).routes == {} and cache.installed == set()
    assert alice.channel_data(CH, b"x") == [SendToPeer(alice.relayed, PEER, b"x")]
    assert alloc_of(world, alice).packets_to_peer == 1
    cache.capacity = 1
    alice.create_permission(PEER)
    assert cache.installed == {route_of(alice)}


def test_padded_channel_data_is_left_to_the_core() -> None:
    """Over UDP only an exact 4+length datagram is the cache's; a padded one reaches the core."""
    world, alice, cache = bound()
    world.client_packet(alice.five_tuple, frame_channel_data(CH, b"x", pad=True))
    assert cache.total.packets_to_peer == 0
    assert alloc_of(world, alice).packets_to_peer == 1


# --- accounting ----------------------------------------------------------------------------------


def test_collect_credits_relay_counters_fastpath_counters_and_last_seen() -> None:
    """collect_routes adds the cache's traffic to the relay and fastpath.*, once."""
    world, alice, _ = bound()
    for _ in range(3):
        alice.channel_data(CH, b"abcd")
    world.now += 0.5
    world.peer_packet(alice.relayed, PEER, b"xy")
    world.server.collect_routes(world.now)
    alloc = alloc_of(world, alice)
    assert (alloc.packets_to_peer, alloc.bytes_to_peer) == (3, 12)
    assert (alloc.packets_to_client, alloc.bytes_to_client) == (1, 2)
    stats = world.server.stats
    assert [stats["fastpath." + c] for c in TRAFFIC_COUNTERS] == [3, 12, 1, 2]
    assert alloc.channels[CH].last_seen == world.now
    assert kernel_counters(alloc) == (3, 12, 1, 2)
    world.server.collect_routes(world.now)
    assert alloc.packets_to_peer == 3 and stats["fastpath.packets_to_peer"] == 3
    assert kernel_counters(alloc) == (3, 12, 1, 2)
    assert world.server.traffic()["packets_to_peer"] == 3


def test_kernel_traffic_spends_the_allocation_budget_userspace_shares() -> None:
    """What the cache relayed is charged to the userspace budget: Send indications get the rest."""
    world, alice, _ = bound(allocation_packet_rate=5, allocation_byte_rate=0)
    for _ in range(3):
        assert len(alice.channel_data(CH, b"k")) == 1
    world.server.collect_routes(world.now)
    assert [len(alice.send(PEER, b"u")) for _ in range(3)] == [1, 1, 0]
    assert world.server.stats["drop.send_allocation_rate"] == 1


def test_the_cache_drops_over_the_rate_and_the_core_counts_them() -> None:
    """Both directions share the cache's per-allocation rate; its drops land in the core's
    drop.channel_data_allocation_rate and drop.allocation_rate."""
    world, alice, _ = bound(allocation_packet_rate=2, allocation_byte_rate=0)
    assert [len(alice.channel_data(CH, b"z")) for _ in range(3)] == [1, 1, 0]
    assert world.peer_packet(alice.relayed, PEER, b"p") == []
    world.server.collect_routes(world.now)
    stats = world.server.stats
    assert stats["drop.channel_data_allocation_rate"] == 1
    assert stats["drop.allocation_rate"] == 1
    assert alloc_of(world, alice).packets_to_peer == 2


def test_the_read_back_timer_runs_while_routes_are_installed() -> None:
    """Every ROUTE_COLLECT_INTERVAL the counters are read back; the timer stops with no routes."""
    world, alice, _ = bound()
    alice.channel_data(CH, b"t")
    world.advance(ROUTE_COLLECT_INTERVAL)
    assert alloc_of(world, alice).packets_to_peer == 1
    alice.channel_data(CH, b"t")
    world.advance(ROUTE_COLLECT_INTERVAL)
    assert alloc_of(world, alice).packets_to_peer == 2
    world.server.set_draining(True, world.now)
    world.advance(ROUTE_COLLECT_INTERVAL)
    assert TimerKind.ROUTES not in [entry[2] for entry in world.server.timers.entries()]
    world.server.set_draining(False, world.now)
    assert TimerKind.ROUTES in [entry[2] for entry in world.server.timers.entries()]


def test_userspace_traffic_leaves_the_kernel_counters_alone() -> None:
    """Only what the cache relayed lands in kernel_*: Send indications, Data indications and
    ChannelData of a channel the cache does not hold count in the totals alone."""
    world, alice, _ = bound()
    alice.create_permission(PEER2)
    alice.send(PEER2, b"send")
    world.peer_packet(alice.relayed, PEER2, b"data")
    world.server.set_draining(True, world.now)  # CH comes back to userspace
    alice.channel_data(CH, b"core")
    world.server.collect_routes(world.now)
    alloc = alloc_of(world, alice)
    assert (alloc.packets_to_peer, alloc.packets_to_client) == (2, 1)
    assert kernel_counters(alloc) == (0, 0, 0, 0)
    world.server.set_draining(False, world.now)
    alice.channel_data(CH, b"kernel")
    [end] = ended(world.server.kill(alice.five_tuple, world.now))
    assert usage(end) == (3, 14, 1, 4)
    assert kernel_usage(end) == (1, 6, 0, 0)


def test_traffic_of_a_route_whose_allocation_is_gone_is_orphaned() -> None:
    """Counts for a route with no allocation behind it are counted and otherwise ignored."""
    world, alice, _ = bound()
    route = route_of(alice)
    alice.refresh(0)
    routes.credit(world.server, route, RouteTraffic(packets_to_peer=2, bytes_to_peer=9), world.now)
    assert world.server.stats["fastpath.orphan_packets"] == 2
    assert world.server.stats["fastpath.packets_to_peer"] == 0


# --- removing ------------------------------------------------------------------------------------


def test_channel_expiry_removes_the_route_with_its_final_counts() -> None:
    """§12: the binding expires: the route leaves the cache, credited; ChannelData is the core's."""
    world, alice, cache = bound(permission_lifetime=3600)
    world.advance(599.5)
    alice.channel_data(CH, b"last")
    world.advance(0.5)
    assert cache.installed == set() and alloc_of(world, alice).routes == {}
    assert alloc_of(world, alice).packets_to_peer == 1
    assert reaches_core(world, alice)
    assert world.server.stats["drop.channel_data_unbound"] == 1


def test_permission_expiry_removes_the_route_and_create_permission_reinstalls_it() -> None:
    """§9: the permission expires under a live binding: removed; CreatePermission brings it back."""
    world, alice, cache = bound()
    world.advance(300)
    assert cache.installed == set()
    assert reaches_core(world, alice)
    assert world.server.stats["drop.channel_data_no_permission"] == 1
    alice.create_permission(PEER)
    assert cache.installed == {route_of(alice)}


def test_channel_bind_refresh_reinstalls_after_permission_expiry() -> None:
    """A ChannelBind refresh re-creates the permission and with it the route."""
    world, alice, cache = bound()
    world.advance(300)
    assert cache.installed == set()
    alice.channel_bind(CH, PEER)
    assert cache.installed == {route_of(alice)}


def test_permission_expiry_removes_only_that_hosts_routes() -> None:
    """Only the routes to the expired permission's IP leave."""
    world, alice, cache = bound()
    world.advance(200)
    alice.channel_bind(CH2, PEER2)
    world.advance(100)
    assert cache.installed == {route_of(alice, CH2, PEER2)}


def test_refresh_0_ends_with_exact_totals_of_userspace_and_the_cache() -> None:
    """§8: the allocation ends; AllocationEnded counts what both planes relayed."""
    world, alice, cache = bound()
    alice.create_permission(PEER2)
    alice.channel_data(CH, b"12345")  # cache
    world.peer_packet(alice.relayed, PEER, b"abc")  # cache
    alice.send(PEER2, b"zz")  # userspace
    world.peer_packet(alice.relayed, PEER2, b"q")  # userspace (a Data indication)
    alice.raw(alice.session.refresh(0).data)
    [end] = ended(alice.last_actions)
    assert usage(end) == (2, 7, 2, 4)
    assert kernel_usage(end) == (1, 5, 1, 3)  # the cache's part only
    assert cache.installed == set()
    assert world.server.traffic()["bytes_to_peer"] == 7


def test_relay_expiry_removes_the_route_before_the_usage_is_reported() -> None:
    """§7: the relay expires: removed, and its usage includes the cache's counts."""
    world = World(core_settings(permission_lifetime=3600, channel_lifetime=3600), routes=True)
    alice = world.client()
    alice.allocate()
    alice.channel_bind(CH, PEER)
    world.advance(599)
    alice.channel_data(CH, b"end")
    [end] = ended(world.advance(1))
    assert usage(end)[:2] == (1, 3)
    assert world.routes is not None and world.routes.installed == set()


def test_kill_and_revoke_remove_the_routes() -> None:
    """An operator's kill and a revocation end the allocation and take its routes back."""
    for end_it in ("kill", "revoke"):
        world, alice, cache = bound()
        alice.channel_data(CH, b"k")
        server = world.server
        if end_it == "kill":
            actions = server.kill(alice.five_tuple, world.now)
        else:
            actions = server.revoke("alice", world.now)
        assert cache.installed == set()
        assert usage(ended(actions)[0])[:2] == (1, 1)


def test_a_family_ending_alone_takes_its_routes_only() -> None:
    """§8.1: Refresh 0 of one family of a dual allocation removes that relay's routes alone."""
    world = World(core_settings(relay_ipv6=RELAY6), routes=True)
    bob = MemoryClient(world, "bob", "bob-pw", address=CLIENT6, server=SERVER6, max_retries=1)
    bob.allocate(UDP, at.AdditionalAddressFamily(AddressFamily.IPV6), at.Lifetime(3600))
    relay6 = alloc_of(world, bob).relays[AddressFamily.IPV6].address
    bob.channel_bind(CH, PEER6)
    bob.channel_bind(CH2, PEER)  # IPv6 client, IPv4 peer: stays in userspace
    route6 = ChannelRoute(bob.five_tuple, CH, relay6, PEER6)
    assert world.routes is not None and world.routes.installed == {route6}
    bob.channel_data(CH, b"v6")
    bob.refresh(0, at.RequestedAddressFamily(AddressFamily.IPV4))
    assert world.routes.installed == {route6}
    bob.refresh(0, at.RequestedAddressFamily(AddressFamily.IPV6))
    [end] = ended(bob.last_actions)
    assert end.relay == relay6 and usage(end)[:2] == (1, 2)
    assert world.routes.installed == set()


def test_an_uninstalled_channel_expiring_leaves_the_installed_ones() -> None:
    """A refused channel's expiry removes nothing from the cache."""
    world = World(core_settings(permission_lifetime=3600))
    cache = world.attach_routes(MemoryRouteCache(capacity=1))
    alice = world.client()
    alice.allocate(UDP, at.Lifetime(3600))
    alice.channel_bind(CH, PEER)
    world.advance(100)
    alice.channel_bind(CH2, PEER2)  # refused: the cache is full
    world.advance(450)
    alice.channel_bind(CH, PEER)  # refreshed past CH2's expiry
    world.advance(200)
    assert CH2 not in alloc_of(world, alice).channels
    assert cache.installed == {route_of(alice)}


def test_attaching_a_second_cache_takes_the_routes_from_the_first() -> None:
    """attach_routes replaces an attached cache: its routes move, its counts are credited."""
    world, alice, first = bound()
    alice.channel_data(CH, b"1")
    second = world.attach_routes()
    assert first.installed == set() and second.installed == {route_of(alice)}
    assert alloc_of(world, alice).packets_to_peer == 1


def test_draining_removes_every_route_and_ending_it_reinstalls_them() -> None:
    """set_draining(True) brings the routes back to userspace; False installs them again."""
    world, alice, cache = bound()
    alice.channel_data(CH, b"d")
    world.server.set_draining(True, world.now)
    assert world.server.draining and cache.installed == set()
    assert alloc_of(world, alice).packets_to_peer == 1
    assert reaches_core(world, alice)
    assert alloc_of(world, alice).packets_to_peer == 2
    alice.channel_bind(CH2, PEER2)
    assert cache.installed == set()  # not while draining
    world.server.set_draining(False, world.now)
    assert cache.installed == {route_of(alice), route_of(alice, CH2, PEER2)}


def test_attaching_while_draining_installs_nothing() -> None:
    """A draining server hands no routes to a newly attached cache."""
    world = World()
    alice = world.client()
    alice.allocate()
    alice.channel_bind(CH, PEER)
    world.server.set_draining(True, world.now)
    assert world.attach_routes().installed == set()


def test_detaching_credits_and_removes_every_route() -> None:
    """detach_routes (shutdown): every route removed and credited; packets go to the core."""
    world, alice, cache = bound()
    alice.channel_data(CH, b"s")
    world.detach_routes()
    assert cache.installed == set() and world.server.routes is None
    assert alloc_of(world, alice).routes == {}
    assert alloc_of(world, alice).packets_to_peer == 1
    assert alice.channel_data(CH, b"s") == [SendToPeer(alice.relayed, PEER, b"s")]
    assert alloc_of(world, alice).packets_to_peer == 2


def test_listener_address_is_the_five_tuples_server() -> None:
    """The route names the listener the client sent to (the kernel answers from it)."""
    _, alice, cache = bound()
    [route] = cache.installed
    assert route.five_tuple.server == SERVER and route.relay == alice.relayed
