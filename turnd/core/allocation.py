"""Allocation state: permissions, channel bindings and their clocks (RFC 8656 §5, §9, §12).

Theory of operation: an :class:`Allocation` is named by its 5-tuple and by its relayed transport
address; both are unique (§5). It holds

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

import attrs

from stun.addresses import Address
from turnd.core.actions import FiveTuple

#: RFC 8656 §12: a channel number or peer address of an expired binding stays unusable for another
#: binding for this long, so late packets are not misdelivered.
CHANNEL_REUSE_DELAY = 300.0


@attrs.define(slots=True, eq=False)
class ChannelBinding:
    """One channel: its peer and expiry."""

    number: int
    peer: Address
    expires: float


@attrs.define(slots=True, eq=False)
class Allocation:
    """The server side of one allocation."""

    five_tuple: FiveTuple
    relay: Address
    username: str
    realm: str
    key: bytes
    sha256: bool
    rest_id: str | None
    started: float
    expires: float
    allocate_txid: bytes
    allocate_response: bytes = b""
    permissions: dict[str, float] = attrs.field(factory=dict)
    channels: dict[int, ChannelBinding] = attrs.field(factory=dict)
    channel_by_peer: dict[Address, ChannelBinding] = attrs.field(factory=dict)
    #: Expired bindings still in their reuse delay: number -> (peer, until).
    cooling: dict[int, tuple[Address, float]] = attrs.field(factory=dict)
    packets_to_peer: int = 0
    bytes_to_peer: int = 0
    packets_to_client: int = 0
    bytes_to_client: int = 0

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
