"""``turnctl``: the operator's tool.

It talks to a running turnd over the control API (turnd/control.py): HTTP + JSON on the Unix
socket (``--socket``, default /run/turnd/control.sock) or, with ``--url`` and ``--token``, on the
TCP control listener. People get aligned tables; ``--json`` prints the daemon's answer as is.

``credentials generate`` also works with no daemon: it mints from the REST secret file.

Exit status: 0 done; 1 turnd cannot be reached, or refused (unknown allocation, last secret,
failed reload, a cluster question to a node not in a cluster...); 2 a usage error, including a
request turnd found malformed (HTTP 400).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote, urlencode, urlsplit

import attrs
import typer

from auth.credentials import MintRefused, mint_rest_credentials
from turnd.state import REST_SECRET_FILE

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="turnctl: operate a turnd server."
)
credentials_app = typer.Typer(no_args_is_help=True, help="Short-lived TURN credentials.")
allocations_app = typer.Typer(no_args_is_help=True, help="Live allocations.")
users_app = typer.Typer(no_args_is_help=True, help="Long-term-credential users.")
secrets_app = typer.Typer(no_args_is_help=True, help="REST (ephemeral credential) secrets.")
keys_app = typer.Typer(no_args_is_help=True, help="Keys of the credential REST endpoint.")
cluster_app = typer.Typer(no_args_is_help=True, help="The cluster, as this node sees it.")
app.add_typer(credentials_app, name="credentials")
app.add_typer(allocations_app, name="allocations")
app.add_typer(users_app, name="users")
app.add_typer(secrets_app, name="secrets")
app.add_typer(keys_app, name="keys")
app.add_typer(cluster_app, name="cluster")

#: Default credential lifetime: a working day; browsers re-fetch credentials per session.
DEFAULT_TTL = 86_400
#: Where turnd serves the control API unless told otherwise (control.socket).
DEFAULT_SOCKET = "/run/turnd/control.sock"
#: turnd's default state directory (server.state_dir), where its generated REST secret lives.
DEFAULT_STATE_DIR = "/var/lib/turnd"
#: turnd's default UDP port, put in URLs minted from the secret file.
DEFAULT_PORT = 3478
#: Seconds to wait for turnd: a reload reads certificates and files, nothing takes longer.
TIMEOUT = 30.0
#: What ``cluster nodes`` says on a node whose [cluster] lists no nodes (turnd's 409 elsewhere).
NOT_A_CLUSTER = "not a cluster: [cluster] lists no nodes"
#: Below this many seconds "last heard" shows tenths: heartbeats come every fraction of one.
PRECISE_SECONDS = 10


# --- talking to turnd ---------------------------------------------------------------------------


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

    @property
    def where(self) -> str:
        """The socket path or URL, for messages."""
        return self.url or self.socket_path

    def _connection(self) -> http.client.HTTPConnection:
        if self.url is None:
            return _UnixConnection(self.socket_path, TIMEOUT)
        parts = urlsplit(self.url)
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT)

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


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"turnctl: {printable(message)}", err=True)
    raise typer.Exit(code)


def _unreachable(daemon: Daemon, reason: object) -> str:
    see = "--url" if daemon.url else "--socket"
    return f"cannot reach turnd at {daemon.where}: {reason} (is it running? see {see})"


def _call(
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
        _fail(_unreachable(daemon, exc))
    except Refused as exc:
        hint = " (see --token)" if exc.status == 401 else ""
        _fail(f"{failure}{exc.message}{hint}", 2 if exc.status == 400 else 1)


def _segment(value: str) -> str:
    return quote(value, safe="")


def _emit_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2))


def _wants_json(ctx: typer.Context) -> bool:
    daemon: Daemon = ctx.obj
    return daemon.json


# --- human output -------------------------------------------------------------------------------


def printable(value: object) -> str:
    """``value`` as text for a terminal: control characters (CR, LF, TAB, NUL, ESC...) in a
    username or any other field a client chose are written as Python escapes, so a name cannot
    forge a row or a line, or drive the terminal (GHSA-4g7c-p5wg-j4hp); printable text is kept
    verbatim. ``--json`` output carries the exact value."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def table(rows: Iterable[Sequence[object]], headers: Sequence[str] | None = None) -> str:
    """Columns two spaces apart; numbers right-aligned, everything else left-aligned."""
    body = [list(row) for row in rows]
    cells = ([list(headers)] if headers else []) + [
        [printable(cell) for cell in row] for row in body
    ]
    if not cells:
        return ""
    width = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    numeric = [
        bool(body) and all(isinstance(row[i], int | float) for row in body)
        for i in range(len(width))
    ]
    lines = []
    for row in cells:
        padded = [
            cell.rjust(w) if right else cell.ljust(w)
            for cell, w, right in zip(row, width, numeric, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 05m``, ``4m 09s``, ``7s``: two units at most."""
    s = max(0, round(seconds))
    days, s = divmod(s, 86_400)
    hours, s = divmod(s, 3_600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"


def size(octets: int) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``3.0 GiB``."""
    value, unit = float(octets), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{octets} B" if unit == "B" else f"{value:.1f} {unit}"


def _stamp(when: Any) -> str:
    if not isinstance(when, int | float):
        return str(when)
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(when))


def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


# --- global options -----------------------------------------------------------------------------


def _check_url(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise typer.BadParameter("expected http://host:port", param_hint="--url")
    return url


@app.callback()
def _options(
    ctx: typer.Context,
    socket_path: Annotated[
        str,
        typer.Option(
            "--socket", envvar="TURNCTL_SOCKET", help="turnd's control socket (control.socket)"
        ),
    ] = DEFAULT_SOCKET,
    url: Annotated[
        str | None,
        typer.Option(
            envvar="TURNCTL_URL",
            help="use the TCP control listener instead, http://host:port (control.listen)",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="TURNCTL_TOKEN", help="bearer token of the TCP listener"),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="print turnd's answers as JSON, for scripts")
    ] = False,
) -> None:
    """turnctl: operate a turnd server."""
    ctx.obj = Daemon(socket_path, _check_url(url), token, json_output)


# --- credentials --------------------------------------------------------------------------------


def ice_servers(host: str, port: int, username: str, password: str) -> dict[str, object]:
    """The RTCConfiguration ``iceServers`` value for ``host`` (UDP listener on ``port``)."""
    where = f"[{host}]" if ":" in host else host
    return {
        "iceServers": [
            {"urls": [f"stun:{where}:{port}"]},
            {
                "urls": [f"turn:{where}:{port}?transport=udp"],
                "username": username,
                "credential": password,
            },
        ]
    }


#: A stun:/turn:/turns: URL (RFC 7064, RFC 7065): scheme, host or [v6], optional port, query.
_ICE_URL = re.compile(r"(?P<scheme>[a-z]+):(?P<host>\[[^\]]*\]|[^:?\[]*)(?P<rest>(:\d+)?(\?.*)?)")


def with_host(ice: dict[str, Any], host: str) -> dict[str, Any]:
    """``ice`` (an iceServers answer) with ``host`` in every URL, ports and queries kept."""
    where = f"[{host}]" if ":" in host else host

    def rewrite(url: str) -> str:
        found = _ICE_URL.fullmatch(url)
        return f"{found['scheme']}:{where}{found['rest']}" if found else url

    def rewrite_urls(server: dict[str, Any]) -> dict[str, Any]:
        urls = server.get("urls")
        if isinstance(urls, str):  # RTCIceServer.urls: one URL or a list
            return {**server, "urls": rewrite(urls)}
        if isinstance(urls, list):
            return {**server, "urls": [rewrite(url) for url in urls]}
        return server

    servers = [rewrite_urls(server) for server in ice.get("iceServers", [])]
    return {**ice, "iceServers": servers}


def _mint_from_file(
    path: Path, host: str | None, port: int, ttl: int, ident: str
) -> dict[str, object]:
    if host is None:
        _fail("--host is needed to mint from the secret file", 2)
    try:
        secret = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        _fail(f"cannot read the REST secret {path}: {exc.strerror}")
    if not secret:
        _fail(f"{path} is empty")
    try:
        username, password = mint_rest_credentials(secret, time.time(), ttl, ident)
    except MintRefused as exc:
        _fail(f"cannot mint: {exc}", 2)
    return ice_servers(host, port, username, password)


@credentials_app.command("generate")
def generate(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option(
            help="the address or name clients reach turnd at (default, from turnd: its"
            " api.public_host or relay address)"
        ),
    ] = None,
    ttl: Annotated[int, typer.Option(help="seconds the credential stays valid")] = DEFAULT_TTL,
    ident: Annotated[
        str, typer.Option("--id", help="customIdentifier kept in the username for accounting")
    ] = "",
    port: Annotated[
        int, typer.Option(help="turnd's UDP port (from the secret file; turnd knows its own)")
    ] = DEFAULT_PORT,
    state_dir: Annotated[
        str | None,
        typer.Option(
            help="mint from the REST secret in this state directory (when turnd cannot be"
            f" reached: {DEFAULT_STATE_DIR})"
        ),
    ] = None,
    secret_file: Annotated[
        str | None, typer.Option(help="mint from this REST secret file (overrides --state-dir)")
    ] = None,
) -> None:
    """Mint a REST credential and print a ready iceServers JSON.

    From turnd when it runs (its newest secret, all its listeners); from the secret file with
    --state-dir or --secret-file, or when turnd cannot be reached."""
    if ttl <= 0:
        _fail("--ttl must be positive", 2)
    if secret_file is None and state_dir is None:
        daemon: Daemon = ctx.obj
        try:
            minted = daemon.request("POST", "/v1/credentials", {"ttl": ttl, "id": ident})
        except Refused as exc:
            _fail(exc.message, 2 if exc.status == 400 else 1)
        except Unreachable as exc:
            path = Path(DEFAULT_STATE_DIR) / REST_SECRET_FILE
            typer.echo(f"turnctl: {_unreachable(daemon, exc)}; minting from {path}", err=True)
        else:
            _emit_json(minted if host is None else with_host(minted, host))
            return
    path = Path(secret_file) if secret_file else Path(state_dir or DEFAULT_STATE_DIR)
    if not secret_file:
        path /= REST_SECRET_FILE
    _emit_json(_mint_from_file(path, host, port, ttl, ident))


