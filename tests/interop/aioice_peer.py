"""What the aioice interop runs share: the protocol that queues what an aioice relay endpoint
receives, and a loopback UDP echo peer for it to send to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any


class Collect(asyncio.DatagramProtocol):
    """Queues ``(data, source)`` for each datagram an aioice TURN endpoint receives."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.closed = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()  # aioice deleted the allocation and closed its socket

    async def close(self, transport: asyncio.BaseTransport, wait: float) -> None:
        """Close an aioice endpoint and wait until it has: ``close()`` only starts a task, and
        returning at once would leave aioice's socket open (a ResourceWarning, an error here)."""
        transport.close()
        await asyncio.wait_for(self.closed.wait(), wait)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait((data, addr))


@contextlib.asynccontextmanager
async def echo_peer() -> AsyncIterator[tuple[str, int]]:
    """A UDP peer on 127.0.0.1 echoing every datagram while the block runs; its address."""
    import asyncio_dgram  # only the aioice runs need it

    stream = await asyncio_dgram.bind(("127.0.0.1", 0))

    async def serve() -> None:
        while True:
            data, addr = await stream.recv()
            await stream.send(data, addr)

    task = asyncio.create_task(serve())
    try:
        yield stream.sockname
    finally:
        task.cancel()
        stream.close()
