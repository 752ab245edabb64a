"""TCP and TLS client connections: frames in, core calls, frames out (RFC 8656 §3.1, RFC 6062).

Each connection is one 5-tuple. Its bytes are cut into STUN and ChannelData frames by
:class:`stun.framing.StreamDeframer` and handed to the core one frame at a time, so that when an
RFC 6062 ConnectionBind turns the connection into a data connection, whatever follows the
ConnectionBind is forwarded untouched to the peer.

Limits, each from ``[limits]`` in the configuration and each counted when it bites:

* ``max_connections`` and ``max_connections_per_ip`` (:class:`StreamTable`): a connection
  beyond them is closed at once (``drop.connection_limit``). A TLS connection counts from its TCP
  accept (:func:`serve_tls`), not from the end of its handshake, so stalled handshakes cannot
  pile up past the limits.
* ``tls_handshake_timeout``: a TLS connection whose handshake has not completed by then is closed
  and its slot released, as is one whose handshake fails (``drop.tls_handshake_failed``).
* ``idle_timeout``: a connection that holds no allocation and completes no frame for this long is
  closed (``drop.idle_timeout``). Only whole frames count as activity, so a client that sends half
  a frame, or a byte at a time, cannot hold the connection open.
* ``max_message_size``: a frame announcing more is a protocol error; the connection is closed with
  a log line (``drop.stream_framing``).
* Write backlog: frames (STUN, ChannelData) for a client that does not read are dropped whole
  once :data:`WRITE_BACKLOG_LIMIT` bytes are queued (``drop.stream_backlog``) — a relay of
  datagrams drops, it does not buffer without bound. A data connection spliced to an RFC 6062 peer
  carries a byte stream instead and gets backpressure (:mod:`turnd.tcp_relays`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, cast

from stun.addresses import Address
from stun.errors import StunDecodeError
from stun.framing import StreamDeframer
from turnd.core.actions import FiveTuple, Transport
from turnd.logs import event
from turnd.tcp_relays import pause, resume, spliced_write

if TYPE_CHECKING:
    from turnd.config import Config, LimitsConfig
    from turnd.core.server import TurnServer

#: Pause after a failed accept (EMFILE, ENFILE, ENOBUFS): the listener stays readable while the
#: process is out of descriptors, so accepting again at once would spin the event loop.
ACCEPT_RETRY_DELAY = 0.1

#: Bytes queued for one client beyond which relayed data is dropped: about 1 s of a 8 Mbit/s
#: stream, far more than a healthy reader ever has outstanding.
WRITE_BACKLOG_LIMIT = 1 << 20


class StreamHost(Protocol):
    """What a client connection asks of the packet path (:class:`turnd.packet_path.PacketPath`)."""

    @property
    def core(self) -> TurnServer:
        """The core: its stats count drops, its allocations keep a connection busy."""

    @property
    def config(self) -> Config:
        """The current configuration (``[limits]``)."""

    def client_message(self, five_tuple: FiveTuple, data: bytes) -> None:
        """Hand one whole frame of the connection to the core."""

    def internal_error(self, where: str) -> None:
        """Log and count a bug surfaced while handling the connection."""

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` as a task the service cancels at stop."""

    def admit_stream(self, stream: ClientStream) -> bool:
        """Take a slot under the connection limits; False: refused, counted."""

    def stream_closed(self, stream: ClientStream) -> None:
        """The connection ended: free its slot, tell the core."""


class StreamTable:
    """The open TCP/TLS client connections, by 5-tuple and per client IP, under
    ``max_connections`` and ``max_connections_per_ip``."""

    def __init__(self) -> None:
        self.by_five_tuple: dict[FiveTuple, ClientStream] = {}
        self.per_ip: Counter[str] = Counter()

    def admit(self, stream: ClientStream, limits: LimitsConfig) -> bool:
        """Register ``stream`` (its five_tuple set), or False past either limit."""
        five_tuple = stream.five_tuple
        assert five_tuple is not None
        ip = five_tuple.client.host
        if (
            len(self.by_five_tuple) >= limits.max_connections
            or self.per_ip[ip] >= limits.max_connections_per_ip
        ):
            return False
        self.by_five_tuple[five_tuple] = stream
        self.per_ip[ip] += 1
        return True

    def forget(self, stream: ClientStream) -> bool:
        """Free the slot of ``stream``; False when it held none (refused, or closed before)."""
        five_tuple = stream.five_tuple
        if five_tuple is None or self.by_five_tuple.get(five_tuple) is not stream:
            return False
        del self.by_five_tuple[five_tuple]
        ip = five_tuple.client.host
        self.per_ip[ip] -= 1
        if not self.per_ip[ip]:
            del self.per_ip[ip]
        return True

    def counts(self) -> Counter[str]:
        """Open connections by transport."""
        return Counter(five_tuple.transport.value for five_tuple in self.by_five_tuple)