# --- status, allocations ------------------------------------------------------------------------


@app.command()
def status(ctx: typer.Context) -> None:
    """What turnd is doing: uptime, listeners, allocations, draining."""
    found = _call(ctx, "GET", "/v1/status")
    if _wants_json(ctx):
        _emit_json(found)
        return
    started = _stamp(found.get("started"))
    uptime = found.get("uptime_s")
    if isinstance(uptime, int | float):
        started += f" (up {duration(uptime)})"
    pairs = [
        ("version", found.get("version", "?")),
        ("started", started),
        ("realm", found.get("realm", "")),
        ("draining", _yes(found.get("draining"))),
        ("allocations", found.get("allocations", 0)),
        ("connections", found.get("connections", 0)),
        ("relay addresses", ", ".join(found.get("relay_addresses", [])) or "-"),
    ]
    typer.echo(table((name, str(value)) for name, value in pairs))
    listeners = found.get("listeners", [])
    if listeners:
        rows = [(ln["transport"], ln["address"], ln["port"]) for ln in listeners]
        typer.echo("listeners")
        typer.echo(_indent(table(rows, ("TRANSPORT", "ADDRESS", "PORT"))))


@allocations_app.command("list")
def allocations_list(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option(help="only this username")] = None,
    client: Annotated[str | None, typer.Option(help="only this client, ip or ip:port")] = None,
    transport: Annotated[
        str | None, typer.Option(help="only this client transport: udp, tcp, tls")
    ] = None,
) -> None:
    """List live allocations, oldest first."""
    query = {k: v for k, v in (("user", user), ("client", client), ("transport", transport)) if v}
    path = "/v1/allocations" + (f"?{urlencode(query)}" if query else "")
    found = _call(ctx, "GET", path)
    if _wants_json(ctx):
        _emit_json(found)
        return
    if not found:
        typer.echo("no allocations")
        return
    now = time.time()
    headers = ["ID", "USER", "CLIENT", "TRANSPORT", "RELAY", "PERMS", "CHANNELS", "AGE"]
    headers += ["EXPIRES IN", "TO PEER", "TO CLIENT"]
    rows = [
        (
            a["id"],
            a["username"],
            a["client"],
            a["transport"],
            "tcp" if a.get("tcp") else "udp",
            a["permissions"],
            a["channels"],
            duration(now - a["started"]),
            duration(a["expires"] - now),
            size(a["bytes_to_peer"]),
            size(a["bytes_to_client"]),
        )
        for a in found
    ]
    typer.echo(table(rows, headers))


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


