"""RFC 6062 TCP allocations: peer data connections, their ids, and the requests that make them.

Theory of operation (RFC 6062 §5):

* A TCP allocation (§5.1) listens on its relayed transport address. A peer data connection comes
  from a Connect request (§5.2: the server connects out; CONNECTING until the adapter reports) or
  from a peer connecting in (§5.3: accepted only with a permission for the peer's IP, announced
  with a ConnectionAttempt indication). Either way it then waits, PENDING, for the client to open
  a new TCP/TLS connection and send ConnectionBind with its CONNECTION-ID (§5.4); not bound within
  :data:`CONNECTION_BIND_TIMEOUT` it is closed. Bound (BOUND), the adapter splices the two
  connections and the core only remembers the pair, to close each when the other, or the
  allocation, ends (§5.5).
* Connection ids are unique among this server's live connections and never reused while one
  lives: a 32-bit counter (the size of CONNECTION-ID, §6.2.1) that skips ids in use. They need
  not be unpredictable: ConnectionBind is authenticated and must come from the allocation's user.
* One allocation has at most one connection per peer transport address, made or being made
  (§5.2: 446), and at most ``max_peer_connections_per_allocation`` in all.
* Data never passes through the core: Send indications and ChannelData are dropped and
  ChannelBind refused on a TCP allocation (peers are reached over connections, not datagrams).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING

import attrs

from stun import attributes as at
from stun.addresses import Address, AddressFamily
from stun.message import Message, MessageClass, Method, encode
from turnd.core.actions import (
    Action,
    CloseConnection,
    ClosePeerConnection,
    ConnectPeer,
    FiveTuple,
    SendToClient,
    SpliceConnection,
)
from turnd.core.allocation import Allocation
from turnd.core.permissions import admit_new_peer
from turnd.core.request import Request, StunError
from turnd.core.timers import TimerKind

if TYPE_CHECKING:
    from turnd.core.server import TurnServer

#: RFC 6062 §5.2, §5.3: a peer data connection not bound by ConnectionBind within 30 s is closed.
CONNECTION_BIND_TIMEOUT = 30.0
#: RFC 6062 §6.2.1: CONNECTION-ID is 32 bits; ids run 1 .. 2**32 - 1 and wrap.
MAX_CONNECTION_ID = (1 << 32) - 1


class ConnectionState(Enum):
    """Where a peer data connection is in its life (RFC 6062 §5.2-§5.5)."""

    CONNECTING = "connecting"  # Connect asked the adapter to connect; no answer yet
    PENDING = "pending"  # connected; waiting for ConnectionBind
    BOUND = "bound"  # spliced to a client data connection
    CLOSED = "closed"  # forgotten: timers and late reports that find it do nothing


@attrs.define(slots=True, eq=False)
class PeerConnection:
    """One peer data connection of a TCP allocation."""

    connection_id: int
    allocation: Allocation
    relay: Address
    peer: Address
    state: ConnectionState
    #: The Connect request to answer once the adapter reports (CONNECTING only).
    request: Request | None = None
    #: The client data connection it is spliced to (BOUND only).
    data: FiveTuple | None = None


class PeerConnections:
    """Every live peer data connection of one server, by id, by client data connection, by
    allocation and by (allocation, peer)."""

    def __init__(self) -> None:
        self.by_id: dict[int, PeerConnection] = {}
        self.by_data: dict[FiveTuple, PeerConnection] = {}
        self._by_peer: dict[tuple[FiveTuple, Address], PeerConnection] = {}
        self._by_allocation: dict[FiveTuple, dict[int, PeerConnection]] = {}
        #: The next id to try (it wraps at MAX_CONNECTION_ID; ids in use are skipped).
        self.next_id = 1

    @property
    def by_peer(self) -> Mapping[tuple[FiveTuple, Address], PeerConnection]:
        """(allocation 5-tuple, peer) -> connection; a read-only view."""
        return MappingProxyType(self._by_peer)

    @property
    def by_allocation(self) -> Mapping[FiveTuple, dict[int, PeerConnection]]:
        """Allocation 5-tuple -> its connections by id; a read-only view."""
        return MappingProxyType(self._by_allocation)

    def _new_id(self) -> int:
        while True:
            connection_id = self.next_id
            self.next_id = connection_id % MAX_CONNECTION_ID + 1
            if connection_id not in self.by_id:
                return connection_id

    def open(
        self,
        alloc: Allocation,
        relay: Address,
        peer: Address,
        state: ConnectionState,
        request: Request | None = None,
    ) -> PeerConnection:
        """Record a new connection of ``alloc`` with ``peer`` under a fresh id."""
        conn = PeerConnection(self._new_id(), alloc, relay, peer, state, request)
        self.by_id[conn.connection_id] = conn
        self._by_peer[alloc.five_tuple, peer] = conn
        self._by_allocation.setdefault(alloc.five_tuple, {})[conn.connection_id] = conn
        return conn

    def find(self, alloc: Allocation, peer: Address) -> PeerConnection | None:
        """The connection of ``alloc`` with ``peer``, made or being made."""
        return self._by_peer.get((alloc.five_tuple, peer))

    def count(self, alloc: Allocation) -> int:
        """How many connections ``alloc`` has."""
        return len(self._by_allocation.get(alloc.five_tuple, ()))

    def of_allocation(self, alloc: Allocation) -> list[PeerConnection]:
        """The connections of ``alloc``, oldest first."""
        return list(self._by_allocation.get(alloc.five_tuple, {}).values())

    def bind(self, conn: PeerConnection, data: FiveTuple) -> None:
        """Splice ``conn`` to the client data connection ``data`` (§5.4)."""
        conn.state = ConnectionState.BOUND
        conn.data = data
        self.by_data[data] = conn

    def remove(self, conn: PeerConnection) -> None:
        """Forget ``conn``; its id may be given out again."""
        conn.state = ConnectionState.CLOSED
        del self.by_id[conn.connection_id]
        del self._by_peer[conn.allocation.five_tuple, conn.peer]
        siblings = self._by_allocation[conn.allocation.five_tuple]
        del siblings[conn.connection_id]
        if not siblings:
            del self._by_allocation[conn.allocation.five_tuple]
        if conn.data is not None:
            del self.by_data[conn.data]


# --- requests (dispatched by the server after authentication) ------------------------------------


def handle_connect(server: TurnServer, request: Request) -> list[Action]:
    """RFC 6062 §5.2: connect the allocation's relayed address to XOR-PEER-ADDRESS."""
    alloc = server.own_allocation(request)  # 437 without an allocation, 441 for another user
    if not alloc.tcp:
        raise StunError(400, "Connect needs a TCP allocation")
    peer_attr = request.message.get(at.XorPeerAddress)
    if peer_attr is None:
        raise StunError(400, "XOR-PEER-ADDRESS is required")
    peer = peer_attr.address
    relay = alloc.relays.get(peer.family)
    if relay is None:
        raise StunError(443)  # as for permissions (RFC 8656 §10.2): no relay of that family
    if server.tcp.find(alloc, peer) is not None:
        raise StunError(446)
    if not server.policy.peer_allowed(peer.host, peer.port):
        server.stats["denied.peer"] += 1
        raise StunError(403, "peer address is not allowed")
    if not alloc.has_permission(peer.host, request.now):
        raise StunError(403, "no permission for this peer")
    if _full(server, alloc):
        raise StunError(403, "too many peer connections on this allocation")
    # The port-scan guard of Send indications (§10.2's new-peer budget) holds for Connect too:
    # each Connect to a new transport address spends it, so one permission cannot sweep ports.
    admit_new_peer(server, alloc, peer, request.now)
    alloc.remember_peer(peer)
    conn = server.tcp.open(alloc, relay.address, peer, ConnectionState.CONNECTING, request)
    server.stats["tcp.connects"] += 1
    return [ConnectPeer(conn.connection_id, relay.address, peer)]


