"""The supervisor <-> worker channel: JSON messages over a Unix stream socket pair.

Each message is a 4-byte big-endian length and a JSON object. A request carries ``id``, ``op``
and ``args`` and is answered by a message with the same ``id`` and ``result`` or ``error``; a
notice has no ``id`` and no answer. Either end may send either kind. The framing is bounded
(:data:`MAX_MESSAGE`): a peer that sends more is a broken peer, and the channel closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from turnd.logs import event

#: The largest message either end accepts: an allocation list of a busy worker fits many times.
MAX_MESSAGE = 64 * 1024 * 1024
#: Seconds a request waits for its answer by default.
CALL_TIMEOUT = 10.0
_LENGTH = struct.Struct(">I")

Handler = Callable[[str, dict[str, Any]], Any]


class ChannelClosed(ConnectionError):
    """The other end is gone (or broke the framing): no answer will come."""


class RemoteError(RuntimeError):
    """The other end answered a request with an error."""


class Channel:
    """One end of the channel: sends requests and notices, answers the other end's requests
    with ``handler`` (which may return an awaitable) and hands notices to ``on_notice``."""

    def __init__(
        self,
        sock: socket.socket,
        handler: Handler | None = None,
        on_notice: Callable[[str, dict[str, Any]], None] | None = None,
        name: str = "channel",
    ) -> None:
        self._sock = sock
        self._handler = handler
        self._on_notice = on_notice
        self.name = name
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self.closed = False

    async def open(self) -> None:
        """Wrap the socket in asyncio streams (on the running loop)."""
        self._sock.setblocking(False)
        self._reader, self._writer = await asyncio.open_unix_connection(
            sock=self._sock, limit=MAX_MESSAGE
        )

    def _send(self, message: dict[str, Any]) -> None:
        if self.closed or self._writer is None:
            raise ChannelClosed(f"{self.name} is closed")
        body = json.dumps(message, separators=(",", ":")).encode()
        self._writer.write(_LENGTH.pack(len(body)) + body)

    def notify(self, op: str, args: dict[str, Any] | None = None) -> bool:
        """Send a notice; False (nothing sent) when the channel is closed."""
        try:
            self._send({"op": op, "args": args or {}})
        except ChannelClosed:
            return False
        return True

    async def call(
        self, op: str, args: dict[str, Any] | None = None, timeout: float = CALL_TIMEOUT
    ) -> Any:
        """Ask the other end; its result, or RemoteError / ChannelClosed / TimeoutError."""
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            self._send({"id": ident, "op": op, "args": args or {}})
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(ident, None)

    async def run(self) -> None:
        """Read until the other end closes; then fail every waiting call."""
        assert self._reader is not None, "open() first"
        try:
            while True:
                header = await self._reader.readexactly(_LENGTH.size)
                (length,) = _LENGTH.unpack(header)
                if length > MAX_MESSAGE:
                    event(logging.ERROR, "workers.rpc_oversized", channel=self.name, bytes=length)
                    break
                message = json.loads(await self._reader.readexactly(length))
                self._dispatch(message)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, OSError):
            pass
        finally:
            self.close()

    def _dispatch(self, message: dict[str, Any]) -> None:
        ident = message.get("id")
        if "op" not in message:  # an answer
            future = self._waiting.get(ident) if isinstance(ident, int) else None
            if future is not None and not future.done():
                if "error" in message:
                    future.set_exception(RemoteError(str(message["error"])))
                else:
                    future.set_result(message.get("result"))
            return
        op, args = str(message["op"]), message.get("args") or {}
        if ident is None:
            if self._on_notice is not None:
                try:
                    self._on_notice(op, args)
                except Exception as exc:  # a bad notice is dropped; the channel reads on
                    event(logging.ERROR, "workers.bad_notice", str(exc), channel=self.name, op=op)
            return
        asyncio.get_running_loop().create_task(self._answer(ident, op, args))

    async def _answer(self, ident: Any, op: str, args: dict[str, Any]) -> None:
        try:
            if self._handler is None:
                raise RemoteError(f"{self.name} answers no requests")
            result = self._handler(op, args)
            if inspect.isawaitable(result):
                result = await result
            reply: dict[str, Any] = {"id": ident, "result": result}
        except Exception as exc:  # the error goes back to the caller, the channel stays
            reply = {"id": ident, "error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(ChannelClosed):  # nobody is left to answer
            self._send(reply)

    def close(self) -> None:
        """Close the socket and fail the calls still waiting."""
        if self.closed:
            return
        self.closed = True
        if self._writer is not None:
            self._writer.close()
        else:
            self._sock.close()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ChannelClosed(f"{self.name} closed"))
        self._waiting.clear()
