"""RFC 6062 TCP relays: listening relay sockets, peer connections, and splicing.

The core decides; this module only does what it asks:

* ``OpenRelay(tcp=True)``: listen for peers on the relay address (inbound connections are offered
  to the core with ``peer_connection_arrived``, which answers with a connection id or a refusal);
* ``ConnectPeer``: connect from the relay address to a peer (RFC 6062 §5.2, at most
  :data:`CONNECT_TIMEOUT`), then ``peer_connected``;
* ``SpliceConnection``: after ConnectionBind, bytes flow untouched between the client's data
  connection and the peer connection (§5.4); a peer connection reads nothing until then, so the
  kernel's window holds what the peer sends early (uvloop starts reading right after
  ``connection_made`` whatever it paused, so a first read that comes anyway is kept in
  ``PeerConnection.early`` and reading paused again; it goes to the client first);
* ``ClosePeerConnection``.

A splice is a byte stream, so it is never thinned out: when one side's write buffer passes
:data:`SPLICE_HIGH_WATER` (asyncio calls that protocol's ``pause_writing``), the other side stops
reading, and reads again once the buffer is below :data:`SPLICE_LOW_WATER` (``resume_writing``);
TCP's window then slows the sender. A side whose buffer still reaches :data:`SPLICE_HARD_CAP`
(its transport kept delivering after ``pause_reading``) is closed, counted as
``drop.splice_backlog`` and logged — the stream ends, it never loses bytes from its middle.

Relay sockets use SO_REUSEADDR and SO_REUSEPORT so that the listening socket and the outbound
connections can share the relay's address and port, as §5.2 requires (the peer sees the relayed
transport address).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Protocol, cast

from stun.addresses import Address
from turnd.core.actions import Action, ConnectPeer, FiveTuple
from turnd.logs import event

if TYPE_CHECKING:
    from turnd.core.server import TurnServer
    from turnd.streams import ClientStream

#: RFC 6062 §5.2: the server waits at most 30 s for a connection to the peer.
CONNECT_TIMEOUT = 30.0
#: Pending inbound peer connections the kernel queues per TCP relay.
RELAY_BACKLOG = 128
#: Bytes queued on one side of a splice at which the other side stops reading: a few loopback
#: reads' worth: keeps a fast link busy, small per connection (asyncio's default: 64 KiB).
SPLICE_HIGH_WATER = 256 * 1024
#: ... and at which it reads again.
SPLICE_LOW_WATER = SPLICE_HIGH_WATER // 4
#: Bytes queued on one side of a splice at which it is closed: with reading paused at the high
#: water mark only one read more can arrive, so this is reached only by a transport that does not
#: honour pause_reading; memory per connection stays bounded either way.
SPLICE_HARD_CAP = 4 * 1024 * 1024


class HasCore(Protocol):
    """Anything holding the core, whose stats count a splice's drops."""

    @property
    def core(self) -> TurnServer:
        """The core."""


class RelayHost(HasCore, Protocol):
    """What the TCP relays ask of the packet path (:class:`turnd.packet_path.PacketPath`)."""

    def relay_result(self, ticket: int, ok: bool) -> None:
        """Tell the core whether the relay socket of ``ticket`` is listening."""

    def internal_error(self, where: str) -> None:
        """Log and count a bug surfaced while handling a connection."""

    def execute(self, actions: list[Action]) -> None:
        """Carry out the core's actions."""


def spliced_write(transport: asyncio.Transport, data: bytes, service: HasCore, side: str) -> None:
    """Queue ``data`` on one side of a splice (``side``: "peer" or "client"), or close that side
    once :data:`SPLICE_HARD_CAP` bytes wait — counted and logged, never a silent hole."""
    if transport.is_closing():
        return
    queued = transport.get_write_buffer_size()
    if queued + len(data) > SPLICE_HARD_CAP:
        service.core.stats["drop.splice_backlog"] += 1
        peer = transport.get_extra_info("peername")
        event(
            logging.WARNING,
            "tcp_relay.backlog_closed",
            "a spliced connection could not keep up: closed",
            side=side,
            address=f"{peer[0]}:{peer[1]}" if peer else "?",
            queued=queued,
        )
        transport.abort()
        return
    transport.write(data)


def pause(transport: asyncio.Transport | None) -> None:
    """Stop reading ``transport`` (the other side of its splice is backed up)."""
    if transport is not None and not transport.is_closing():
        transport.pause_reading()


def resume(transport: asyncio.Transport | None) -> None:
    """Read ``transport`` again (the other side of its splice has drained)."""
    if transport is not None and not transport.is_closing():
        transport.resume_reading()