@allocations_app.command("show")
def allocations_show(
    ctx: typer.Context, allocation_id: Annotated[str, typer.Argument(metavar="ID")]
) -> None:
    """Show one allocation with its permissions and channels."""
    a = _call(ctx, "GET", f"/v1/allocations/{_segment(allocation_id)}")
    if _wants_json(ctx):
        _emit_json(a)
        return
    now = time.time()
    permissions = _listed(a.get("permission_list", a.get("permissions")))
    channels = _listed(a.get("channel_list", a.get("channels")))
    pairs = [
        ("id", a["id"]),
        ("username", a["username"]),
        ("rest id", a.get("rest_id") or "-"),
        ("client", f"{a['client']} ({a['transport']})"),
        ("server", a["server"]),
        ("relays", f"{', '.join(a['relays'])} ({'tcp' if a.get('tcp') else 'udp'})"),
        ("started", f"{_stamp(a['started'])} ({duration(now - a['started'])} ago)"),
        ("expires", f"{_stamp(a['expires'])} (in {duration(a['expires'] - now)})"),
        ("to peer", f"{a['packets_to_peer']} packets, {size(a['bytes_to_peer'])}"),
        ("to client", f"{a['packets_to_client']} packets, {size(a['bytes_to_client'])}"),
        ("permissions", ", ".join(permissions) or "-"),
    ]
    typer.echo(table(pairs))
    if channels:
        typer.echo("channels")
        rows = [(f"{c['number']:#06x}", c["peer"]) for c in channels]
        typer.echo(_indent(table(rows, ("NUMBER", "PEER"))))


