"""Refresh and the end of allocations: a relay's expiry, Refresh with LIFETIME 0, an operator's
kill, a revocation, a closed stream connection (RFC 8656 §7, §8; RFC 6062 §5.5).

Theory of operation: a dual allocation's relays expire, are refreshed and are deleted one by one
(§8.1); the allocation ends with its last relay. Every relay that ends is closed with its usage
(``AllocationEnded``), its port goes back to its pool and its traffic is added to the server's
``relayed.*`` totals — its routes leave the fast path's cache first (turnd.core.routes), so that
usage includes the cache's final counts; a family ending alone takes its permissions and channels
with it. When the
allocation ends its quotas are given back and its timers become stale (turnd.core.timers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stun import attributes as at
from stun.addresses import AddressFamily
from turnd.core import routes, tcp_relay
from turnd.core.actions import Action, AllocationEnded, CloseConnection, CloseRelay, SendToClient
from turnd.core.allocate import lifetime
from turnd.core.allocation import Allocation, Relay
from turnd.core.request import Request, StunError
from turnd.core.timers import TimerKind

if TYPE_CHECKING:
    from turnd.core.server import TurnServer

#: The per-relay traffic counters (allocation.Relay) summed into ``relayed.*`` and traffic().
TRAFFIC_COUNTERS = ("packets_to_peer", "bytes_to_peer", "packets_to_client", "bytes_to_client")


def handle_refresh(server: TurnServer, request: Request) -> list[Action]:
    """RFC 8656 §8.2: extend the allocation, or delete it with LIFETIME 0. With
    REQUESTED-ADDRESS-FAMILY only that family's relay (§8.1: one half of a dual allocation);
    a family the allocation has no relay of is 443."""
    alloc = server.own_allocation(request)
    families = list(alloc.relays)
    family = request.message.get(at.RequestedAddressFamily)
    if family is not None:
        if family.family not in alloc.relays:
            raise StunError(443)
        families = [AddressFamily(family.family)]
    requested = request.message.get(at.Lifetime)
    if requested is not None and requested.seconds == 0:
        actions = delete(server, alloc, request.now, "deleted", families=families)
        reply = server.responses.success(request, at.Lifetime(0))
        return [SendToClient(request.five_tuple, reply), *actions]
    seconds = lifetime(server.settings, request.message)
    for refreshed in families:  # their timers re-arm themselves (relay_timer)
        alloc.relays[refreshed].expires = request.now + seconds
    answer = server.responses.success(request, at.Lifetime(int(seconds)))
    return server.reply(request.five_tuple, answer)


def relay_timer(server: TurnServer, alloc: Allocation, relay: Relay, now: float) -> list[Action]:
    """One relay's expiry: it ends (and the allocation with its last relay) or re-arms."""
    if alloc.relays.get(relay.address.family) is not relay:
        return []  # deleted already
    if relay.expires > now:
        server.timers.add(relay.expires, TimerKind.RELAY, alloc, relay)
        return []
    return delete(server, alloc, now, "expired", families=[relay.address.family])


def delete(
    server: TurnServer,
    alloc: Allocation,
    now: float,
    reason: str,
    *,
    families: list[AddressFamily] | None = None,
    close_connection: bool = True,
) -> list[Action]:
    """End the relays of ``families`` (all by default); the allocation ends with its last.

    Each relay closes with its usage (AllocationEnded), and its peer connections with it
    (RFC 6062 §5.5). A family ending alone takes its permissions and channels (§8.1)."""
    stats = server.stats
    gone = list(alloc.relays) if families is None else families
    if alloc.routes:  # the cache's final counts go into the usage below
        routes.remove_families(server, alloc, gone, now)
    actions: list[Action] = []
    for family in gone:
        relay = alloc.relays.pop(family)
        for counter in TRAFFIC_COUNTERS:
            stats["relayed." + counter] += getattr(relay, counter)
        del server.by_relay[relay.address]
        server.ports.release(relay.address)
        actions.append(CloseRelay(relay.address))
        actions.append(
            AllocationEnded(
                alloc.five_tuple,
                relay.address,
                alloc.username,
                alloc.rest_id,
                alloc.started,
                now,
                reason,
                relay.packets_to_peer,
                relay.bytes_to_peer,
                relay.packets_to_client,
                relay.bytes_to_client,
                relay.kernel_packets_to_peer,
                relay.kernel_bytes_to_peer,
                relay.kernel_packets_to_client,
                relay.kernel_bytes_to_client,
            )
        )
    if alloc.tcp:
        actions += tcp_relay.close_all(server, alloc, gone)
    if alloc.relays:
        stats["relays.ended." + reason] += 1
        for family in gone:
            for number, until in alloc.forget_family(family, now):
                server.timers.add(until, TimerKind.COOLING, alloc, number)
        return actions
    five_tuple = alloc.five_tuple
    del server.allocations[five_tuple]
    server.quotas.forget(alloc.username, five_tuple.client.host)
    forget_timers(server, alloc, len(gone))
    stats["allocations.ended." + reason] += 1
    if close_connection and five_tuple.transport.is_stream and reason != "deleted":
        actions.append(CloseConnection(five_tuple))
    return actions


def forget_timers(server: TurnServer, alloc: Allocation, relays: int) -> None:
    """``alloc`` ended: empty what its timers look at (so a late one does nothing, and a
    channel timer schedules no reuse delay), count its heap entries as stale (one per relay,
    permission, channel and cooling number), so that an ended allocation is freed once stale
    entries are half the heap rather than when its last timer falls due."""
    stale = relays + len(alloc.permissions) + len(alloc.channels) + len(alloc.cooling)
    alloc.permissions.clear()
    alloc.channels.clear()
    alloc.channel_by_peer.clear()
    alloc.cooling.clear()
    alloc.peers_seen.clear()
    live = server.allocations

    def ended(subject: object) -> bool:
        return type(subject) is Allocation and live.get(subject.five_tuple) is not subject

    server.timers.stale(stale, ended)


def traffic(server: TurnServer) -> dict[str, int]:
    """Packets and bytes relayed each way since start: ended relays plus live ones."""
    totals = {counter: server.stats["relayed." + counter] for counter in TRAFFIC_COUNTERS}
    for alloc in server.allocations.values():
        for relay in alloc.relays.values():
            for counter in TRAFFIC_COUNTERS:
                totals[counter] += getattr(relay, counter)
    return totals
