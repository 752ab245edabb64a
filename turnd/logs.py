"""Structured logging: ``key=value`` text for people, one JSON object per line for machines.

Call sites log an event name and fields: ``log.info("listener.started", extra={"fields": {...}})``
is spelled :func:`event` here so that the fields survive either format.

Every record is one line in either format, whatever its values hold: a control character (C0,
DEL, C1, and the Unicode line and paragraph separators) in a value, a message or a traceback is
written as an escape, so that a username with a newline cannot forge a record. aiohttp's own
loggers (the side servers: metrics, credential API, control) go through the same formatter;
a client's malformed HTTP is one ``http.bad_request`` record without a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import IO, Any

LOGGER = logging.getLogger("turnd")
#: Loggers of the libraries serving the side ports, routed through turnd's formatter.
LIBRARY_LOGGERS = ("aiohttp",)
#: Characters that must never reach the log raw: they end, fake or hide a record.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


#: Fields every event of this process carries (a worker's slot).
_CONTEXT: dict[str, Any] = {}


def set_context(**fields: Any) -> None:
    """Add ``fields`` to every event this process logs from now on (``worker=N``)."""
    _CONTEXT.update(fields)


def event(level: int, name: str, message: str = "", **fields: Any) -> None:
    """Log event ``name`` with ``fields`` (and an optional human sentence)."""
    if _CONTEXT:
        fields = {**_CONTEXT, **fields}
    LOGGER.log(level, message or name, extra={"event": name, "fields": fields})


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [stamp, record.levelname.lower(), getattr(record, "event", record.name)]
        parts += [f"{k}={_text(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        message = record.getMessage()
        if message and message != getattr(record, "event", None):
            line += f" msg={_text(message)}"
        if record.exc_info:
            line += f" exc={_text(self.formatException(record.exc_info))}"
        return line


def escape_controls(text: str) -> str:
    """``text`` with each control character written as ``\\n``, ``\\t``, ``\\r`` or
    ``\\uXXXX``."""
    return _CONTROL.sub(lambda m: _SHORT_ESCAPES.get(m[0], f"\\u{ord(m[0]):04x}"), text)


def _text(value: Any) -> str:
    """A value as it stands in a text record: bare when unambiguous, else a quoted escape."""
    text = str(value)
    if text and not any(c in text for c in ' "\\=') and not _CONTROL.search(text):
        return text
    return escape_controls(json.dumps(text, ensure_ascii=False))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", record.name),
        }
        body.update(getattr(record, "fields", {}))
        message = record.getMessage()
        if message and message != body["event"]:
            body["msg"] = message
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        # ensure_ascii escapes C0, C1 and the separators; DEL is ASCII and needs its own escape.
        return json.dumps(body, default=str).replace("\x7f", "\\u007f")


class _ClientErrorFilter(logging.Filter):
    """A client's malformed HTTP on a side port: one ``http.bad_request`` record at INFO, its
    reason as a field, no traceback (it is the client's fault, not a bug of turnd's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == LOGGER.name or record.name.startswith(LOGGER.name + ".")
        if ours or not record.exc_info:
            return True
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1]
        if isinstance(error, HttpProcessingError | ConnectionError):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.event = "http.bad_request"
            record.fields = {
                "logger": record.name,
                "reason": type(error).__name__,
                "detail": str(error),
            }
        return True


def setup(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Send turnd's logs, and those of ``LIBRARY_LOGGERS``, to ``stream`` (stderr) at ``level``
    in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    for logger in (LOGGER, *map(logging.getLogger, LIBRARY_LOGGERS)):
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    handler.addFilter(_ClientErrorFilter())