@allocations_app.command("kill")
def allocations_kill(
    ctx: typer.Context, allocation_id: Annotated[str, typer.Argument(metavar="ID")]
) -> None:
    """End an allocation now."""
    _call(ctx, "DELETE", f"/v1/allocations/{_segment(allocation_id)}")
    if not _wants_json(ctx):
        typer.echo(f"killed {printable(allocation_id)}")


# --- users --------------------------------------------------------------------------------------


@users_app.command("list")
def users_list(ctx: typer.Context) -> None:
    """List the users."""
    found = _call(ctx, "GET", "/v1/users")
    if _wants_json(ctx):
        _emit_json(found)
    elif found:
        typer.echo(table([(name,) for name in found], ("USERNAME",)))
    else:
        typer.echo("no users")


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: str,
    password: Annotated[
        str | None,
        typer.Option(help='the password; "-" reads one line from stdin (default: ask)'),
    ] = None,
) -> None:
    """Add a user, or set the password of an existing one."""
    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    elif password == "-":
        password = sys.stdin.readline().rstrip("\r\n")
    _call(ctx, "PUT", f"/v1/users/{_segment(name)}", {"password": password})
    if not _wants_json(ctx):
        typer.echo(f"user {printable(name)}: password set")


@users_app.command("remove")
def users_remove(ctx: typer.Context, name: str) -> None:
    """Remove a user (their live allocations stay: see revoke)."""
    _call(ctx, "DELETE", f"/v1/users/{_segment(name)}")
    if not _wants_json(ctx):
        typer.echo(f"removed user {printable(name)}")