class ClientStream(asyncio.Protocol):
    """One TCP or TLS client connection."""

    def __init__(self, service: StreamHost, transport_kind: Transport, server: Address) -> None:
        self.service = service
        self.kind = transport_kind
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.five_tuple: FiveTuple | None = None
        self.deframer = StreamDeframer(service.config.limits.max_message_size)
        self.last_frame = time.monotonic()
        self.idle_timer: asyncio.TimerHandle | None = None
        #: Set once an RFC 6062 ConnectionBind made this a data connection: raw bytes go here.
        self.splice: Any = None
        #: asyncio asked us to stop writing (our write buffer is past its high water mark).
        self.writing_paused = False

    # --- asyncio callbacks -------------------------------------------------------------------

    def admit(self, peer: Any) -> bool:
        """Take the slot of the connection from ``peer`` (a socket address) under the connection
        limits; False: refused, counted."""
        self.five_tuple = FiveTuple(self.kind, Address(peer[0], peer[1]), self.server)
        return self.service.admit_stream(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if self.five_tuple is None and not self.admit(peer):  # TLS: admitted at accept
            self.transport.abort()
            return
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.write(data)
            return
        self.deframer.push(data)
        self._drain_frames()

    def pause_writing(self) -> None:
        """The client reads slower than its peer sends: stop reading the peer (spliced only)."""
        self.writing_paused = True
        if self.splice is not None:
            pause(self.splice.transport)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.splice is not None:
            resume(self.splice.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.splice is not None:
            self.splice.close()
        self.service.stream_closed(self)

    # --- frames --------------------------------------------------------------------------------

    def _drain_frames(self) -> None:
        service = self.service
        five_tuple = self.five_tuple
        assert five_tuple is not None
        while self.splice is None:
            try:
                frame = self.deframer.pop()
            except StunDecodeError as exc:
                service.core.stats["drop.stream_framing"] += 1
                event(
                    logging.INFO,
                    "connection.framing_error",
                    client=str(five_tuple.client),
                    transport=self.kind.value,
                    reason=exc.reason,
                )
                self.close()
                return
            if frame is None:
                return
            self.last_frame = time.monotonic()
            service.client_message(five_tuple, frame)
        # ConnectionBind switched this connection to raw data: the rest belongs to the peer.
        rest = self.deframer.take_rest()
        if rest:
            self.splice.write(rest)

    def write(self, data: bytes) -> None:
        """Send one frame to the client, dropping it on backlog (raw bytes once spliced: never
        dropped, see :func:`turnd.tcp_relays.spliced_write`)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            self.service.core.stats["drop.stream_closed"] += 1
            return
        if self.splice is not None:
            spliced_write(transport, data, self.service, "client")
            return
        if transport.get_write_buffer_size() > WRITE_BACKLOG_LIMIT:
            self.service.core.stats["drop.stream_backlog"] += 1
            return
        transport.write(data)

    def close(self) -> None:
        """Close the connection (the core is told through connection_lost)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # --- idle timeout --------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        timeout = float(self.service.config.limits.idle_timeout)
        delay = max(0.0, self.last_frame + timeout - time.monotonic())
        loop = asyncio.get_running_loop()
        self.idle_timer = loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        self.idle_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        busy = self.splice is not None or self.five_tuple in self.service.core.allocations
        timeout = float(self.service.config.limits.idle_timeout)
        if busy:
            self.last_frame = time.monotonic()
        elif time.monotonic() - self.last_frame >= timeout:
            self.service.core.stats["drop.idle_timeout"] += 1
            event(
                logging.INFO,
                "connection.idle_timeout",
                client=str(self.five_tuple.client if self.five_tuple else "?"),
                transport=self.kind.value,
                seconds=timeout,
            )
            self.close()
            return
        self._arm_idle()


async def serve_tls(
    service: StreamHost,
    listener: socket.socket,
    server: Address,
    context: ssl.SSLContext,
    timeout: float,
) -> None:
    """Accept TLS connections on ``listener`` (non-blocking, listening) until cancelled.

    Each connection takes its slot under ``max_connections``/``max_connections_per_ip`` at TCP
    accept, before its handshake (a server built with ``create_server(ssl=...)`` would only see
    it once the handshake is done); then the handshake has ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    while listener.fileno() != -1:
        try:
            sock, peer = await loop.sock_accept(listener)
        except OSError:
            service.core.stats["drop.accept_failed"] += 1
            await asyncio.sleep(ACCEPT_RETRY_DELAY)
            continue
        stream = ClientStream(service, Transport.TLS, server)
        if not stream.admit(peer):
            sock.close()
            continue
        service.spawn(_tls_handshake(stream, sock, context, timeout))


async def _tls_handshake(
    stream: ClientStream, sock: socket.socket, context: ssl.SSLContext, timeout: float
) -> None:
    """Run the handshake of an admitted connection; on failure, timeout or shutdown its slot goes
    back (the transport, which owns ``sock`` from here on, has closed it)."""
    service = stream.service
    done = False
    try:
        await asyncio.get_running_loop().connect_accepted_socket(
            lambda: stream, sock, ssl=context, ssl_handshake_timeout=timeout
        )
        done = True
    except OSError:  # ssl.SSLError, a reset, or the handshake timeout (ConnectionAbortedError)
        service.core.stats["drop.tls_handshake_failed"] += 1
    except Exception:
        service.internal_error("TLS handshake")
    finally:
        if not done:
            service.stream_closed(stream)