def handle_connection_bind(server: TurnServer, request: Request) -> list[Action]:
    """RFC 6062 §5.4: make this new client connection the data connection of CONNECTION-ID."""
    five_tuple = request.five_tuple
    if not five_tuple.transport.is_stream:
        raise StunError(400, "ConnectionBind needs a TCP or TLS connection")
    if (
        five_tuple in server.allocations
        or five_tuple in server.pending
        or five_tuple in server.tcp.by_data
    ):
        raise StunError(400, "ConnectionBind must come on a new connection")
    id_attr = request.message.get(at.ConnectionId)
    if id_attr is None:
        raise StunError(400, "CONNECTION-ID is required")
    # Expired ones are gone already: the server runs due timers before any request.
    conn = server.tcp.by_id.get(id_attr.value)
    if conn is None or conn.state is not ConnectionState.PENDING:
        raise StunError(400, "no pending connection with this CONNECTION-ID")
    credential = request.credential
    assert credential is not None  # dispatch authenticated it
    if credential.username != conn.allocation.username:
        raise StunError(441)
    server.tcp.bind(conn, five_tuple)
    server.stats["tcp.binds"] += 1
    return [
        SendToClient(five_tuple, server.responses.success(request)),
        SpliceConnection(conn.connection_id, five_tuple),
    ]


def _full(server: TurnServer, alloc: Allocation) -> bool:
    """Whether ``alloc`` holds all the peer connections it may (counted when so)."""
    return server.quotas.peer_connections_full(server.tcp.count(alloc))


