"""The packet path: listeners and relay sockets in, core calls, actions out, one timer.

Everything that decides lives in :mod:`turnd.core`; this module receives datagrams, stamps them
with the wall clock (nonces and REST credentials carry Unix times shared by every node), calls the
core, and executes the actions it returns (one handler per action type, :meth:`PacketPath.execute`).
A packet that makes the core raise is logged and counted under ``internal_errors`` — never fatal.

This is the only module of the shell on the per-datagram hot path (DESIGN.md "Hot path"):
``client_message`` and ``_RelayDatagrams.handle`` send ChannelData, Send/Data and bare Binding
answers straight through, without action objects. It also binds relay sockets (with their
EVEN-PORT reservations) and owns the TCP/TLS connection table the core's answers go out on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs

from stun.addresses import Address, AddressFamily
from turnd.config import Config
from turnd.core.actions import UDP as _UDP
from turnd.core.actions import (
    Action,
    AllocationEnded,
    CloseConnection,
    ClosePeerConnection,
    CloseRelay,
    ConnectPeer,
    EntryPoint,
    FiveTuple,
    ForwardToNode,
    OpenRelay,
    RevokeUser,
    SendToClient,
    SendToPeer,
    SpliceConnection,
)
from turnd.core.server import TurnServer
from turnd.logs import event
from turnd.streams import StreamTable
from turnd.tcp_relays import TcpRelays

if TYPE_CHECKING:
    from turnd.cluster import ClusterLink
    from turnd.streams import ClientStream

_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)


#: Sources whose FiveTuple (listeners) or Address (relays) objects are kept, so that a datagram
#: from a recent source builds none (building them costs about 1 µs on Python 3.11). Per listener,
#: and one for all relays; a full cache starts over, so spoofed sources cost at most this much.
SOURCE_CACHE_SIZE = 16384

_Kept = TypeVar("_Kept")


class SourceCache(dict[tuple[Any, ...], _Kept]):
    """Datagram source (as the loop gives it) -> what ``build`` made of it, at most
    SOURCE_CACHE_SIZE of them: ``cache[addr]`` builds on a miss."""

    def __init__(self, build: Callable[[tuple[Any, ...]], _Kept]) -> None:
        super().__init__()
        self.build = build

    def __missing__(self, addr: tuple[Any, ...]) -> _Kept:
        if len(self) >= SOURCE_CACHE_SIZE:
            self.clear()
        kept = self[addr] = self.build(addr)
        return kept


class _ClientDatagrams(asyncio.DatagramProtocol):
    """A UDP listener: every datagram goes to ``PacketPath.client_message``."""

    def __init__(self, service: PacketPath, server: Address) -> None:
        self.service = service
        self.server = server
        self.five_tuples = SourceCache(
            lambda addr: FiveTuple(_UDP, Address(addr[0], addr[1]), server)
        )

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.service.client_message(self.five_tuples[addr], data)

    def error_received(self, exc: Exception) -> None:
        self.service.core.stats["socket.listener_errors"] += 1


class _RelayDatagrams(asyncio.DatagramProtocol):
    """A relay socket: every datagram goes to ``TurnServer.peer_message``."""

    def __init__(self, service: PacketPath, relay: Address) -> None:
        self.service = service
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        service = self.service
        try:
            out = service.core.peer_message(self.relay, service.peers[addr], data, time.time())
        except Exception:
            service.internal_error("peer datagram")
            return
        if out is None:
            return  # dropped, counted
        if type(out) is tuple:
            service.send_to_client(out[0], out[1])
        elif out:
            service.execute(cast("list[Action]", out))  # only lists are left

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for what the relay sent (port unreachable and the like).
        self.service.core.stats["socket.relay_errors"] += 1


class PacketPath:
    """The sockets of one service and what the core asks of them."""

    def __init__(
        self,
        core: TurnServer,
        config: Callable[[], Config],
        allocation_ended: Callable[[AllocationEnded], None],
        revoke_user: Callable[[RevokeUser], object],
    ) -> None:
        self.core = core
        self._config = config
        #: This node's cluster I/O, when [cluster] lists nodes (set once, by the service).
        self.cluster: ClusterLink | None = None
        #: Where every client message goes: the core, or (set with ``cluster``) the cluster
        #: node around it.
        self.entry: EntryPoint = core
        self._listeners: dict[Address, asyncio.DatagramTransport] = {}
        self._relays: dict[Address, asyncio.DatagramTransport] = {}
        #: Peer datagram sources -> their Address, for every relay socket.
        self.peers = SourceCache(lambda addr: Address(addr[0], addr[1]))
        #: The open TCP/TLS client connections; ``_streams`` is its 5-tuple map, read per send.
        self.streams = StreamTable()
        self._streams = self.streams.by_five_tuple
        self.tcp_relays = TcpRelays(self)
        self._reserved: dict[Address, socket.socket] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: One handler per action type, bound once: ``execute`` costs a dict lookup per action.
        self._handlers: dict[type, Callable[[Any], object]] = {
            SendToPeer: self._send_to_peer,
            SendToClient: self._send_action,
            OpenRelay: self._open_relay,
            CloseRelay: self._close_relay,
            AllocationEnded: allocation_ended,
            SpliceConnection: self._splice,
            ConnectPeer: self._connect_peer,
            ClosePeerConnection: self._close_peer_connection,
            CloseConnection: self._close_connection,
            ForwardToNode: self._forward_to_node,
            RevokeUser: revoke_user,
        }

    @property
    def config(self) -> Config:
        """The service's current configuration (a reload swaps it)."""
        return self._config()

    @property
    def action_types(self) -> frozenset[type]:
        """The action types :meth:`execute` has a handler for."""
        return frozenset(self._handlers)

    @property
    def udp_addresses(self) -> list[Address]:
        """The bound UDP listener addresses (with the real port when 0 was asked)."""
        return list(self._listeners)

    def run_on_current_loop(self) -> None:
        """Arm the timer on the running event loop from now on (the service's start)."""
        self._loop = asyncio.get_running_loop()

    async def listen_udp(self, bound: Address, sock: socket.socket) -> None:
        """Serve clients on the bound UDP socket ``sock`` (bound at ``bound``)."""
        self._listeners[bound] = await _endpoint(_ClientDatagrams(self, bound), sock)

    def internal_error(self, where: str) -> None:
        """A bug surfaced while handling one packet: log it, count it, carry on."""
        self.core.stats["internal_errors"] += 1
        logging.getLogger("turnd").exception("internal error while handling a %s", where)

    # --- executing actions -------------------------------------------------------------------

    def execute(self, actions: list[Action]) -> None:
        """Carry out what the core asked, in order, then re-arm the timer if needed."""
        handlers = self._handlers
        for action in actions:
            handler = handlers.get(type(action))
            if handler is None:  # a core action this shell has no handler for: a bug
                self.core.stats["drop.unknown_action"] += 1
                event(logging.ERROR, "action.unknown", action=type(action).__name__)
            else:
                handler(action)
        self._arm_timer()

    def _send_to_peer(self, action: SendToPeer) -> None:
        relay = self._relays.get(action.relay)
        if relay is None:
            self.core.stats["drop.relay_socket_missing"] += 1
        else:
            relay.sendto(action.data, action.peer)

    def _send_action(self, action: SendToClient) -> None:
        self.send_to_client(action.five_tuple, action.data)

    def _forward_to_node(self, action: ForwardToNode) -> None:
        cluster = self.cluster
        if cluster is None:  # only a cluster node answers ForwardToNode
            self.core.stats["backbone.drop.not_started"] += 1
        else:
            cluster.send(action.node, action.data)

    def _splice(self, action: SpliceConnection) -> None:
        client = self._streams.get(action.five_tuple)
        self.tcp_relays.splice(action.connection_id, action.five_tuple, client)

    def _connect_peer(self, action: ConnectPeer) -> None:
        self.spawn(self.tcp_relays.connect(action))

    def _close_peer_connection(self, action: ClosePeerConnection) -> None:
        self.tcp_relays.close(action.connection_id)

    def _close_connection(self, action: CloseConnection) -> None:
        closing = self._streams.get(action.five_tuple)
        if closing is not None:
            closing.close()

    def client_message(self, five_tuple: FiveTuple, data: bytes) -> None:
        """One client message of ``five_tuple``: a UDP datagram or a frame of a TCP/TLS
        connection, carried out as the entry point (the core, or the cluster node) says
        (``TurnServer.client_message``: relayed data and bare Binding answers come back as
        plain tuples and bytes, the hot path; everything else as actions)."""
        try:
            out = self.entry.client_message(five_tuple, data, time.time())
        except Exception:
            self.internal_error("client message")
            return
        if out is None:
            return  # dropped, counted
        if type(out) is tuple:  # type() is one specialised opcode on 3.11; isinstance a call
            relay = self._relays.get(out[0])
            if relay is None:
                self.core.stats["drop.relay_socket_missing"] += 1
            else:
                relay.sendto(out[2], out[1])
        elif type(out) is bytes:
            self.send_to_client(five_tuple, out)
        elif out:
            self.execute(cast("list[Action]", out))  # only lists are left

    def send_to_client(self, five_tuple: FiveTuple, data: bytes) -> None:
        """Send to a client over its listener (UDP) or its connection (TCP/TLS)."""
        if five_tuple.transport is _UDP:
            listener = self._listeners.get(five_tuple.server)
            if listener is None:
                self.core.stats["drop.listener_missing"] += 1
            else:
                listener.sendto(data, five_tuple.client)
        else:
            stream = self._streams.get(five_tuple)
            if stream is None:
                self.core.stats["drop.stream_closed"] += 1
            else:
                stream.write(data)

    def spawn(self, coroutine: Any) -> None:
        """Run ``coroutine`` as a task that :meth:`close` cancels."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _open_relay(self, action: OpenRelay) -> None:
        relay = action.relay
        if action.tcp:
            self.spawn(self.tcp_relays.open_listener(action.ticket, relay))
            return
        if action.reserved:
            sock: socket.socket | None = self._reserved.pop(relay, None)
            if sock is None:
                self.relay_result(action.ticket, False)
                return
        else:
            sizes = buffer_sizes(self._config())
            sock = _bind_relay(relay, self.core.stats, sizes)
            if sock is None:
                self.relay_result(action.ticket, False)
                return
            if action.reserve:
                spare = _bind_relay(Address(relay.host, relay.port + 1), self.core.stats, sizes)
                if spare is None:
                    sock.close()
                    self.relay_result(action.ticket, False)
                    return
                self._reserved[Address(relay.host, relay.port + 1)] = spare
        if action.dont_fragment and relay.family is AddressFamily.IPV4:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
        self.spawn(self._adopt_relay(action.ticket, relay, sock))

    async def _adopt_relay(self, ticket: int, relay: Address, sock: socket.socket) -> None:
        try:
            await self.serve_relay(relay, sock)
        except OSError:
            sock.close()
            self.relay_result(ticket, False)
            return
        self.relay_result(ticket, True)

    async def serve_relay(self, relay: Address, sock: socket.socket) -> None:
        """Relay the peer datagrams of the bound socket ``sock`` (the relay ``relay``)."""
        self._relays[relay] = await _endpoint(_RelayDatagrams(self, relay), sock)

    def relay_result(self, ticket: int, ok: bool) -> None:
        """The socket for an ``OpenRelay`` is bound (``ok``) or not: tell the core."""
        try:
            actions = self.core.relay_opened(ticket, ok, time.time())
        except Exception:
            self.internal_error("relay result")
            return
        self.execute(actions)

    def _close_relay(self, action: CloseRelay) -> None:
        relay = action.relay
        if self.tcp_relays.close_listener(relay):
            return
        transport = self._relays.pop(relay, None)
        if transport is not None:
            transport.close()
        sock = self._reserved.pop(relay, None)
        if sock is not None:
            sock.close()

    # --- stream connections ------------------------------------------------------------------

    def admit_stream(self, stream: ClientStream) -> bool:
        """Register a new TCP/TLS connection, or refuse it past the connection limits."""
        if self.streams.admit(stream, self.config.limits):
            return True
        self.core.stats["drop.connection_limit"] += 1
        return False

    def stream_closed(self, stream: ClientStream) -> None:
        """A TCP/TLS connection ended: forget it and tell the core (its allocation goes)."""
        five_tuple = stream.five_tuple
        if five_tuple is None or not self.streams.forget(stream):
            return
        try:
            actions = self.core.connection_closed(five_tuple, time.time())
        except Exception:
            self.internal_error("connection close")
            return
        self.execute(actions)

    # --- handing allocations over (turnd.workers.handoff) -------------------------------------

    def pause(self, relays: list[Address]) -> Paused:
        """Stop reading the UDP listeners and the relay sockets of ``relays``, and stop the
        timer, so that what arrives waits in the kernel's queues: the sockets, each a duplicate
        of the one read until now, to hand over or to :meth:`resume`. TCP and TLS connections
        are served on."""
        listeners = {bound: _detach(transport) for bound, transport in self._listeners.items()}
        self._listeners.clear()
        moved = {
            relay: _detach(self._relays.pop(relay)) for relay in relays if relay in self._relays
        }
        self.hold_timer()
        return Paused(listeners, moved)

    async def resume(self, paused: Paused) -> None:
        """Read again what :meth:`pause` stopped (a hand-off called off)."""
        await self.serve_together(paused.listeners, paused.relays)
        paused.listeners.clear()
        paused.relays.clear()
        self.release_timer()

    async def serve_together(
        self, listeners: dict[Address, socket.socket], relays: dict[Address, socket.socket]
    ) -> None:
        """Serve UDP listeners and relay sockets that have packets waiting, as one: a packet
        read from one of them before the last is served waits, and is handled after, in order
        (a reply to a client needs its listener, a datagram to a peer its relay)."""
        early: list[tuple[asyncio.DatagramProtocol, bytes, tuple[Any, ...]]] = []
        held: list[asyncio.DatagramProtocol] = []

        def holding(protocol: asyncio.DatagramProtocol) -> asyncio.DatagramProtocol:
            # An attribute of the instance, deleted below: the class's method then serves, with
            # no test on the hot path.
            protocol.datagram_received = lambda data, addr: early.append((protocol, data, addr))  # type: ignore[method-assign]
            held.append(protocol)
            return protocol

        for bound, sock in listeners.items():
            self._listeners[bound] = await _endpoint(holding(_ClientDatagrams(self, bound)), sock)
        for relay, sock in relays.items():
            self._relays[relay] = await _endpoint(holding(_RelayDatagrams(self, relay)), sock)
        for protocol in held:
            del protocol.datagram_received
        for protocol, data, addr in early:
            protocol.datagram_received(data, addr)

    def hold_timer(self) -> None:
        """No timer runs until :meth:`release_timer`: the core's state is being handed over."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # A deadline before any other makes _arm_timer return at once: no test on the hot path.
        self._timer_when = float("-inf")

    def release_timer(self) -> None:
        """Run the timer again, from the core's next deadline (allocations may have come)."""
        if self._timer is None:
            self._timer_when = None
        self._arm_timer()

    # --- the one timer -----------------------------------------------------------------------

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is None or (self._timer_when is not None and self._timer_when <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._timer_when = deadline
        self._timer = loop.call_later(max(0.0, deadline - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = None
        try:
            actions = self.core.handle_timer(time.time())
        except Exception:
            self.internal_error("timer")
            actions = []
        self.execute(actions)

    def close(self) -> None:
        """Stop the timer and the tasks, close every connection and socket."""
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        self.tcp_relays.stop()
        for stream in list(self._streams.values()):
            stream.close()
        for transport in [*self._listeners.values(), *self._relays.values()]:
            transport.close()
        for sock in self._reserved.values():
            sock.close()
        self._listeners.clear()
        self._relays.clear()
        self._reserved.clear()


@attrs.define(eq=False)
class Paused:
    """The sockets :meth:`PacketPath.pause` stopped reading: UDP listeners by bound address,
    relays by relay address."""

    listeners: dict[Address, socket.socket]
    relays: dict[Address, socket.socket]

    def close(self) -> None:
        """Close this process's copies (the hand-off is done: another process reads them)."""
        for sock in [*self.listeners.values(), *self.relays.values()]:
            sock.close()
        self.listeners.clear()
        self.relays.clear()


async def _endpoint(
    protocol: asyncio.DatagramProtocol, sock: socket.socket
) -> asyncio.DatagramTransport:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: protocol, sock=sock
    )
    return transport


def _detach(transport: asyncio.BaseTransport) -> socket.socket:
    """A duplicate of ``transport``'s socket; the transport is closed, so nothing reads it here
    (uvloop's datagram transports cannot pause reading)."""
    fd = os.dup(transport.get_extra_info("socket").fileno())
    transport.close()
    return socket.socket(fileno=fd)


def buffer_sizes(config: Config) -> tuple[int, int]:
    """The receive and send buffers ``[server] socket_rcvbuf/socket_sndbuf`` ask for (0: the
    kernel's default)."""
    return config.server.socket_rcvbuf, config.server.socket_sndbuf


def set_buffers(sock: socket.socket, sizes: tuple[int, int]) -> None:
    """Ask for ``sizes`` (receive, send) on a listener or relay socket; the kernel caps each at
    net.core.rmem_max / wmem_max (:func:`granted_buffers` says what it gives)."""
    for option, size in zip((socket.SO_RCVBUF, socket.SO_SNDBUF), sizes, strict=True):
        if size:
            with contextlib.suppress(OSError):  # the kernel caps it; a refusal is harmless
                sock.setsockopt(socket.SOL_SOCKET, option, size)


def granted_buffers(sizes: tuple[int, int]) -> tuple[int, int]:
    """What the kernel gives a UDP socket that asks for ``sizes``: half of what getsockopt
    says (Linux doubles the request for its own bookkeeping, after capping it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        set_buffers(probe, sizes)
        return (
            probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2,
            probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2,
        )


def check_buffers(config: Config) -> None:
    """Log once when the kernel grants less than the configured buffers, with the fix."""
    sizes = buffer_sizes(config)
    try:
        granted = granted_buffers(sizes)
    except OSError:  # no IPv4 socket on this host: the check is a courtesy, not a condition
        return
    short = [
        f"{name} {got} of {asked} bytes (raise {cap})"
        for name, asked, got, cap in zip(
            ("socket_rcvbuf", "socket_sndbuf"), sizes, granted,
            ("net.core.rmem_max", "net.core.wmem_max"), strict=True,
        )
        if asked and got < asked
    ]  # fmt: skip
    if short:
        event(
            logging.WARNING,
            "socket.buffers_capped",
            "the kernel caps the socket buffers: " + "; ".join(short) + " — install "
            "systemd/turnd-sysctl.conf as /etc/sysctl.d/60-turnd.conf and run sysctl --system",
        )


def relay_socket_failed(stats: Counter[str], relay: Address, exc: OSError) -> None:
    """Count and log a relay socket (UDP or TCP) that could not be created, by errno."""
    reason = errno.errorcode.get(exc.errno or 0, "other")
    stats[f"relay.socket_failures.{reason}"] += 1
    event(
        logging.WARNING,
        "relay.socket_failed",
        "no relay socket: raise LimitNOFILE (systemd) or ulimit -n, or lower limits",
        relay=str(relay),
        reason=reason,
    )


def _bind_relay(
    relay: Address, stats: Counter[str], sizes: tuple[int, int]
) -> socket.socket | None:
    """A bound, non-blocking UDP socket on ``relay``, or None (the core then retries another
    port or answers 508). A socket that cannot even be created (EMFILE, ENFILE, ENOBUFS: the
    process or the host is out of descriptors or buffers) is counted and logged by its errno, so
    that an operator sees why Allocates fail."""
    family = socket.AF_INET6 if ":" in relay.host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        relay_socket_failed(stats, relay, exc)
        return None
    try:
        set_buffers(sock, sizes)
        sock.bind((relay.host, relay.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        return None
    return sock
