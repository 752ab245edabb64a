"""Relay port bookkeeping: which ports of the range are taken, and picking free ones.

The core decides the port and the adapter binds exactly that port (``OpenRelay``); if the kernel
refuses (another program holds it), the core marks it taken and tries another. Ports are chosen at
random (RFC 8656 §7.2 recommends unpredictable relay ports, RFC 6056) from an injected rng.

In a cluster the range is cut into slices and a node may only use its own (DESIGN.md, "The
cluster"): :meth:`PortPool.restrict` narrows the pool to those ports.

:class:`RelayPorts` is the server's view: one pool per relay address family that has a relay
host, and the ports held by EVEN-PORT R=1 reservations (RFC 8656 §7.2) until a later Allocate
claims them with their RESERVATION-TOKEN or they expire.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import attrs

from stun.addresses import Address, AddressFamily
from turnd.core.settings import CoreSettings

#: Random probes before falling back to a scan; with the range under 50 % full a probe almost
#: always hits, and the scan bounds the worst case.
RANDOM_PROBES = 16


class PortPool:
    """Taken ports of one relay address family inside [low, high] (or the owned part of it)."""

    def __init__(self, low: int, high: int, rng: Callable[[int], bytes]) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"bad relay port range {low}-{high}")
        self.low = low
        self.high = high
        self.rng = rng
        self.taken: set[int] = set()
        self.restrict([(low, high)])

    def restrict(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Pick only from ``ranges`` (inclusive, inside [low, high]); taken ports stay taken."""
        merged: list[tuple[int, int]] = []
        for first, last in sorted(ranges):
            if not self.low <= first <= last <= self.high:
                raise ValueError(f"port range {first}-{last} is outside {self.low}-{self.high}")
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
            else:
                merged.append((first, last))
        self.ranges = merged
        #: Index of each range's first port among all usable ports, for bisect.
        self._offsets: list[int] = []
        total = 0
        for first, last in merged:
            self._offsets.append(total)
            total += last - first + 1
        self.size = total

    def port_at(self, index: int) -> int:
        """The ``index``-th usable port (0 <= index < size)."""
        slot = bisect.bisect_right(self._offsets, index) - 1
        return self.ranges[slot][0] + index - self._offsets[slot]

    def _random_index(self) -> int:
        return int.from_bytes(self.rng(4), "big") % self.size

    def pick(self, *, even_pair: bool = False) -> int | None:
        """A free port (with ``even_pair``: an even port P with P+1 free too), or None if full."""
        if not self.size:
            return None
        for _ in range(RANDOM_PROBES):
            port = self.port_at(self._random_index())
            if even_pair:
                port &= ~1
            if self._free(port, even_pair):
                return port
        start = self._random_index()
        for i in range(self.size):
            port = self.port_at((start + i) % self.size)
            if even_pair and port % 2:
                continue
            if self._free(port, even_pair):
                return port
        return None

    def _usable(self, port: int) -> bool:
        slot = bisect.bisect_right(self.ranges, (port, 65536)) - 1
        return slot >= 0 and port <= self.ranges[slot][1]

    def _free(self, port: int, pair: bool) -> bool:
        if port in self.taken or not self._usable(port):
            return False
        if pair:
            return self._usable(port + 1) and port + 1 not in self.taken
        return True

    def take(self, port: int) -> None:
        """Mark ``port`` as used."""
        self.taken.add(port)

    def release(self, port: int) -> None:
        """Mark ``port`` as free again."""
        self.taken.discard(port)


@attrs.define(slots=True)
class Reservation:
    """A relay port held by EVEN-PORT R=1 for a later Allocate (RFC 8656 §7.2)."""

    relay: Address
    expires: float


class RelayPorts:
    """The relay hosts, a :class:`PortPool` per family with a host, and the reservations."""

    def __init__(self, settings: CoreSettings, rng: Callable[[int], bytes]) -> None:
        self._hosts = {
            AddressFamily.IPV4: settings.relay_ipv4,
            AddressFamily.IPV6: settings.relay_ipv6,
        }
        self._pools = {
            family: PortPool(settings.port_min, settings.port_max, rng)
            for family, host in self._hosts.items()
            if host is not None
        }
        self._reservations: dict[bytes, Reservation] = {}
        if settings.port_ranges is not None:
            self.restrict(settings.port_ranges)

    @property
    def pools(self) -> Mapping[AddressFamily, PortPool]:
        """Family -> its pool; a read-only view."""
        return MappingProxyType(self._pools)

    @property
    def reservations(self) -> Mapping[bytes, Reservation]:
        """Token -> reservation (expired ones stay until their timer); a read-only view."""
        return MappingProxyType(self._reservations)

    def restrict(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Pick new relay ports only from ``ranges`` (a cluster node's slices); live relays stay."""
        for pool in self._pools.values():
            pool.restrict(ranges)

    def host(self, family: AddressFamily) -> str | None:
        """The relay host of ``family``, or None: the server has no relay of that family."""
        return self._hosts[family]

    def pick(self, family: AddressFamily, *, even_pair: bool = False) -> int | None:
        """A free port of ``family`` (which has a host), see :meth:`PortPool.pick`."""
        return self._pools[family].pick(even_pair=even_pair)

    def take(self, relay: Address, *, pair: bool = False) -> None:
        """Mark ``relay``'s port (and with ``pair`` the next one) taken."""
        pool = self._pools[relay.family]
        pool.take(relay.port)
        if pair:
            pool.take(relay.port + 1)

    def release(self, relay: Address, *, pair: bool = False) -> None:
        """Give ``relay``'s port (and with ``pair`` the next one) back."""
        pool = self._pools[relay.family]
        pool.release(relay.port)
        if pair:
            pool.release(relay.port + 1)

    def reserve(self, token: bytes, relay: Address, until: float) -> None:
        """Hold ``relay`` (already taken) for ``token`` until ``until``."""
        self._reservations[token] = Reservation(relay, until)

    def claim(self, token: bytes, now: float) -> Address | None:
        """The reserved relay of ``token``, now the claimer's; None if unknown or expired (an
        expired one stays for its timer, which releases the port and the socket)."""
        resv = self._reservations.get(token)
        if resv is None or resv.expires <= now:
            return None
        del self._reservations[token]
        return resv.relay

    def expire(self, token: bytes, now: float) -> Address | None:
        """``token``'s timer: the released relay if the reservation is still held and due."""
        resv = self._reservations.get(token)
        if resv is None or resv.expires > now:
            return None
        del self._reservations[token]
        self.release(resv.relay)
        return resv.relay
