"""What the sans-I/O core asks the adapters to do: one frozen class per effect.

The core answers every input (a client packet, a peer packet, a backbone frame, a relay socket
opened, a timer) with a list of these. The adapter executes them in order and never decides
anything itself. The entry points per datagram (:class:`EntryPoint`) may answer relayed data with
plain tuples instead (the hot path); :func:`as_actions` says which actions those stand for.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple, Protocol

import attrs

from stun.addresses import Address


class Transport(StrEnum):
    """The client-facing transport of a 5-tuple (RFC 8656 §2.2)."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"

    @property
    def is_stream(self) -> bool:
        """TCP and TLS carry a byte stream: ChannelData is padded to 4 bytes (RFC 8656 §12.5)."""
        return self is not UDP


#: ``Transport.UDP`` as a module constant, for the per-datagram paths (see stun.addresses.IPV4).
UDP = Transport.UDP


class FiveTuple(NamedTuple):
    """Client transport address, server transport address and protocol: names an allocation."""

    transport: Transport
    client: Address
    server: Address


@attrs.frozen
class SendToClient:
    """Send ``data`` to the client over the transport of ``five_tuple``."""

    five_tuple: FiveTuple
    data: bytes


@attrs.frozen
class SendToPeer:
    """Send ``data`` from the relay socket bound to ``relay`` to ``peer``."""

    relay: Address
    peer: Address
    data: bytes


@attrs.frozen
class OpenRelay:
    """Bind a UDP relay socket to ``relay`` (exact address and port) and call
    ``TurnServer.relay_opened(ticket, ok, now)``. With ``reserve`` also bind ``relay.port + 1``
    and hold it for a later Allocate with RESERVATION-TOKEN (RFC 8656 §7.2 EVEN-PORT R bit).
    ``dont_fragment`` asks for the IP DF bit on what the relay sends (RFC 8656 §18.9).
    ``reserved`` says the socket was already bound by an earlier reservation: adopt it.
    ``tcp`` (RFC 6062 §5.1): bind a TCP socket to ``relay`` and listen on it for peers instead
    (never with ``reserve``, ``dont_fragment`` or ``reserved``); answered the same way. Each
    connection accepted on it goes to ``TurnServer.peer_connection_arrived``."""

    ticket: int
    relay: Address
    reserve: bool = False
    dont_fragment: bool = False
    reserved: bool = False
    tcp: bool = False


@attrs.frozen
class CloseRelay:
    """Close the relay socket bound to ``relay`` (an allocation or a reservation ended)."""

    relay: Address


@attrs.frozen
class CloseConnection:
    """Close the TCP/TLS connection of ``five_tuple`` (its allocation was deleted)."""

    five_tuple: FiveTuple


@attrs.frozen
class AllocationEnded:
    """A relayed transport address of an allocation ended, with its usage; one per relay (a dual
    allocation has two, RFC 8656 §7.2, and each family can end on its own, §8.1)."""

    five_tuple: FiveTuple
    relay: Address
    username: str
    rest_id: str | None
    started: float
    ended: float
    reason: str
    packets_to_peer: int
    bytes_to_peer: int
    packets_to_client: int
    bytes_to_client: int
    #: The part of the counts above a route cache (the kernel fast path) relayed.
    kernel_packets_to_peer: int
    kernel_bytes_to_peer: int
    kernel_packets_to_client: int
    kernel_bytes_to_client: int


@attrs.frozen
class ConnectPeer:
    """RFC 6062 §5.2: open a TCP connection from ``relay`` (that address and port, so the peer
    sees the relayed transport address) to ``peer``, giving up after 30 s, then call
    ``TurnServer.peer_connected(connection_id, ok, now)``. Read nothing from it until a
    :class:`SpliceConnection` names it: the kernel's receive window holds what the peer sends."""

    connection_id: int
    relay: Address
    peer: Address


@attrs.frozen
class SpliceConnection:
    """RFC 6062 §5.4: the ConnectionBind success response to ``five_tuple`` (the
    :class:`SendToClient` just before this) is the last STUN message of that client connection.
    Write it, then pipe raw bytes both ways between that connection and peer connection
    ``connection_id``; neither reaches the core again (bytes the adapter already read past the
    ConnectionBind request are the client's first data for the peer). Closing either side is
    reported with ``connection_closed`` or ``peer_connection_closed``."""

    connection_id: int
    five_tuple: FiveTuple


@attrs.frozen
class ClosePeerConnection:
    """Close peer TCP connection ``connection_id`` (refused, unbound after 30 s, its client data
    connection closed, or its allocation ended). An id the adapter does not hold is ignored."""

    connection_id: int


@attrs.frozen
class ForwardToNode:
    """Send ``data``, a sealed backbone frame, to cluster node ``node``'s backbone address."""

    node: int
    data: bytes


@attrs.frozen
class RevokeUser:
    """Another cluster node revoked ``username``: refuse it here too, end its allocations and
    keep the revocation (revoked.runtime), as a local revocation does, without telling the
    other nodes again."""

    username: str


Action = (
    SendToClient
    | SendToPeer
    | OpenRelay
    | CloseRelay
    | CloseConnection
    | AllocationEnded
    | ConnectPeer
    | SpliceConnection
    | ClosePeerConnection
    | ForwardToNode
    | RevokeUser
)

# --- the one entry point per datagram --------------------------------------------------------
# What ``client_message`` and ``peer_message`` answer (TurnServer's, and ClusterNode's, which
# adds ForwardToNode lists for flows another node holds), carried out by its type:
#   tuple (relay, peer, payload)  -- send payload from relay socket ``relay`` to ``peer``;
#   tuple (five_tuple, frame)     -- (peer_message) send frame to that client;
#   bytes                         -- (client_message) the answer to this message's sender;
#   list of actions               -- everything else, in order;
#   None                          -- dropped and counted.

#: What ``client_message`` gives back (see the comment above).
ClientOutcome = tuple[Address, Address, bytes] | bytes | list[Action] | None
#: What ``peer_message`` gives back.
PeerOutcome = tuple[FiveTuple, bytes] | list[Action] | None


class EntryPoint(Protocol):
    """Where the adapter hands each datagram: the core, or the cluster node around it."""

    def client_message(self, five_tuple: FiveTuple, data: bytes, now: float) -> ClientOutcome:
        """A client's datagram (UDP) or whole frame (TCP/TLS)."""
        ...

    def peer_message(self, relay: Address, peer: Address, data: bytes, now: float) -> PeerOutcome:
        """A datagram from ``peer`` to relay address ``relay``."""
        ...


def as_actions(
    out: ClientOutcome | PeerOutcome, five_tuple: FiveTuple | None = None
) -> list[Action]:
    """An entry point's outcome as the actions it stands for (``five_tuple``: the sender of the
    client message, whom a bytes answer goes to)."""
    if out is None:
        return []
    if type(out) is bytes:
        if five_tuple is None:
            raise ValueError("a bytes answer needs the sender's five_tuple")
        return [SendToClient(five_tuple, out)]
    if type(out) is tuple:
        if len(out) == 3:
            return [SendToPeer(*out)]
        return [SendToClient(*out)]
    return out  # type: ignore[return-value]  # only lists are left
