"""The kernel route cache: the core's established UDP channels as entries of the relay
program's maps (turnd.core.routes.RouteCache, implemented with BPF maps).

Each ChannelRoute is two entries: ``c2p`` (the client's ChannelData on that channel) and ``p2c``
(the peer's datagrams to the relayed address), each carrying where its packets go — the egress
interface is resolved from the kernel's routing table when the entry is installed — and its own
counters. An allocation with a packet or byte rate has one ``quotas`` entry shared by all its
routes. Counters are read as deltas: :meth:`collect` returns what moved since the last read, and
:meth:`remove` takes the entry out atomically with its final counts.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import time
from collections.abc import Callable

import attrs

from stun.addresses import Address
from turnd.core.actions import FiveTuple
from turnd.core.routes import ChannelRoute, RouteTraffic
from turnd.fastpath import maps
from turnd.fastpath.libbpf import BpfError, BpfMap, BpfObject, possible_cpus

#: Where an address is reached: (egress interface or maps.ROUTE_LOCAL, preferred source).
Resolver = Callable[[str], tuple[int, str | None]]


@attrs.define(slots=True)
class _Entry:
    """One installed route: its keys, quota group and the counters last read."""

    c2p: bytes
    p2c: bytes
    group: FiveTuple | None
    quota: int
    #: How its ends were reached at install: (peer's egress, client's egress, source address).
    where: tuple[int, int, Address]
    to_peer: maps.Counters = maps.NO_COUNTS
    to_client: maps.Counters = maps.NO_COUNTS
    #: Counts of entries replaced by a refresh, not read back yet.
    carried: RouteTraffic | None = None


class KernelRoutes:
    """The core's route cache in the relay program's maps."""

    def __init__(self, obj: BpfObject, resolve: Resolver, max_routes: int) -> None:
        self.c2p = obj.map("c2p", maps.C2P_KEY.size, maps.ROUTE.size)
        self.p2c = obj.map("p2c", maps.P2C_KEY.size, maps.ROUTE.size)
        self.quotas = obj.map("quotas", 4, maps.QUOTA.size)
        # A per-CPU array reads back one 8-byte counter per possible CPU.
        self.stats_map = BpfMap(obj.map("stats", 4, 8).fd, 8 * possible_cpus(), "stats")
        self.resolve = resolve
        self.max_routes = max_routes
        self.entries: dict[ChannelRoute, _Entry] = {}
        #: Quota group (an allocation's 5-tuple) -> (map key, routes using it).
        self.groups: dict[FiveTuple, tuple[int, int]] = {}
        self._next_group = 1
        #: Why installs (or refreshes, removals) failed, by reason (turnctl status).
        self.failures: dict[str, int] = {}
        #: Entries a refresh rewrote because the host's routes to their ends had moved.
        self.rerouted = 0

    # --- RouteCache --------------------------------------------------------------------------

    def install(self, route: ChannelRoute, packet_rate: float, byte_rate: float) -> bool:
        """Put ``route`` into the maps; False (counted by reason) when it cannot be held."""
        if route in self.entries:
            return True
        if len(self.entries) >= self.max_routes:
            return self._failed("table_full")
        if maps.family(route.five_tuple.client) != maps.family(route.peer):
            return self._failed("cross_family")
        where = self._where(route)
        if isinstance(where, str):
            return self._failed(where)
        group = None
        quota = 0
        if packet_rate != math.inf or byte_rate != math.inf:
            group = route.five_tuple
            try:
                quota = self._join_group(group, packet_rate, byte_rate)
            except BpfError:
                return self._failed("map_error")
        entry = _Entry(
            maps.c2p_key(route.five_tuple.client, route.five_tuple.server, route.number),
            maps.p2c_key(route.peer, route.relay),
            group,
            quota,
            where,
        )
        try:
            self._write(route, entry)
        except BpfError as exc:
            self.c2p.delete(entry.c2p)
            self._leave_group(group)
            return self._failed("table_full" if exc.errno == errno.E2BIG else "map_error")
        self.entries[route] = entry
        return True

    def refresh(self, route: ChannelRoute) -> None:
        """Look again at how ``route``'s ends are reached; where that changed (the host's routes
        moved), replace its entries, carrying their counts to the next read."""
        entry = self.entries.get(route)
        if entry is None:
            return
        where = self._where(route)
        if isinstance(where, str) or where == entry.where:
            return  # unreachable now: the entries stay as they were until removed
        try:
            to_peer = self.c2p.pop(entry.c2p)
            to_client = self.p2c.pop(entry.p2c)
            moved = _delta(
                entry,
                maps.counters(to_peer) if to_peer else entry.to_peer,
                maps.counters(to_client) if to_client else entry.to_client,
            )
            entry.carried = _sum(entry.carried, moved)
            entry.where = where
            entry.to_peer = entry.to_client = maps.NO_COUNTS
            self._write(route, entry)
        except BpfError:
            self.failures["refresh_error"] = self.failures.get("refresh_error", 0) + 1
            return
        self.rerouted += 1

    def _where(self, route: ChannelRoute) -> tuple[int, int, Address] | str:
        """(peer's egress, client's egress, the source the client is answered from), or why
        the route cannot be held."""
        client, server = route.five_tuple.client, route.five_tuple.server
        try:
            peer_oif, _ = self.resolve(route.peer.host)
            client_oif, client_source = self.resolve(client.host)
        except Exception:  # netlink's own errors too: the channel stays in userspace
            return "no_route"
        if not ipaddress.ip_address(server.host).is_unspecified:
            return peer_oif, client_oif, server
        if client_source is None:
            return "no_source_address"
        return peer_oif, client_oif, Address(client_source, server.port)

    def _write(self, route: ChannelRoute, entry: _Entry) -> None:
        """Write ``entry``'s two map values, with zeroed counters."""
        peer_oif, client_oif, source = entry.where
        self.c2p.update(
            entry.c2p, maps.route_value(route.relay, route.peer, 0, peer_oif, entry.quota)
        )
        self.p2c.update(
            entry.p2c,
            maps.route_value(
                source, route.five_tuple.client, route.number, client_oif, entry.quota
            ),
        )

    def remove(self, route: ChannelRoute) -> RouteTraffic:
        """Take ``route`` out of the maps; what it relayed since it was last read."""
        entry = self.entries.pop(route, None)
        if entry is None:
            return RouteTraffic()
        try:
            to_peer = self.c2p.pop(entry.c2p)
            to_client = self.p2c.pop(entry.p2c)
            self._leave_group(entry.group)
        except BpfError:  # not seen: the counts last read are what is known
            self.failures["remove_error"] = self.failures.get("remove_error", 0) + 1
            return entry.carried or RouteTraffic()
        final = _delta(
            entry,
            maps.counters(to_peer) if to_peer else entry.to_peer,
            maps.counters(to_client) if to_client else entry.to_client,
        )
        return _sum(entry.carried, final)

    def collect(self) -> list[tuple[ChannelRoute, RouteTraffic]]:
        """Every route whose counters moved since the last read, with what moved."""
        moved = []
        for route, entry in self.entries.items():
            try:
                to_peer = self.c2p.lookup(entry.c2p)
                to_client = self.p2c.lookup(entry.p2c)
            except BpfError:  # not seen: read again next time
                continue
            peer_counts = maps.counters(to_peer) if to_peer else entry.to_peer
            client_counts = maps.counters(to_client) if to_client else entry.to_client
            unchanged = peer_counts == entry.to_peer and client_counts == entry.to_client
            if unchanged and entry.carried is None:
                continue
            moved.append((route, _sum(entry.carried, _delta(entry, peer_counts, client_counts))))
            entry.carried = None
        return moved

    # --- the rest ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """The program's own counters, summed over CPUs (maps.STAT_NAMES)."""
        totals = {}
        for index, name in enumerate(maps.STAT_NAMES):
            value = self.stats_map.lookup(index.to_bytes(4, "little")) or b""
            totals[name] = sum(
                int.from_bytes(value[i : i + 8], "little") for i in range(0, len(value), 8)
            )
        return totals

    def _failed(self, reason: str) -> bool:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        return False

    def _join_group(self, group: FiveTuple, packet_rate: float, byte_rate: float) -> int:
        known = self.groups.get(group)
        if known is not None:
            self.groups[group] = (known[0], known[1] + 1)
            return known[0]
        key = self._next_group
        self._next_group = self._next_group % 0xFFFFFFFE + 1
        self.quotas.update(key.to_bytes(4, "little"), maps.quota_value(packet_rate, byte_rate))
        self.groups[group] = (key, 1)
        return key

    def _leave_group(self, group: FiveTuple | None) -> None:
        if group is None:
            return
        key, users = self.groups[group]
        if users > 1:
            self.groups[group] = (key, users - 1)
            return
        del self.groups[group]
        self.quotas.delete(key.to_bytes(4, "little"))