def _relay_socket(relay: Address, service: HasCore) -> socket.socket:
    """A TCP socket bound to ``relay``; OSError if it cannot be made (creation failures, such as
    EMFILE, are counted and logged by errno first)."""
    family = socket.AF_INET6 if ":" in relay.host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        from turnd.packet_path import relay_socket_failed  # which imports this module

        relay_socket_failed(service.core.stats, relay, exc)
        raise
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((relay.host, relay.port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class PeerConnection(asyncio.Protocol):
    """One TCP connection between a relay address and a peer."""

    def __init__(self, relays: TcpRelays, relay: Address, connection_id: int | None) -> None:
        self.relays = relays
        self.relay = relay
        self.connection_id = connection_id
        self.transport: asyncio.Transport | None = None
        self.client: ClientStream | None = None
        #: What the peer sent before the splice (one read at most: reading is paused after it).
        self.early = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()  # nothing is read before ConnectionBind (§5.4)
        if self.connection_id is None:
            peer = transport.get_extra_info("peername")
            self.relays.arrived(self, Address(peer[0], peer[1]))

    def data_received(self, data: bytes) -> None:
        if self.client is not None:
            self.client.write(data)
        else:  # before ConnectionBind: keep it, and stop reading until the splice
            self.early += data
            pause(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            self.client.close()
        self.relays.lost(self)

    def pause_writing(self) -> None:
        """The peer reads slower than the client sends: stop reading the client."""
        if self.client is not None:
            pause(self.client.transport)

    def resume_writing(self) -> None:
        if self.client is not None:
            resume(self.client.transport)

    def write(self, data: bytes) -> None:
        """Bytes from the client's data connection to the peer."""
        if self.transport is not None:
            spliced_write(self.transport, data, self.relays.service, "peer")

    def close(self) -> None:
        """Close the connection to the peer."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class TcpRelays:
    """The TCP relay sockets and peer connections of one service."""

    def __init__(self, service: RelayHost) -> None:
        self.service = service
        self.listeners: dict[Address, asyncio.Server] = {}
        self.connections: dict[int, PeerConnection] = {}

    # --- relays --------------------------------------------------------------------------------

    async def open_listener(self, ticket: int, relay: Address) -> None:
        """Listen on ``relay`` for peers, then tell the core whether it worked."""
        try:
            sock = _relay_socket(relay, self.service)
            sock.listen(RELAY_BACKLOG)
            server = await asyncio.get_running_loop().create_server(
                lambda: PeerConnection(self, relay, None), sock=sock
            )
        except OSError:
            self.service.relay_result(ticket, False)
            return
        self.listeners[relay] = server
        self.service.relay_result(ticket, True)

    def close_listener(self, relay: Address) -> bool:
        """Stop listening on ``relay``; False if it is not a TCP relay."""
        server = self.listeners.pop(relay, None)
        if server is None:
            return False
        server.close()
        return True

    # --- peer connections ----------------------------------------------------------------------

    def arrived(self, connection: PeerConnection, peer: Address) -> None:
        core = self.service.core
        try:
            connection_id, actions = core.peer_connection_arrived(
                connection.relay, peer, time.time()
            )
        except Exception:
            self.service.internal_error("peer connection")
            connection_id, actions = None, []
        if connection_id is None:
            if connection.transport is not None:
                connection.transport.abort()
        else:
            connection.connection_id = connection_id
            self.connections[connection_id] = connection
        self.service.execute(actions)

    async def connect(self, action: ConnectPeer) -> None:
        """Connect from the relay address to the peer (RFC 6062 §5.2)."""
        loop = asyncio.get_running_loop()
        ok = False
        try:
            sock = _relay_socket(action.relay, self.service)
            try:
                await asyncio.wait_for(
                    loop.sock_connect(sock, (action.peer.host, action.peer.port)), CONNECT_TIMEOUT
                )
                await loop.create_connection(lambda: self._outbound(action), sock=sock)
                ok = True
            except (TimeoutError, OSError):
                sock.close()
        except OSError:
            pass
        if not ok:
            event(
                logging.INFO,
                "tcp_relay.connect_failed",
                relay=str(action.relay),
                peer=str(action.peer),
            )
        try:
            actions = self.service.core.peer_connected(action.connection_id, ok, time.time())
        except Exception:
            self.service.internal_error("peer connect result")
            return
        self.service.execute(actions)

    def _outbound(self, action: ConnectPeer) -> PeerConnection:
        connection = PeerConnection(self, action.relay, action.connection_id)
        self.connections[action.connection_id] = connection
        return connection

    def splice(
        self, connection_id: int, five_tuple: FiveTuple, client: ClientStream | None
    ) -> None:
        """Join the client's data connection and the peer connection (RFC 6062 §5.4)."""
        connection = self.connections.get(connection_id)
        if connection is None or client is None:
            self.service.core.stats["drop.splice_missing"] += 1
            if client is not None:
                client.close()
            return
        connection.client = client
        client.splice = connection
        if connection.early:
            client.write(bytes(connection.early))
            connection.early.clear()
        for side in (connection.transport, client.transport):
            if side is not None:
                side.set_write_buffer_limits(high=SPLICE_HIGH_WATER, low=SPLICE_LOW_WATER)
        if not client.writing_paused:  # else the client's resume_writing starts the peer
            resume(connection.transport)

    def close(self, connection_id: int) -> None:
        """Close peer connection ``connection_id`` (the core no longer wants it)."""
        connection = self.connections.pop(connection_id, None)
        if connection is not None:
            connection.close()

    def lost(self, connection: PeerConnection) -> None:
        connection_id = connection.connection_id
        if connection_id is None or self.connections.get(connection_id) is not connection:
            return
        del self.connections[connection_id]
        try:
            actions = self.service.core.peer_connection_closed(connection_id, time.time())
        except Exception:
            self.service.internal_error("peer connection close")
            return
        self.service.execute(actions)

    def stop(self) -> None:
        """Close every relay listener and peer connection."""
        for server in self.listeners.values():
            server.close()
        for connection in list(self.connections.values()):
            with contextlib.suppress(Exception):
                connection.close()
        self.listeners.clear()
        self.connections.clear()