# --- secrets ------------------------------------------------------------------------------------


@secrets_app.command("list")
def secrets_list(ctx: typer.Context) -> None:
    """List the REST secrets, newest (the one that mints) first."""
    found = _call(ctx, "GET", "/v1/secrets")
    if _wants_json(ctx):
        _emit_json(found)
    elif found:
        rows = [(s["id"], s["source"], s["fingerprint"]) for s in found]
        typer.echo(table(rows, ("ID", "SOURCE", "FINGERPRINT")))
    else:
        typer.echo("no secrets")


@secrets_app.command("add")
def secrets_add(
    ctx: typer.Context,
    value: Annotated[str | None, typer.Option(help="the secret (default: generate one)")] = None,
) -> None:
    """Add a REST secret; it becomes the one that mints. Printed only this once."""
    added = _call(ctx, "POST", "/v1/secrets", {"secret": value})
    if _wants_json(ctx):
        _emit_json(added)
        return
    typer.echo(table([("id", added["id"]), ("secret", added["secret"])]))
    typer.echo("turnctl: the secret is shown only this once: store it now", err=True)


@secrets_app.command("retire")
def secrets_retire(
    ctx: typer.Context, secret_id: Annotated[str, typer.Argument(metavar="ID")]
) -> None:
    """Retire a REST secret: credentials minted with it stop working."""
    _call(ctx, "DELETE", f"/v1/secrets/{_segment(secret_id)}")
    if not _wants_json(ctx):
        typer.echo(f"retired secret {secret_id}")


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """List the credential endpoint's keys (never their tokens)."""
    found = _call(ctx, "GET", "/v1/keys")
    if _wants_json(ctx):
        _emit_json(found)
    elif found:
        typer.echo(table([(k["id"], k["source"]) for k in found], ("ID", "SOURCE")))
    else:
        typer.echo("no keys")


@keys_app.command("add")
def keys_add(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(metavar="ID")],
    token: Annotated[str | None, typer.Option(help="the bearer token (default: generate)")] = None,
) -> None:
    """Add a key for an application back end. Its token is printed only this once."""
    added = _call(ctx, "PUT", f"/v1/keys/{_segment(key_id)}", {"token": token})
    if _wants_json(ctx):
        _emit_json(added)
        return
    typer.echo(table([("id", added["id"]), ("token", added["token"])]))
    typer.echo("turnctl: the token is shown only this once: store it now", err=True)


