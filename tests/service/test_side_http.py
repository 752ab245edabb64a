"""The side HTTP servers hold a bounded number of connections, each for a bounded time without
a request head (issue 20, item 13)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from testkit.daemon import write_config
from turnd.assembly import resolve_secrets
from turnd.config import load_config
from turnd.service import TurnService

GET = b"GET /metrics HTTP/1.1\r\nHost: turnd\r\n\r\n"
SAFETY = 60.0  # Seconds before a hung test gives up; never a measured bound.


def _service(tmp_path: Path, limits: str) -> TurnService:
    path = write_config(tmp_path, "[limits]\n" + limits)
    config, _ = resolve_secrets(load_config(str(path), {}))
    return TurnService(config, relay_ipv4="127.0.0.1")


async def _head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SAFETY)


def test_metrics_connections_past_the_cap_are_closed_at_accept(tmp_path: Path) -> None:
    """With side_max_connections = 3, three connections are served and two more are closed
    by the server (EOF without an answer), each counted as side_http.refused.metrics."""
    service = _service(tmp_path, "side_max_connections = 3\nside_header_timeout = 3600\n")

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        await service.start()
        try:
            host, port = service.metrics_address.host, service.metrics_address.port
            kept = [await asyncio.open_connection(host, port) for _ in range(3)]
            heads = []
            for reader, writer in kept:  # answered: each holds one of the three places
                writer.write(GET)
                heads.append(await _head(reader))
            extra = [await asyncio.open_connection(host, port) for _ in range(2)]
            ends = [await asyncio.wait_for(reader.read(), SAFETY) for reader, _ in extra]
            for _, writer in kept + extra:
                writer.close()
            return heads, ends
        finally:
            await service.stop()

    heads, ends = asyncio.run(scenario())
    assert all(head.startswith(b"HTTP/1.1 200") for head in heads), heads
    assert ends == [b"", b""]
    assert service.core.stats["side_http.refused.metrics"] == 2


def test_a_request_head_that_never_ends_is_closed_by_the_server(tmp_path: Path) -> None:
    """A client that sends half a request head and waits is closed by the server after
    side_header_timeout (its read ends with EOF), as is one that sends nothing."""
    service = _service(tmp_path, "side_header_timeout = 0.2\n")

    async def scenario() -> list[bytes]:
        await service.start()
        try:
            host, port = service.metrics_address.host, service.metrics_address.port
            ends = []
            for sent in (b"GET /metrics HTTP/1.1\r\nHost: turnd\r\nX-Slow: ", b""):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(sent)
                ends.append(await asyncio.wait_for(reader.read(), SAFETY))
                writer.close()
            return ends
        finally:
            await service.stop()

    assert asyncio.run(scenario()) == [b"", b""]