def _delta(entry: _Entry, to_peer: maps.Counters, to_client: maps.Counters) -> RouteTraffic:
    """What moved between ``entry``'s last read and these counters; they become the last read."""
    last_ns = max(to_peer.last_ns, to_client.last_ns)
    traffic = RouteTraffic(
        packets_to_peer=to_peer.packets - entry.to_peer.packets,
        bytes_to_peer=to_peer.bytes - entry.to_peer.bytes,
        packets_to_client=to_client.packets - entry.to_client.packets,
        bytes_to_client=to_client.bytes - entry.to_client.bytes,
        dropped_to_peer=to_peer.dropped - entry.to_peer.dropped,
        dropped_to_client=to_client.dropped - entry.to_client.dropped,
        last_seen=_wall_clock(last_ns) if last_ns else None,
    )
    entry.to_peer = to_peer
    entry.to_client = to_client
    return traffic


def _sum(carried: RouteTraffic | None, traffic: RouteTraffic) -> RouteTraffic:
    """``traffic`` plus what a refresh carried over (the later last use)."""
    if carried is None:
        return traffic
    seen = [t for t in (carried.last_seen, traffic.last_seen) if t is not None]
    return RouteTraffic(
        packets_to_peer=carried.packets_to_peer + traffic.packets_to_peer,
        bytes_to_peer=carried.bytes_to_peer + traffic.bytes_to_peer,
        packets_to_client=carried.packets_to_client + traffic.packets_to_client,
        bytes_to_client=carried.bytes_to_client + traffic.bytes_to_client,
        dropped_to_peer=carried.dropped_to_peer + traffic.dropped_to_peer,
        dropped_to_client=carried.dropped_to_client + traffic.dropped_to_client,
        last_seen=max(seen) if seen else None,
    )


def _wall_clock(monotonic_ns: int) -> float:
    """A bpf_ktime_get_ns() reading (CLOCK_MONOTONIC) as Unix time, the core's clock."""
    return time.time() - (time.monotonic_ns() - monotonic_ns) / maps.NS_PER_SECOND
