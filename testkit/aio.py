"""The asyncio driver of the testkit client: UDP datagrams or a TCP/TLS stream, loopback only.

:class:`AsyncTurnClient` runs a :class:`~testkit.client.TurnSession` on the running event loop:
a datagram endpoint, or a stream whose reader task cuts frames with the project's deframer
(RFC 8489 §6.2.2, RFC 8656 §12.5). Every frame lands on one queue; a request waits there for
its answer (retransmitting over UDP, RFC 8489 §6.2.1) and keeps Data indications and
ChannelData for :meth:`AsyncTurnClient.receive`. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from stun.addresses import Address
from stun.framing import StreamDeframer
from stun.message import Message, Method
from testkit.client import (
    ChannelData,
    DataIndication,
    Received,
    Request,
    SessionState,
    TurnSession,
    parse,
    raise_for_error,
)
from testkit.links import LOOPBACK, MAX_STREAM_FRAME, client_tls_context
from testkit.sync import RETRANSMIT_INTERVAL, TIMEOUT, random_txid


class _Datagrams(asyncio.DatagramProtocol):
    """Puts every datagram from the server on the queue."""

    def __init__(self, server: tuple[str, int], queue: asyncio.Queue[bytes]) -> None:
        self.server = server
        self.queue = queue

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if tuple(addr[:2]) == self.server:
            self.queue.put_nowait(data)


class AsyncTurnClient(SessionState):
    """A TURN client on the event loop; make one with :meth:`open`."""

    def __init__(self, server: tuple[str, int], session: TurnSession, timeout: float) -> None:
        self.server = server
        self.session = session
        self.timeout = timeout
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.datagram = True
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: deque[Received] = deque()

    @classmethod
    async def open(
        cls,
        server: tuple[str, int],
        username: str = "",
        password: str = "",
        *,
        transport: str = "udp",
        timeout: float = TIMEOUT,
    ) -> AsyncTurnClient:
        """A client on UDP (from 127.0.0.1), TCP or TLS (no certificate check) to ``server``."""
        client = cls(server, TurnSession(username, password, new_txid=random_txid), timeout)
        loop = asyncio.get_running_loop()
        if transport == "udp":
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(server, client.queue), local_addr=(LOOPBACK, 0)
            )
            client._udp = udp
        elif transport in ("tcp", "tls"):
            tls = client_tls_context() if transport == "tls" else None
            reader, writer = await asyncio.open_connection(
                *server, ssl=tls, server_hostname="" if tls else None
            )
            client.datagram = False
            client._writer = writer
            client._reader_task = asyncio.create_task(client._read(reader))
        else:
            raise ValueError(f"unknown transport {transport!r}")
        return client

    async def _read(self, reader: asyncio.StreamReader) -> None:
        deframer = StreamDeframer(max_message_size=MAX_STREAM_FRAME)
        while chunk := await reader.read(1 << 16):
            for frame in deframer.feed(chunk):
                self.queue.put_nowait(frame)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await self._reader_task

    async def __aenter__(self) -> AsyncTurnClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- raw I/O -------------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Send one datagram or frame to the server."""
        if self._udp is not None:
            self._udp.sendto(data, self.server)
        elif self._writer is not None:
            self._writer.write(data)

    async def _next(self, timeout: float) -> bytes | None:
        try:
            return await asyncio.wait_for(self.queue.get(), max(timeout, 0.0))
        except TimeoutError:
            return None

    async def receive(self, timeout: float | None = None) -> Received | None:
        """The next Data indication, ChannelData or unsolicited message, or None on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        while not self._pending:
            frame = await self._next(deadline - loop.time())
            if frame is None:
                return None
            parsed = parse(frame)
            if parsed is not None:
                self._pending.append(parsed)
        return self._pending.popleft()

    # --- requests ------------------------------------------------------------------------------

    async def exchange(self, request: Request) -> Message:
        """Send ``request`` and return its answer; TimeoutError when none comes in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while loop.time() < deadline:
            self.send_raw(request.data)
            wait_until = deadline
            if self.datagram:
                wait_until = min(deadline, loop.time() + RETRANSMIT_INTERVAL)
            while (frame := await self._next(wait_until - loop.time())) is not None:
                parsed = parse(frame)
                if isinstance(parsed, Message) and parsed.transaction_id == request.txid:
                    return parsed
                if isinstance(parsed, DataIndication | ChannelData):
                    self._pending.append(parsed)
        raise TimeoutError(f"no answer to {request.method.name} from {self.server}")

    async def run(self, request: Request) -> Message:
        """The whole exchange of ``request``, with the session's 401/438 retry."""
        while True:
            reply = await self.exchange(request)
            again = self.session.answer(request, reply)
            if again is None:
                return reply
            request = again

    async def request(self, method: Method, *attributes: Any) -> Message:
        """A request with the long-term credential dance."""
        return await self.run(self.session.request(method, *attributes))

    async def request_ok(self, method: Method, *attributes: Any) -> Message:
        """:meth:`request`, raising :class:`~testkit.client.TurnError` for an error answer."""
        return raise_for_error(method, await self.request(method, *attributes))

    async def binding(self) -> Message:
        return await self.exchange(self.session.binding())

    async def allocate(self, *attributes: Any) -> Message:
        return await self.run(self.session.allocate(*attributes))

    async def refresh(self, lifetime: int | None = None) -> Message:
        return await self.run(self.session.refresh(lifetime))

    async def create_permission(self, *peers: Address) -> Message:
        return await self.run(self.session.create_permission(*peers))

    async def channel_bind(self, channel: int, peer: Address) -> Message:
        return await self.run(self.session.channel_bind(channel, peer))

    async def connect(self, peer: Address) -> Message:
        return await self.run(self.session.connect(peer))

    async def connection_bind(self, connection_id: int) -> Message:
        return await self.run(self.session.connection_bind(connection_id))

    # --- data ----------------------------------------------------------------------------------

    def send_indication(self, peer: Address, data: bytes) -> None:
        """Relay ``data`` to ``peer`` with a Send indication (RFC 8656 §10.1)."""
        self.send_raw(self.session.send_indication(peer, data))

    def send_channel_data(self, channel: int, data: bytes) -> None:
        """Relay ``data`` over a bound channel (RFC 8656 §12.4; padded over a stream)."""
        self.send_raw(self.session.channel_data(channel, data, pad=not self.datagram))
