"""Structured logging: ``key=value`` text for people, one JSON object per line for machines.

Call sites log an event name and fields: ``log.info("listener.started", extra={"fields": {...}})``
is spelled :func:`event` here so that the fields survive either format.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER = logging.getLogger("turnd")


def event(level: int, name: str, message: str = "", **fields: Any) -> None:
    """Log event ``name`` with ``fields`` (and an optional human sentence)."""
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
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or '"' in text or not text) else text


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
        return json.dumps(body, default=str)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Send turnd's logs to stderr at ``level`` in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level.upper())
    LOGGER.propagate = False
