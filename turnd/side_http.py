"""The side HTTP servers (metrics, credential API, control): a connection cap and a header
timeout, so that clients of these ports cannot hold connections or take the file descriptors
the relays need.

Theory of operation
-------------------
aiohttp has neither bound. ``runner`` makes an ``AppRunner`` whose keep-alive timeout is
``limits.side_header_timeout``: aiohttp arms that timer when a connection is made and again after
each answer, and closes the connection if no complete request head has arrived when it fires —
a request that never finishes its headers is closed like an idle keep-alive one. The sites here
(``TCPSite``, ``SockSite``) hand asyncio a protocol factory that counts the server's open
connections and, at ``limits.side_max_connections``, closes a new one at accept, counted as
``side_http.refused.<server>``.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import MutableMapping
from typing import Any

import attrs
from aiohttp import web


@attrs.frozen
class SideLimits:
    """The bounds of one side server, and where its refusals are counted."""

    max_connections: int = 64  # limits.side_max_connections
    header_timeout: float = 10.0  # limits.side_header_timeout
    stats: MutableMapping[str, int] = attrs.field(factory=Counter, eq=False)


class _Closed(asyncio.Protocol):
    """What a connection past the cap gets: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's handler of one connection, counted in ``cap.open`` until the connection ends."""

    def __init__(self, handler: asyncio.Protocol, cap: _Cap) -> None:
        self.handler, self.cap = handler, cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cap.open -= 1
        self.handler.connection_lost(exc)


class _Cap:
    """A protocol factory for ``server``: its handlers while fewer than ``limit`` are open."""

    def __init__(
        self, server: web.Server, name: str, limit: int, stats: MutableMapping[str, int]
    ) -> None:
        self.server, self.name, self.limit, self.stats = server, name, limit, stats
        self.open = 0

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limit:
            self.stats["side_http.refused." + self.name] += 1
            return _Closed()
        self.open += 1
        return _Counted(self.server(), self)


def _capped(
    app_runner: web.BaseRunner, cap_args: tuple[str, int, MutableMapping[str, int]]
) -> _Cap:
    """The capping protocol factory for a site of ``app_runner``."""
    server = app_runner.server
    assert server is not None  # set by runner.setup(), which must come first
    return _Cap(server, *cap_args)


def runner(app: web.Application, limits: SideLimits, **kwargs: Any) -> web.AppRunner:
    """An ``AppRunner`` for ``app`` closing connections without a request head after
    ``limits.header_timeout`` seconds."""
    return web.AppRunner(app, keepalive_timeout=limits.header_timeout, **kwargs)


class TCPSite(web.TCPSite):
    """``web.TCPSite`` holding at most ``limits.max_connections`` connections."""

    def __init__(
        self,
        app_runner: web.AppRunner,
        host: str,
        port: int,
        *,
        name: str,
        limits: SideLimits,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(app_runner, host, port, reuse_address=True, reuse_port=reuse_port)
        self._cap_args = (name, limits.max_connections, limits.stats)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        self._server = await asyncio.get_running_loop().create_server(
            _capped(self._runner, self._cap_args),
            self._host,
            self._port,
            reuse_address=True,
            reuse_port=self._reuse_port,
        )


class SockSite(web.SockSite):
    """``web.SockSite`` holding at most ``limits.max_connections`` connections."""

    def __init__(
        self,
        app_runner: web.AppRunner,
        sock: socket.socket,
        *,
        name: str,
        limits: SideLimits,
    ) -> None:
        super().__init__(app_runner, sock)
        self._cap_args = (name, limits.max_connections, limits.stats)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        self._server = await asyncio.get_running_loop().create_server(
            _capped(self._runner, self._cap_args), sock=self._sock
        )