@keys_app.command("remove")
def keys_remove(ctx: typer.Context, key_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Remove a key: its back end can no longer mint or revoke credentials."""
    _call(ctx, "DELETE", f"/v1/keys/{_segment(key_id)}")
    if not _wants_json(ctx):
        typer.echo(f"removed key {key_id}")


# --- cluster ------------------------------------------------------------------------------------


def _node_state(node: dict[str, Any]) -> str:
    if not node.get("alive"):
        return "dead"
    return "draining" if node.get("draining") else "alive"


def _last_heard(node: dict[str, Any]) -> str:
    if node.get("self"):
        return "-"
    ago = node.get("last_heard_ago")
    if not isinstance(ago, int | float):
        return "never"
    return f"{ago:.1f}s ago" if ago < PRECISE_SECONDS else f"{duration(ago)} ago"


def _by_name(counts: Any) -> str:
    if not isinstance(counts, dict) or not any(counts.values()):
        return "none"
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()) if count)


def _spans(spans: Iterable[Sequence[int]]) -> str:
    """``[[49152, 49215], [49280, 49280]]`` as ``49152-49215 49280``."""
    return " ".join(f"{low}-{high}" if high != low else str(low) for low, high in spans) or "-"


@cluster_app.command("nodes")
def cluster_nodes(ctx: typer.Context) -> None:
    """List the configured nodes (alive, dead or draining) and the forwarding counters."""
    found = _call(ctx, "GET", "/v1/cluster/nodes")
    if _wants_json(ctx):
        _emit_json(found)
        return
    if not found.get("enabled"):
        typer.echo(NOT_A_CLUSTER)
        return
    rows = [
        (
            node["node"],
            node["backbone"],
            _node_state(node),
            _last_heard(node),
            node["relay_ports"],
            "(this node)" if node.get("self") else "",
        )
        for node in found.get("nodes", [])
    ]
    typer.echo(table(rows, ("NODE", "BACKBONE", "STATE", "LAST HEARD", "RELAY PORTS", "")))
    counters = found.get("counters", {})
    typer.echo(
        f"forwarded: {counters.get('forwarded_client', 0)} client,"
        f" {counters.get('forwarded_peer', 0)} peer;"
        f" second chance: {counters.get('second_chance', 0)};"
        f" backbone drops: {_by_name(counters.get('drops'))}"
    )


@cluster_app.command("table")
def cluster_table(ctx: typer.Context) -> None:
    """Show which relay ports each node owns (its slices, adjacent ones merged)."""
    found = _call(ctx, "GET", "/v1/cluster/table")
    if _wants_json(ctx):
        _emit_json(found)
        return
    typer.echo(
        f"relay ports {found['port_min']}-{found['port_max']} in slices of {found['slice_size']};"
        f" {found.get('catch_sockets', 0)} catch sockets on this node"
    )
    nodes = found.get("nodes", {})
    rows = [
        (int(node), sum(high - low + 1 for low, high in spans), _spans(spans))
        for node, spans in sorted(nodes.items(), key=lambda item: int(item[0]))
    ]
    typer.echo(table(rows, ("NODE", "PORTS", "RANGES")))


@cluster_app.command("owner")
def cluster_owner(
    ctx: typer.Context,
    client: Annotated[str, typer.Argument(help="the client address, ip:port or [ipv6]:port")],
    server: Annotated[
        str | None,
        typer.Option(help="the server address the client sends to (default: turnd's UDP one)"),
    ] = None,
    transport: Annotated[str, typer.Option(help="the client transport: udp, tcp, tls")] = "udp",
) -> None:
    """Say which node owns a client flow, and whether this node holds its allocation."""
    query = {"client": client, "transport": transport}
    if server is not None:
        query["server"] = server
    found = _call(ctx, "GET", f"/v1/cluster/owner?{urlencode(query)}")
    if _wants_json(ctx):
        _emit_json(found)
        return
    typer.echo(found.get("flow", client))
    if found.get("node") is None:
        typer.echo("the node that accepted the connection (not this one) — allocation here: no")
        return
    state = "alive" if found.get("alive") else "dead"
    typer.echo(f"node {found['node']} ({state}) — allocation here: {_yes(found.get('here'))}")


# --- levers -------------------------------------------------------------------------------------


@app.command()
def revoke(ctx: typer.Context, username: str) -> None:
    """End every allocation of a user now."""
    found = _call(ctx, "POST", f"/v1/revoke/{_segment(username)}")
    if _wants_json(ctx):
        _emit_json(found)
    else:
        typer.echo(f"revoked {printable(username)}: {found['ended']} allocations ended")


@app.command()
def drain(
    ctx: typer.Context,
    off: Annotated[bool, typer.Option("--off", help="accept new allocations again")] = False,
) -> None:
    """Refuse new allocations; live ones run until they end."""
    found = _call(ctx, "POST", "/v1/drain", {"on": not off})
    if _wants_json(ctx):
        _emit_json(found)
    elif found["draining"]:
        typer.echo(f"draining: {found['allocations']} allocations left")
    else:
        typer.echo(f"not draining: {found['allocations']} allocations")


@app.command()
def reload(ctx: typer.Context) -> None:
    """Reload the configuration, secrets and TLS certificates (as SIGHUP does)."""
    found = _call(ctx, "POST", "/v1/reload", failure="reload failed: ")
    if _wants_json(ctx):
        _emit_json(found)
    else:
        typer.echo("reloaded")


@app.command()
def version() -> None:
    """Print the version."""
    from turnd import __version__

    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()