# --- the adapter's reports -----------------------------------------------------------------------


def peer_connected(server: TurnServer, connection_id: int, ok: bool, now: float) -> list[Action]:
    """The adapter's answer to ``ConnectPeer``: answer the Connect request (§5.2)."""
    conn = server.tcp.by_id.get(connection_id)
    if conn is None:
        # The allocation ended while connecting: a socket that did open is not wanted.
        server.stats["drop.peer_connected_unknown"] += 1
        return [ClosePeerConnection(connection_id)] if ok else []
    if conn.state is not ConnectionState.CONNECTING:
        return server.drop("peer_connected_twice")
    if not ok:
        server.tcp.remove(conn)
        return _connect_failed(server, conn, "could not connect to the peer")
    request = conn.request
    assert request is not None  # CONNECTING connections keep their request
    conn.request = None
    conn.state = ConnectionState.PENDING
    server.timers.add(now + CONNECTION_BIND_TIMEOUT, TimerKind.CONNECTION, conn)
    reply = server.responses.success(request, at.ConnectionId(connection_id))
    return [SendToClient(request.five_tuple, reply)]


def peer_connection_arrived(
    server: TurnServer, relay: Address, peer: Address, now: float
) -> tuple[int | None, list[Action]]:
    """A peer connected to a TCP allocation's relayed address (§5.3)."""
    alloc = server.by_relay.get(relay)
    if alloc is None or not alloc.tcp:
        return None, server.drop("tcp_peer_no_allocation")
    if not alloc.has_permission(peer.host, now):
        return None, server.drop("tcp_peer_no_permission")  # §5.3: close it at once
    if server.tcp.find(alloc, peer) is not None:
        return None, server.drop("tcp_peer_duplicate")
    if _full(server, alloc):
        return None, server.drop("tcp_peer_quota")
    conn = server.tcp.open(alloc, relay, peer, ConnectionState.PENDING)
    server.timers.add(now + CONNECTION_BIND_TIMEOUT, TimerKind.CONNECTION, conn)
    server.stats["tcp.peer_connections"] += 1
    attempt = Message(
        Method.CONNECTION_ATTEMPT,
        MessageClass.INDICATION,
        server.new_txid(),
        (at.XorPeerAddress(peer), at.ConnectionId(conn.connection_id)),
    )
    return conn.connection_id, [SendToClient(alloc.five_tuple, encode(attempt))]


def peer_connection_closed(server: TurnServer, connection_id: int) -> list[Action]:
    """The peer connection closed (or failed): close its client data connection (§5.5)."""
    conn = server.tcp.by_id.get(connection_id)
    if conn is None:
        return []
    server.stats["tcp.peer_closed"] += 1
    return close(server, conn, "peer connection closed")


def data_connection_closed(server: TurnServer, five_tuple: FiveTuple) -> list[Action]:
    """A client data connection closed: close its peer connection (§5.5)."""
    conn = server.tcp.by_data.get(five_tuple)
    if conn is None:
        return []
    server.tcp.remove(conn)
    return [ClosePeerConnection(conn.connection_id)]


def bind_timer(
    server: TurnServer, conn: PeerConnection, _detail: None, _now: float
) -> list[Action]:
    """§5.2, §5.3: a connection still unbound after its 30 s is closed."""
    if conn.state is not ConnectionState.PENDING:
        return []
    server.stats["tcp.bind_timeouts"] += 1
    return close(server, conn, "not bound in time")


def close_all(server: TurnServer, alloc: Allocation, families: list[AddressFamily]) -> list[Action]:
    """Close the connections of ``alloc``'s relays in ``families``, which are ending (§5.5)."""
    actions: list[Action] = []
    for conn in server.tcp.of_allocation(alloc):
        if conn.relay.family in families:
            actions += close(server, conn, "allocation deleted")
    return actions


def close(server: TurnServer, conn: PeerConnection, why: str) -> list[Action]:
    """Forget ``conn`` and close what is attached to it; a Connect still waiting gets 447."""
    state = conn.state
    server.tcp.remove(conn)
    actions: list[Action] = [ClosePeerConnection(conn.connection_id)]
    if state is ConnectionState.BOUND:
        assert conn.data is not None  # bound connections know their data connection
        actions.append(CloseConnection(conn.data))
    elif state is ConnectionState.CONNECTING:
        actions += _connect_failed(server, conn, why)
    return actions


def _connect_failed(server: TurnServer, conn: PeerConnection, why: str) -> list[Action]:
    """§5.2: the connection attempt failed or timed out: 447 to the Connect request."""
    request = conn.request
    assert request is not None  # CONNECTING connections keep their request
    return server.refuse(request, StunError(447, why))
