"""The TURN listeners: binding each configured one, and a report of what came of it.

A listener that cannot be bound is reported (``listener.failed``, with a reason an operator can
act on, :func:`bind_failure_reason`) and the others start; the service fails only when none
binds. UDP listeners are then served by :class:`turnd.packet_path.PacketPath`, TCP and TLS ones
by :mod:`turnd.streams`. Also the ICE URLs of what serves, for minted credentials.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Mapping

import attrs

from stun.addresses import Address
from turnd.assembly import StartupError
from turnd.config import Config
from turnd.config import Transport as ListenerTransport
from turnd.core.actions import Transport
from turnd.logs import event
from turnd.packet_path import PacketPath, buffer_sizes, set_buffers
from turnd.streams import ClientStream, serve_tls

#: Pending TCP/TLS connections the kernel queues per listener before accept.
LISTEN_BACKLOG = 1024


@attrs.frozen
class ListenerReport:
    """What happened to one configured listener at start."""

    transport: str
    address: str
    port: int
    ok: bool
    reason: str = ""


def bind_failure_reason(exc: OSError, port: int) -> str:
    """A sentence an operator can act on for a failed bind."""
    if exc.errno == errno.EACCES and port < 1024:
        return (
            f"permission denied: port {port} is privileged; run as root or grant "
            "CAP_NET_BIND_SERVICE (the systemd unit does)"
        )
    if exc.errno == errno.EADDRINUSE:
        return "address already in use by another program"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this host"
    return exc.strerror or str(exc)


def bind_stream(host: str, port: int, *, reuseport: bool = False) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (OSError when it cannot be bound)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def bind_datagram(
    host: str, port: int, sizes: tuple[int, int], *, reuseport: bool = False
) -> socket.socket:
    """A UDP listener socket on ``host``:``port`` with buffers of ``sizes`` (receive, send;
    OSError when it cannot be bound)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        set_buffers(sock, sizes)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class Listeners:
    """The client listeners of one service."""

    def __init__(self, path: PacketPath) -> None:
        self._path = path
        self.reports: list[ListenerReport] = []
        #: Every listener that is serving: (transport, bound address).
        self.bound: list[tuple[str, Address]] = []
        self._servers: list[asyncio.Server] = []
        self._tls_listeners: list[socket.socket] = []
        self.tls_context: ssl.SSLContext | None = None
        self.tls_error = ""
        self._inherited: Mapping[tuple[str, str, int], socket.socket] | None = None
        #: Inherited UDP listeners bound but not read yet (``hold_udp``): (bound, socket).
        self.held: list[tuple[Address, socket.socket]] = []
        self._hold_udp = False

    async def start(
        self,
        config: Config,
        inherited: Mapping[tuple[str, str, int], socket.socket] | None = None,
        *,
        hold_udp: bool = False,
    ) -> None:
        """Start every listener of ``config``; a failed one is reported, not raised, but for
        an operator's own TLS certificate that cannot serve (StartupError).

        ``inherited`` holds sockets bound already, by (transport, address, configured port): a
        worker's share of the supervisor's listeners (turnd.workers). They are served as they
        are; a listener missing from it is one the supervisor could not bind, so it is skipped.
        With ``hold_udp``, the inherited UDP ones count as bound but are not read until
        :meth:`take_held` (a worker taking over another's allocations reads them once it has).
        """
        self._inherited = inherited
        self._hold_udp = hold_udp
        listen = config.server.listen
        if any(listener.transport is ListenerTransport.TLS for listener in listen):
            self._load_tls(config)
            configured = config.tls.cert_file is not None or config.tls.key_file
            if self.tls_context is None and configured:
                # An operator's own certificate that cannot serve is a mistake to fix now, not
                # a node that quietly runs without its TLS listeners.
                raise StartupError(
                    f"tls: {self.tls_error} (fix tls.cert_file and tls.key_file, or remove the "
                    "tls listeners from server.listen)"
                )
        timeout = float(config.limits.tls_handshake_timeout)
        for address in config.listen_addresses():
            for listener in listen:
                if listener.transport is ListenerTransport.UDP:
                    await self._start_udp(str(address), listener.port, buffer_sizes(config))
                else:
                    await self._start_stream(
                        Transport(listener.transport.value), str(address), listener.port, timeout
                    )

    def _adopted(self, transport: str, host: str, port: int) -> socket.socket | bool | None:
        """The inherited socket of a listener; True when this service binds its own; None when
        it is a worker's and the supervisor has none for it."""
        if self._inherited is None:
            return True
        return self._inherited.get((transport, host, port))

    async def _start_udp(self, host: str, port: int, sizes: tuple[int, int]) -> None:
        adopted = self._adopted("udp", host, port)
        if adopted is None:
            return
        if isinstance(adopted, socket.socket):
            bound = Address(host, adopted.getsockname()[1])
            if self._hold_udp:
                self.held.append((bound, adopted))
            else:
                await self._path.listen_udp(bound, adopted)
            self.bound.append(("udp", bound))
            return
        try:
            sock = bind_datagram(host, port, sizes)
        except OSError as exc:
            self.report("udp", host, port, False, bind_failure_reason(exc, port))
            return
        bound = Address(host, sock.getsockname()[1])
        await self._path.listen_udp(bound, sock)
        self.bound.append(("udp", bound))
        self.report("udp", host, bound.port, True)

    def _load_tls(self, config: Config) -> None:
        """Build the TLS context (configured files, or a self-signed certificate)."""
        from turnd.tls import TlsError, context_from_config

        try:
            self.tls_context, notes = context_from_config(config)
        except TlsError as exc:
            self.tls_context, self.tls_error = None, str(exc)
            return
        for note in notes:
            event(logging.WARNING, "tls.self_signed", note)

    async def _start_stream(self, kind: Transport, host: str, port: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        context = None
        if kind is Transport.TLS:
            if self.tls_context is None:
                self.report(kind.value, host, port, False, f"no TLS context: {self.tls_error}")
                return
            context = self.tls_context
        adopted = self._adopted(kind.value, host, port)
        if adopted is None:
            return
        if isinstance(adopted, socket.socket):
            sock = adopted
        else:
            try:
                sock = bind_stream(host, port)
            except OSError as exc:
                self.report(kind.value, host, port, False, bind_failure_reason(exc, port))
                return
        bound = Address(host, sock.getsockname()[1])
        if context is None:
            path = self._path
            server = await loop.create_server(lambda: ClientStream(path, kind, bound), sock=sock)
            self._servers.append(server)
        else:  # connections count from accept, before their handshake (turnd.streams)
            sock.setblocking(False)
            self._tls_listeners.append(sock)
            self._path.spawn(serve_tls(self._path, sock, bound, context, timeout))
        self.bound.append((kind.value, bound))
        if not isinstance(adopted, socket.socket):
            self.report(kind.value, host, bound.port, True)

    def take_held(self) -> list[tuple[Address, socket.socket]]:
        """The UDP listeners held at start, to serve (they are the caller's now)."""
        held, self.held = self.held, []
        return held

    def report(self, transport: str, host: str, port: int, ok: bool, reason: str = "") -> None:
        self.reports.append(ListenerReport(transport, host, port, ok, reason))
        if ok:
            event(logging.INFO, "listener.started", transport=transport, address=host, port=port)
        else:
            event(
                logging.WARNING,
                "listener.failed",
                transport=transport,
                address=host,
                port=port,
                reason=reason,
            )

    def ice_urls(self, host: str) -> tuple[list[str], list[str]]:
        """stun:/turn:/turns: URLs on ``host`` of the listeners that serve."""
        where = f"[{host}]" if ":" in host else host
        stun: list[str] = []
        turn: list[str] = []
        seen: set[tuple[str, int]] = set()
        for kind, address in self.bound:
            if (kind, address.port) in seen:
                continue
            seen.add((kind, address.port))
            if kind == "udp":
                stun.append(f"stun:{where}:{address.port}")
                turn.append(f"turn:{where}:{address.port}?transport=udp")
            elif kind == "tcp":
                turn.append(f"turn:{where}:{address.port}?transport=tcp")
            elif kind == "tls":
                turn.append(f"turns:{where}:{address.port}?transport=tcp")
        return stun[:1], turn

    def close(self) -> None:
        """Stop accepting TCP and TLS connections (UDP listeners close with the packet path)."""
        for server in self._servers:
            server.close()
        for listener in self._tls_listeners:
            listener.close()
        self._tls_listeners.clear()
        for _, sock in self.held:
            sock.close()
        self.held.clear()
