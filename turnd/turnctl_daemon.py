"""How turnctl talks to turnd: the control API client, and the shapes every command shares.

``Daemon`` speaks HTTP + JSON on the control socket (or the TCP listener with a bearer token)
and raises ``Unreachable`` or ``Refused``. ``call`` turns those into turnctl's message and exit
status (1; 2 for a request turnd found malformed). The command shapes (``answer``, ``act``,
``listing``, ``show_once``) print turnd's answer as JSON with ``--json``, for people otherwise.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable, Sequence
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

import attrs
import typer

from turnd.turnctl_format import printable, table

#: Where turnd serves the control API unless told otherwise (control.socket).
DEFAULT_SOCKET = "/run/turnd/control.sock"
#: Seconds to wait for turnd: a reload reads certificates and files, nothing takes longer.
TIMEOUT = 30.0


class Unreachable(Exception):
    """No answer from turnd (no socket, refused, timed out, not HTTP)."""


class Refused(Exception):
    """turnd answered with an error status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix stream socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@attrs.frozen
class Daemon:
    """Where turnd is and how to speak to it (the global options)."""

    socket_path: str = DEFAULT_SOCKET
    url: str | None = None
    token: str | None = None
    json: bool = False
    timeout: float = TIMEOUT

    @property
    def where(self) -> str:
        """The socket path or URL, for messages."""
        return self.url or self.socket_path

    def _connection(self) -> http.client.HTTPConnection:
        if self.url is None:
            return _UnixConnection(self.socket_path, self.timeout)
        parts = urlsplit(self.url)
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The decoded JSON answer (None for an empty one). Raises Unreachable or Refused."""
        headers = {"Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection = self._connection()
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except OSError as exc:
            raise Unreachable(exc.strerror or str(exc) or type(exc).__name__) from exc
        except http.client.HTTPException as exc:
            raise Unreachable(f"not an HTTP answer ({type(exc).__name__})") from exc
        finally:
            connection.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError as exc:
            raise Unreachable(f"not a JSON answer (HTTP {response.status})") from exc
        if response.status >= 400:
            message = payload.get("error") if isinstance(payload, dict) else None
            raise Refused(response.status, message or response.reason)
        return payload


def fail(message: str, code: int = 1) -> NoReturn:
    """Say ``message`` on stderr and exit with ``code``."""
    typer.echo(f"turnctl: {printable(message)}", err=True)
    raise typer.Exit(code)


def unreachable(daemon: Daemon, reason: object) -> str:
    """The message for a turnd that does not answer, naming the option that says where."""
    see = "--url" if daemon.url else "--socket"
    return f"cannot reach turnd at {daemon.where}: {reason} (is it running? see {see})"


def call(
    ctx: typer.Context,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    failure: str = "",
) -> Any:
    """Ask turnd; on any failure, say why on stderr and exit 1 (2 for a malformed request)."""
    daemon: Daemon = ctx.obj
    try:
        return daemon.request(method, path, body)
    except Unreachable as exc:
        fail(unreachable(daemon, exc))
    except Refused as exc:
        hint = " (see --token)" if exc.status == 401 else ""
        fail(f"{failure}{exc.message}{hint}", 2 if exc.status == 400 else 1)


def segment(value: str) -> str:
    """``value`` quoted as one path segment of a control API URL."""
    return quote(value, safe="")


def emit_json(payload: Any) -> None:
    """Print turnd's answer as indented JSON (``--json``)."""
    typer.echo(json.dumps(payload, indent=2))


def wants_json(ctx: typer.Context) -> bool:
    """Whether ``--json`` was given."""
    daemon: Daemon = ctx.obj
    return daemon.json


# The command shapes.


def answer(
    ctx: typer.Context,
    method: str,
    path: str,
    render: Callable[[Any], None],
    body: dict[str, Any] | None = None,
    failure: str = "",
) -> None:
    """Ask turnd; print its answer as JSON with ``--json``, else ``render`` it for people."""
    found = call(ctx, method, path, body, failure)
    if wants_json(ctx):
        emit_json(found)
    else:
        render(found)


def act(
    ctx: typer.Context, method: str, path: str, done: str, body: dict[str, Any] | None = None
) -> None:
    """Ask turnd to change something, then say ``done`` (nothing with ``--json``: turnd's
    answer is empty)."""
    call(ctx, method, path, body)
    if not wants_json(ctx):
        typer.echo(done)


def listing(
    ctx: typer.Context,
    path: str,
    headers: Sequence[str],
    row: Callable[[Any], Sequence[object]],
    nothing: str,
) -> None:
    """GET a list: a table of ``row(item)`` under ``headers``, or ``nothing`` when empty."""

    def render(found: Any) -> None:
        typer.echo(table([row(item) for item in found], headers) if found else nothing)

    answer(ctx, "GET", path, render)


def show_once(
    ctx: typer.Context, method: str, path: str, body: dict[str, Any], secret: str
) -> None:
    """Create something and print its id and its ``secret`` field, which turnd never shows
    again (so a warning goes to stderr)."""

    def render(added: Any) -> None:
        typer.echo(table([("id", added["id"]), (secret, added[secret])]))
        typer.echo(f"turnctl: the {secret} is shown only this once: store it now", err=True)

    answer(ctx, method, path, render, body)
