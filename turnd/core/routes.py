"""The route cache: established UDP channels handed to a faster data plane (the kernel fast path),
and what it relayed folded back into the core's accounting (DESIGN.md "Data plane and scale").

Theory of operation: the core stays the one source of truth. A cache (:class:`RouteCache`, the
adapter's eBPF maps, or testkit's in-memory one) holds copies of the core's live channels and
relays their ChannelData <-> peer datagrams itself; anything it does not hold reaches the core
as before. A channel's route is *live* iff

* its allocation is a UDP one (RFC 8656 over UDP; not RFC 6062 TCP, not a TCP/TLS client),
* its binding is unexpired (§12) and the permission for its peer's IP is live (§9),
* the server is not draining, and
* the client's address family is the peer's (an IPv4 client with an IPv6 relay stays here).

A live route is installed when it becomes live (ChannelBind, CreatePermission, the cache being
attached, drain ending) and removed when it stops being live (channel or permission expiry, the
end of its relay or allocation, drain starting, the cache being detached). Every removal and a
periodic read-back (:data:`ROUTE_COLLECT_INTERVAL`, and on demand before a scrape) credit the
cache's counters exactly as the userspace path counts: the relay's traffic counters (and its
``kernel_*`` ones, the part the cache relayed), the allocation's traffic budget (shared with
what userspace relays for it), the drop counters, the binding's last-seen time. A removal
credits before anything reports the relay's usage, so ``AllocationEnded`` carries the cache's
final counts.

Counters (in ``TurnServer.stats``): ``fastpath.installed``, ``fastpath.removed``,
``fastpath.install_refused`` (the cache did not take a live route: the core keeps relaying it),
``fastpath.packets_to_peer|bytes_to_peer|packets_to_client|bytes_to_client`` (relayed by the
cache), ``fastpath.orphan_packets`` (counted for a route whose relay is gone: ignored).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol

import attrs

from stun.addresses import Address, AddressFamily
from turnd.core.actions import UDP, Action, FiveTuple
from turnd.core.allocation import Allocation, ChannelBinding
from turnd.core.timers import TimerKind

if TYPE_CHECKING:
    from turnd.core.server import TurnServer

#: How often the cache's counters are read back while it holds routes: often enough that
#: metrics, usage and the shared per-allocation budget lag the kernel by at most a second, rare
#: enough that reading every entry costs nothing next to relaying.
ROUTE_COLLECT_INTERVAL = 1.0


@attrs.frozen
class ChannelRoute:
    """One established UDP channel, both ways: ChannelData from five_tuple's client on `number`
    goes from `relay` to `peer`; datagrams from `peer` to `relay` go to the client as
    ChannelData."""

    five_tuple: FiveTuple  # transport is always UDP; .client and .server (the listener address)
    number: int
    relay: Address  # the relayed address of the peer's family (alloc.relays[peer.family].address)
    peer: Address


@attrs.define(slots=True)
class RouteTraffic:
    """What the cache relayed (or dropped) for one route since it was last read."""

    packets_to_peer: int = 0
    bytes_to_peer: int = 0  # ChannelData payload bytes (no 4-byte header), as the core counts
    packets_to_client: int = 0
    bytes_to_client: int = 0
    dropped_to_peer: int = 0  # dropped over the allocation's packet/byte rate
    dropped_to_client: int = 0
    last_seen: float | None = None  # the core's clock (Unix seconds) of the last packet, if any


class RouteCache(Protocol):
    """A data plane relaying the routes the core installs (the adapter's kernel maps)."""

    def install(self, route: ChannelRoute, packet_rate: float, byte_rate: float) -> bool:
        """Start relaying `route`; rates are the allocation's (math.inf: no limit), enforced by the
        cache per allocation (five_tuple) over all its routes. False: not held (the cache is full
        or cannot relay this route); the core keeps relaying it and may try again later."""

    def remove(self, route: ChannelRoute) -> RouteTraffic:
        """Stop relaying `route`; what it relayed since last read (its final counts)."""

    def collect(self) -> list[tuple[ChannelRoute, RouteTraffic]]:
        """Every installed route that relayed or dropped anything since it was last read, with
        that."""

    def refresh(self, route: ChannelRoute) -> None:
        """The client refreshed installed `route` (ChannelBind, CreatePermission): the cache may
        look again at how it reaches the route's ends (a route of the host that changed)."""


# --- installing ----------------------------------------------------------------------------------


def live_route(
    server: TurnServer, alloc: Allocation, binding: ChannelBinding, now: float
) -> ChannelRoute | None:
    """``binding``'s route if it is live (see the module doc), else None."""
    five_tuple = alloc.five_tuple
    peer = binding.peer
    if (
        five_tuple.transport is not UDP
        or alloc.tcp
        or server.draining
        or alloc.channels.get(binding.number) is not binding
        or binding.expires <= now
        or not alloc.has_permission(peer.host, now)
        or five_tuple.client.family is not peer.family
    ):
        return None
    relay = alloc.relays[peer.family]  # a binding goes with its family's relay (§8.1)
    return ChannelRoute(five_tuple, binding.number, relay.address, peer)


def install(server: TurnServer, alloc: Allocation, binding: ChannelBinding, now: float) -> None:
    """Hand ``binding``'s route to the cache if one is attached, the route is live and it is not
    installed yet; an installed one is refreshed in the cache instead."""
    cache = server.routes
    if cache is None:
        return
    installed = alloc.routes.get(binding.number)
    if installed is not None:
        cache.refresh(installed)
        return
    route = live_route(server, alloc, binding, now)
    if route is None:
        return
    if not cache.install(route, server.packet_rate, server.byte_rate):
        server.stats["fastpath.install_refused"] += 1
        return
    alloc.routes[binding.number] = route
    server.stats["fastpath.installed"] += 1
    server.routes_installed += 1
    if not server.routes_timer:
        server.routes_timer = True
        server.timers.add(now + ROUTE_COLLECT_INTERVAL, TimerKind.ROUTES, None)


def install_hosts(
    server: TurnServer, alloc: Allocation, hosts: Collection[str], now: float
) -> None:
    """Install the bound channels of ``alloc`` whose peer IP is one of ``hosts`` (their
    permissions were just installed or refreshed)."""
    for binding in list(alloc.channels.values()):
        if binding.peer.host in hosts:
            install(server, alloc, binding, now)


def install_all(server: TurnServer, now: float) -> None:
    """Install every live route of every allocation."""
    for alloc in list(server.allocations.values()):
        for binding in list(alloc.channels.values()):
            install(server, alloc, binding, now)


# --- removing ------------------------------------------------------------------------------------


def remove(server: TurnServer, alloc: Allocation, number: int, now: float) -> None:
    """Take channel ``number``'s route back from the cache (if installed), crediting its final
    counts."""
    route = alloc.routes.pop(number, None)
    cache = server.routes
    if route is None or cache is None:
        return
    server.routes_installed -= 1
    server.stats["fastpath.removed"] += 1
    credit(server, route, cache.remove(route), now)


def remove_host(server: TurnServer, alloc: Allocation, host: str, now: float) -> None:
    """Remove ``alloc``'s routes to peer IP ``host`` (its permission ended)."""
    for number, route in list(alloc.routes.items()):
        if route.peer.host == host:
            remove(server, alloc, number, now)


def remove_families(
    server: TurnServer, alloc: Allocation, families: Collection[AddressFamily], now: float
) -> None:
    """Remove ``alloc``'s routes through the relays of ``families`` (they end)."""
    for number, route in list(alloc.routes.items()):
        if route.relay.family in families:
            remove(server, alloc, number, now)


def remove_all(server: TurnServer, now: float) -> None:
    """Remove every installed route."""
    for alloc in server.allocations.values():
        for number in list(alloc.routes):
            remove(server, alloc, number, now)


# --- accounting ----------------------------------------------------------------------------------


def credit(server: TurnServer, route: ChannelRoute, traffic: RouteTraffic, now: float) -> None:
    """Fold what the cache did for ``route`` into the core's counters, as the userspace path
    counts it; traffic of a route whose relay is gone is counted as orphaned and ignored."""
    stats = server.stats
    packets = traffic.packets_to_peer + traffic.packets_to_client
    octets = traffic.bytes_to_peer + traffic.bytes_to_client
    alloc = server.allocations.get(route.five_tuple)
    relay = None if alloc is None else alloc.relays.get(route.relay.family)
    if alloc is None or relay is None or relay.address != route.relay:
        stats["fastpath.orphan_packets"] += packets
        return
    relay.packets_to_peer += traffic.packets_to_peer
    relay.bytes_to_peer += traffic.bytes_to_peer
    relay.packets_to_client += traffic.packets_to_client
    relay.bytes_to_client += traffic.bytes_to_client
    relay.kernel_packets_to_peer += traffic.packets_to_peer
    relay.kernel_bytes_to_peer += traffic.bytes_to_peer
    relay.kernel_packets_to_client += traffic.packets_to_client
    relay.kernel_bytes_to_client += traffic.bytes_to_client
    alloc.charge(packets, octets, now, server.packet_rate, server.byte_rate)
    stats["drop.channel_data_allocation_rate"] += traffic.dropped_to_peer
    stats["drop.allocation_rate"] += traffic.dropped_to_client
    stats["fastpath.packets_to_peer"] += traffic.packets_to_peer
    stats["fastpath.bytes_to_peer"] += traffic.bytes_to_peer
    stats["fastpath.packets_to_client"] += traffic.packets_to_client
    stats["fastpath.bytes_to_client"] += traffic.bytes_to_client
    binding = alloc.channels.get(route.number)
    seen = traffic.last_seen
    if binding is not None and binding.peer == route.peer and seen is not None:
        binding.last_seen = max(seen, binding.last_seen or seen)


def collect(server: TurnServer, now: float) -> None:
    """Read back and credit what the cache relayed since it was last read."""
    cache = server.routes
    if cache is None:
        return
    for route, traffic in cache.collect():
        credit(server, route, traffic, now)


# --- the server's entry points -------------------------------------------------------------------


def attach(server: TurnServer, cache: RouteCache, now: float) -> None:
    """Use ``cache`` (replacing any attached one) and install every route live now."""
    if server.routes is not None:
        detach(server, now)
    server.routes = cache
    install_all(server, now)


def detach(server: TurnServer, now: float) -> None:
    """Remove every route (crediting their traffic) and stop using the cache."""
    remove_all(server, now)
    server.routes = None


def set_draining(server: TurnServer, on: bool, now: float) -> None:
    """Start or stop draining: its routes come back to userspace while it drains."""
    server.draining = on
    if server.routes is None:
        return
    if on:
        remove_all(server, now)
    else:
        install_all(server, now)


def routes_timer(server: TurnServer, subject: None, detail: None, now: float) -> list[Action]:
    """The periodic read-back: credit the cache's counters, again in
    :data:`ROUTE_COLLECT_INTERVAL` while routes are installed."""
    collect(server, now)
    if server.routes is not None and server.routes_installed > 0:
        server.timers.add(now + ROUTE_COLLECT_INTERVAL, TimerKind.ROUTES, None)
    else:
        server.routes_timer = False
    return []
