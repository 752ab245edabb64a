"""turnd's log records: one line each in text and JSON, whatever a client puts in a value."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.daemon import write_config
from turnd import logs
from turnd.assembly import resolve_secrets
from turnd.config import load_config
from turnd.service import TurnService

HOSTILE = "a\nb\tc%s{0}\r\x00\x1b[31m\x7f\x85\u2028d"
FORGED = "2026-01-01T00:00:00 info auth.ok user=admin"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """A stream for the loggers to write to; their old handlers are put back after."""
    saved = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
        for name in ("turnd", *logs.LIBRARY_LOGGERS)
    }
    yield io.StringIO()
    for name, (handlers, propagate) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_control_characters_in_values_never_break_the_line(fmt: str, captured: io.StringIO) -> None:
    """A field, a message and a traceback with \\n, \\t, \\r, NUL, ESC, DEL, C1 and U+2028 make one
    line that holds none of them raw; %s and {0} stay verbatim."""
    stream = captured
    logs.setup("debug", fmt, stream)
    logs.event(logging.WARNING, "auth.revoked", HOSTILE + "\n" + FORGED, username=HOSTILE)
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        logs.LOGGER.exception("bug", extra={"event": "bug", "fields": {"who": HOSTILE}})
    lines = stream.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3, lines
    for line in lines[:-1]:
        assert not logs._CONTROL.search(line), line
        assert "%s{0}" in line
    if fmt == "json":
        first, second = (json.loads(line) for line in lines[:-1])
        assert first["username"] == HOSTILE
        assert "Traceback" in second["exc"] and HOSTILE in second["exc"]
    else:
        assert "username=" + json.dumps(HOSTILE, ensure_ascii=False)[:3] in lines[0]
        assert not lines[1].startswith(FORGED)


def test_plain_values_stay_bare_in_text() -> None:
    """Ordinary values are not quoted; those with a space, quote, backslash or = are."""
    assert logs._text("127.0.0.1:3478") == "127.0.0.1:3478"
    assert logs._text("a b") == '"a b"'
    assert logs._text("a=b") == '"a=b"'
    assert logs._text("") == '""'


BAD_REQUESTS = [
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /\x00\n HTTP/1.1\r\n\r\n",
]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_bad_http_on_a_side_port_logs_no_traceback(
    fmt: str, tmp_path: Path, captured: io.StringIO
) -> None:
    """An 8 KiB header, Content-Length with Transfer-Encoding and a NUL in the request line to
    the metrics port: each is answered or closed, and the log has one-line records only."""
    stream = captured
    logs.setup("debug", fmt, stream)
    path = write_config(tmp_path)
    config, _ = resolve_secrets(load_config(str(path), {}))

    async def scenario() -> list[bytes]:
        service = TurnService(config, relay_ipv4="127.0.0.1")
        await service.start()
        try:
            host, port = service.side._metrics.addresses[0][:2]
            answers = []
            for request in BAD_REQUESTS:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(request)
                answers.append(await reader.read())
                writer.close()
            return answers
        finally:
            await service.stop()

    answers = asyncio.run(scenario())
    assert all(answer[:12] in (b"HTTP/1.0 400", b"HTTP/1.1 400") for answer in answers), answers
    text = stream.getvalue()
    assert "Traceback" not in text
    bad = [line for line in text.splitlines() if "http.bad_request" in line]
    assert len(bad) == len(BAD_REQUESTS), text
    for line in text.splitlines():
        assert line[:1] == "{" if fmt == "json" else line[:4].isdigit(), line
