"""Allocation state: relayed addresses, permissions, channel bindings and their clocks (RFC 8656
§5, §7.2, §8, §9, §12).

Theory of operation: an :class:`Allocation` is named by its 5-tuple and by each of its relayed
transport addresses; all are unique (§5). It holds

* one :class:`Relay` per address family: one, or an IPv4 and an IPv6 one for a dual allocation
  (§7.2). Each has its own expiry and usage counters, because a Refresh with
  REQUESTED-ADDRESS-FAMILY refreshes or deletes that family alone (§8.1); the allocation ends
  with its last relay. A peer is always reached through the relay of its own family (§9: 443).

* permissions: peer IP -> expiry. Only the IP is compared, never the port (§9). Installed or
  refreshed by CreatePermission and ChannelBind for ``permission_lifetime`` (300 s).
* channel bindings: number <-> peer transport address, one to one, for ``channel_lifetime``
  (600 s, §12). When a binding expires neither its number nor its peer may be bound to anything
  else for 5 minutes (§12: ``CHANNEL_REUSE_DELAY``); re-binding the same pair is allowed.

Expiry is checked where state is used (a packet on an expired permission is dropped even before
the timer removes it) and swept by the server's timer, so stale entries never outlive their
deadline by more than one timer tick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from stun.addresses import Address, AddressFamily
from turnd.core.actions import FiveTuple
from turnd.core.bucket import TokenBucket

if TYPE_CHECKING:
    from turnd.core.routes import ChannelRoute

#: RFC 8656 §12: a channel number or peer address of an expired binding stays unusable for another
#: binding for this long, so late packets are not misdelivered.
CHANNEL_REUSE_DELAY = 300.0
#: Peer transport addresses one allocation remembers for the new-peer budget.
MAX_PEERS_SEEN = 4096


@attrs.define(slots=True, eq=False)
class ChannelBinding:
    """One channel: its peer and expiry."""

    number: int
    peer: Address
    expires: float
    #: When a route cache last relayed on it (turnd.core.routes), if it did.
    last_seen: float | None = None


@attrs.define(slots=True, eq=False)
class Relay:
    """One relayed transport address of an allocation, its expiry and what it relayed."""

    address: Address
    expires: float
    packets_to_peer: int = 0
    bytes_to_peer: int = 0
    packets_to_client: int = 0
    bytes_to_client: int = 0
    #: The part of the counters above that a route cache (the kernel) relayed.
    kernel_packets_to_peer: int = 0
    kernel_bytes_to_peer: int = 0
    kernel_packets_to_client: int = 0
    kernel_bytes_to_client: int = 0


@attrs.define(slots=True, eq=False)
class Allocation:
    """The server side of one allocation."""

    five_tuple: FiveTuple
    #: Family -> relayed address; IPv4 first in a dual allocation. Never empty while live.
    relays: dict[AddressFamily, Relay]
    username: str
    realm: str
    key: bytes
    sha256: bool
    rest_id: str | None
    started: float
    allocate_txid: bytes
    #: An RFC 6062 TCP allocation: peers are reached over TCP connections, not datagrams.
    tcp: bool = False
    allocate_response: bytes = b""
    permissions: dict[str, float] = attrs.field(factory=dict)
    channels: dict[int, ChannelBinding] = attrs.field(factory=dict)
    channel_by_peer: dict[Address, ChannelBinding] = attrs.field(factory=dict)
    #: Expired bindings still in their reuse delay: number -> (peer, until).
    cooling: dict[int, tuple[Address, float]] = attrs.field(factory=dict)
    #: Traffic budget (token buckets, both directions together): packets, bytes, last refill.
    #: Not turnd.core.bucket.TokenBucket: admit() runs per relayed datagram (see there).
    budget_packets: float = 0.0
    budget_bytes: float = 0.0
    budget_time: float = 0.0
    #: Peer transport addresses used so far, and the budget for new ones (port-scan guard).
    peers_seen: set[Address] = attrs.field(factory=set)
    new_peers: TokenBucket = attrs.field(factory=lambda: TokenBucket(0.0, 0.0))
    #: Channel number -> its route installed in the server's route cache (turnd.core.routes).
    routes: dict[int, ChannelRoute] = attrs.field(factory=dict)

    def admit(self, size: int, now: float, packet_rate: float, byte_rate: float) -> bool:
        """Spend one packet and ``size`` bytes of the traffic budget; False: over the rate.

        Buckets hold one second of the rates (the burst) and refill continuously. This is
        turnd.core.bucket.TokenBucket's arithmetic written out for two buckets at once: it runs
        for every relayed datagram (the hot path), where two refill() calls would cost more
        than the arithmetic itself."""
        elapsed = now - self.budget_time
        packets = self.budget_packets
        octets = self.budget_bytes
        if elapsed > 0:  # refill (written out: min() costs a call per packet)
            packets += elapsed * packet_rate
            if packets > packet_rate:
                packets = packet_rate
            octets += elapsed * byte_rate
            if octets > byte_rate:
                octets = byte_rate
            self.budget_time = now
        if packets < 1 or octets < size:
            self.budget_packets = packets
            self.budget_bytes = octets
            return False
        self.budget_packets = packets - 1
        self.budget_bytes = octets - size
        return True

    def charge(
        self, packets: int, octets: int, now: float, packet_rate: float, byte_rate: float
    ) -> None:
        """Spend what a route cache relayed (turnd.core.routes) from the traffic budget, refilled
        to ``now`` first; it may go below zero, and then userspace waits for the refill."""
        elapsed = now - self.budget_time
        if elapsed > 0:
            self.budget_packets = min(packet_rate, self.budget_packets + elapsed * packet_rate)
            self.budget_bytes = min(byte_rate, self.budget_bytes + elapsed * byte_rate)
            self.budget_time = now
        self.budget_packets -= packets
        self.budget_bytes -= octets

    def admit_peer(self, peer: Address, now: float, rate: float, burst: float) -> bool:
        """Whether ``peer`` may be used: known peers always; a new one spends the budget.

        A new peer is not remembered here: the caller does that with :meth:`remember_peer` once
        every other check of the request has passed, since a remembered peer skips the policy
        checks of later Send indications."""
        if peer in self.peers_seen:
            return True
        return self.new_peers.take(now, rate, burst)

    def remember_peer(self, peer: Address) -> None:
        """``peer`` passed every check: later traffic to it spends no new-peer budget."""
        if len(self.peers_seen) >= MAX_PEERS_SEEN:
            self.peers_seen.clear()  # bounded memory: forgotten peers count as new again
        self.peers_seen.add(peer)

    @property
    def relay(self) -> Address:
        """The first relayed transport address (the IPv4 one of a dual allocation)."""
        return next(iter(self.relays.values())).address

    @property
    def expires(self) -> float:
        """When the last relay expires, unless refreshed."""
        return max(r.expires for r in self.relays.values())

    @property
    def packets_to_peer(self) -> int:
        """Packets relayed to peers through the live relays."""
        return sum(r.packets_to_peer for r in self.relays.values())

    @property
    def bytes_to_peer(self) -> int:
        """Payload bytes relayed to peers through the live relays."""
        return sum(r.bytes_to_peer for r in self.relays.values())

    @property
    def packets_to_client(self) -> int:
        """Packets relayed to the client from the live relays."""
        return sum(r.packets_to_client for r in self.relays.values())

    @property
    def bytes_to_client(self) -> int:
        """Payload bytes relayed to the client from the live relays."""
        return sum(r.bytes_to_client for r in self.relays.values())

    def has_permission(self, host: str, now: float) -> bool:
        """Whether a live permission exists for peer IP ``host`` (§9)."""
        expiry = self.permissions.get(host)
        return expiry is not None and expiry > now

    def channel_conflict(self, number: int, peer: Address, now: float) -> str | None:
        """Why binding ``number`` to ``peer`` is refused (§12, §11.2), or None if it may be."""
        bound = self.channels.get(number)
        if bound is not None and bound.peer != peer:
            return "channel already bound to another peer"
        by_peer = self.channel_by_peer.get(peer)
        if by_peer is not None and by_peer.number != number:
            return "peer already bound to another channel"
        cool = self.cooling.get(number)
        if cool is not None and cool[1] > now and cool[0] != peer:
            return "channel number is in its reuse delay"
        for other, (cool_peer, until) in self.cooling.items():
            if cool_peer == peer and until > now and other != number:
                return "peer address is in its reuse delay"
        return None

    def bind_channel(self, number: int, peer: Address, expires: float) -> None:
        """Create or refresh the binding ``number`` <-> ``peer``."""
        binding = self.channels.get(number)
        if binding is None:
            binding = ChannelBinding(number, peer, expires)
            self.channels[number] = binding
            self.channel_by_peer[peer] = binding
            self.cooling.pop(number, None)
        else:
            binding.expires = expires

    def expire_channel(self, number: int) -> float:
        """Remove the expired binding ``number`` and start its reuse delay; returns its end."""
        binding = self.channels.pop(number)
        del self.channel_by_peer[binding.peer]
        until = binding.expires + CHANNEL_REUSE_DELAY
        self.cooling[number] = (binding.peer, until)
        return until

    def forget_family(self, family: AddressFamily, now: float) -> list[tuple[int, float]]:
        """Drop the permissions and channels of ``family``'s peers, its relay having ended while
        the other family's goes on (§8.1: the other family's are untouched). The channel numbers
        enter their reuse delay (§12); returns them with its end."""
        ipv6 = family is AddressFamily.IPV6
        self.permissions = {h: t for h, t in self.permissions.items() if (":" in h) is not ipv6}
        cooled = []
        for number, binding in list(self.channels.items()):
            if binding.peer.family is family:
                del self.channels[number]
                del self.channel_by_peer[binding.peer]
                until = now + CHANNEL_REUSE_DELAY
                self.cooling[number] = (binding.peer, until)
                cooled.append((number, until))
        return cooled
