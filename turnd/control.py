"""The control API: HTTP + JSON that ``turnctl`` talks to.

This module knows nothing of the core. It turns requests into calls on a :class:`ControlOps` the
daemon provides and the answers into JSON; every refusal is ``{"error": "..."}`` with a status
code, made in one place (:func:`_errors`).

Two doors, one API: a Unix socket (mode 0600 — whoever may open it operates turnd, so it needs
no token) and, optionally, TCP, where every request must carry ``Authorization: Bearer <token>``.
Each door gets its own application from :func:`make_app` (token None for the socket).

Any route answers 503 when the node cannot carry it out now (a worker that must take part is
restarting: :class:`OpsUnavailable`).

Routes (all under /v1)::

    GET    /status                      200 ops.status()
    GET    /allocations?user=&client=&transport=
                                        200 [allocation, ...]
    GET    /allocations/{id}            200 allocation | 404
    DELETE /allocations/{id}            204 | 404
    GET    /users                       200 [name, ...]
    PUT    /users/{name}  {"password"}  204 | 400
    DELETE /users/{name}                204 | 404
    GET    /secrets                     200 [{id, source, fingerprint}, ...]
    POST   /secrets  {"secret"?}        201 {id, secret} | 400
    DELETE /secrets/{id}                204 | 404 | 409 (the last one, or not a runtime one)
    POST   /reload                      200 {ok, error} | 409 {ok: false, error}
    POST   /drain  {"on": bool}         200 {draining, allocations}
    POST   /upgrade                     200 {workers: [{slot, old_pid, pid, moved, window_ms,
                                        lingering}]} | 409 (one process, or a slot failed)
    POST   /revoke/{username}           200 {"ended": n}
    POST   /credentials  {"ttl", "id"?} 201 {"iceServers": [...]} | 409
    GET    /cluster/nodes               200 {enabled, node_id, nodes, counters}
    GET    /cluster/table               200 {slice_size, port_min, port_max, nodes, catch_sockets}
                                        | 409 (not a cluster)
    GET    /cluster/owner?client=&server=&transport=
                                        200 {node, alive, here, flow} | 400 | 409
"""

from __future__ import annotations

import errno
import hmac
import inspect
import json
import os
import re
import socket
import stat
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeAlias, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from auth.credentials import MintRefused
from turnd import side_http
from turnd.logs import LOGGER
from turnd.side_http import SideLimits

#: Requests are small JSON objects; anything bigger is a mistake or an attack.
MAX_BODY = 64 * 1024
#: Only the daemon's user may open the control socket: opening it is operating turnd.
SOCKET_MODE = 0o600
#: Mode of the socket's directory when turnd creates it (systemd's RuntimeDirectory= makes it).
SOCKET_DIR_MODE = 0o755
#: The refusal of the cluster routes that need a cluster, on a node that is not in one.
NOT_A_CLUSTER = "not a cluster: [cluster] lists no nodes"

_T = TypeVar("_T")
#: What a :class:`ControlOps` method returns: the answer, or an awaitable of it.
Answer: TypeAlias = _T | Awaitable[_T]


class OpsUnavailable(Exception):
    """The operation cannot be carried out now (a worker that must take part is down): 503,
    with this message."""


class ControlOps(Protocol):
    """What the daemon lets an operator see and do. Times are Unix seconds (floats).

    Each method answers directly or with an awaitable (a node of workers asks them first); one
    that cannot answer now raises :class:`OpsUnavailable` (503)."""

    def status(self) -> Answer[dict[str, Any]]:
        """version, started, uptime_s, realm, listeners [{transport, address, port}],
        relay_addresses [str], allocations (int), connections (int), draining (bool)."""

    def allocations(
        self, user: str | None, client: str | None, transport: str | None
    ) -> Answer[list[dict[str, Any]]]:
        """Live allocations, filtered. Each: id (its first relay address, "ip:port"), username,
        rest_id, client, server, transport, relays [str], tcp, started, expires,
        permissions (int), channels (int), packets/bytes_to_peer, packets/bytes_to_client."""

    def allocation(self, allocation_id: str) -> Answer[dict[str, Any] | None]:
        """One allocation as above, plus permission_list [ip] and
        channel_list [{number, peer, kernel (relayed by the kernel), last_seen (Unix seconds
        of the fast path's last packet, or None)}]; None if there is none with that id."""

    def kill(self, allocation_id: str) -> Answer[bool]:
        """End an allocation now; False if there is none with that id."""

    def users(self) -> Answer[list[str]]:
        """Names of the long-term-credential users."""

    def add_user(self, name: str, password: str) -> Answer[None]:
        """Add or replace a user; ValueError (with a message) for a bad name or password."""

    def remove_user(self, name: str) -> Answer[bool]:
        """Remove a user; False if there is none of that name."""

    def secrets(self) -> Answer[list[dict[str, Any]]]:
        """REST secrets, newest first: [{id, source, fingerprint}] — never the secret itself."""

    def add_secret(self, value: str | None) -> Answer[dict[str, Any]]:
        """Add ``value`` (None: generate one) as the newest secret; {id, secret}. ValueError for
        a bad value."""

    def retire_secret(self, secret_id: str) -> Answer[bool]:
        """Retire a secret; False if unknown; ValueError when it may not go (the last one)."""

    def keys(self) -> Answer[list[dict[str, Any]]]:
        """Credential endpoint keys: [{id, source}] — never the token."""

    def add_key(self, key_id: str, token: str | None) -> Answer[dict[str, Any]]:
        """Add a key (token None: generate one); {id, token}. ValueError for a bad id or token."""

    def remove_key(self, key_id: str) -> Answer[bool]:
        """Remove a key; False if unknown; ValueError when it may not go (from the config)."""

    def reload(self) -> Answer[dict[str, Any]]:
        """Reload configuration, secrets and certificates: {ok, error}."""

    def drain(self, on: bool) -> Answer[dict[str, Any]]:
        """Refuse (or accept again) new allocations: {draining, allocations}."""

    def upgrade(self) -> Answer[dict[str, Any]]:
        """Replace every worker in place by one of the installed code, handing over its UDP
        allocations: per slot {slot, old_pid, pid, moved, window_ms, lingering}. ValueError
        when it cannot (one process; a slot that failed, named)."""

    def revoke(self, username: str) -> Answer[int]:
        """End every allocation of ``username``; how many ended."""

    def mint(self, ttl: int, ident: str) -> Answer[dict[str, Any]]:
        """A REST credential as the credential endpoint returns it: {"iceServers": [...]}.
        ValueError when none can be minted (no secret)."""

    def cluster_nodes(self) -> Answer[dict[str, Any]]:
        """The cluster as this node sees it: enabled (bool), node_id (0: not a cluster),
        nodes [{node, self, alive, draining, last_heard_ago (seconds or None), backbone,
        relay_ports}], counters {forwarded_client, forwarded_peer, second_chance,
        frames_sent {type: n}, frames_received {type: n}, drops {reason: n}}."""

    def cluster_table(self) -> Answer[dict[str, Any] | None]:
        """The relay port slices: slice_size, port_min, port_max, nodes {"id": [[low, high],
        ...]}, catch_sockets (int); None when this node is not in a cluster."""

    def cluster_owner(
        self, transport: str, client: str, server: str | None
    ) -> Answer[dict[str, Any] | None]:
        """Which node owns the flow from ``client`` to ``server`` ("ip:port", "[v6]:port"; None:
        the first UDP listener) over ``transport``: {node, alive, here (this node holds its
        allocation), flow (text)}; node is None for a TCP/TLS flow this node does not hold (its
        owner is the node that accepted the connection). None when this node is not in a
        cluster; ValueError for an address or transport that does not parse."""


class _Refusal(Exception):
    """A request turnd refuses: becomes ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _refuse(status: int, message: str) -> NoReturn:
    raise _Refusal(status, message)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place refusals, aiohttp's own errors (404, 405, 413) and bugs become JSON."""
    try:
        return await handler(request)
    except _Refusal as refusal:
        return _error(refusal.status, refusal.message)
    except OpsUnavailable as exc:
        return _error(503, str(exc))
    except web.HTTPException as exc:  # the router's 404 and 405, the body limit's 413
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _error(exc.status, exc.reason.lower(), allow)
    except Exception as exc:
        fields = {"method": request.method, "path": request.path}
        LOGGER.error(
            "control request failed",
            exc_info=True,
            extra={"event": "control.failed", "fields": fields},
        )
        return _error(500, f"internal error ({type(exc).__name__}): see turnd's log")


def _require_token(token: str) -> Middleware:
    expected = token.encode("utf-8", "surrogatepass")

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        presented = given.strip().encode("utf-8", "surrogatepass")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented, expected):
            # No detail: a caller learns neither whether a token was seen nor which part failed.
            return _error(401, "unauthorized", {"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return auth


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object of the request; {} when there is no body."""
    if not request.body_exists:
        return {}
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        _refuse(400, "the request body is not JSON")
    if not isinstance(body, dict):
        _refuse(400, "the request body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type, required: bool = True) -> Any:
    value = body.get(name)
    if value is None and not required:
        return None
    # bool is an int: {"ttl": true} is not a lifetime.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        _refuse(400, f'"{name}" must be {"a boolean" if kind is bool else kind.__name__}')
    return value


async def _settle(answer: Answer[_T]) -> _T:
    """An ops method's answer, awaited when it is an awaitable."""
    if inspect.isawaitable(answer):
        return await answer
    return answer


async def _or_refuse(status: int, call: Callable[[], Answer[_T]]) -> _T:
    """What ``call()`` answers; a ValueError it raises is refused with ``status``."""
    try:
        return await _settle(call())
    except ValueError as exc:
        _refuse(status, str(exc))


def _no_content() -> web.Response:
    return web.Response(status=204)


def _removed(removed: bool, what: str, request: web.Request, name: str) -> web.Response:
    """204 when the ``what`` the route names was removed; 404 when there was none."""
    if not removed:
        _refuse(404, f"no {what} {request.match_info[name]}")
    return _no_content()


class _Routes:
    """The handlers, bound to one ControlOps."""

    def __init__(self, ops: ControlOps) -> None:
        self.ops = ops

    async def status(self, _: web.Request) -> web.Response:
        return web.json_response(await _settle(self.ops.status()))

    async def allocations(self, request: web.Request) -> web.Response:
        query = request.query
        found = await _settle(
            self.ops.allocations(
                query.get("user") or None,
                query.get("client") or None,
                query.get("transport") or None,
            )
        )
        return web.json_response(found)

    async def allocation(self, request: web.Request) -> web.Response:
        found = await _settle(self.ops.allocation(request.match_info["id"]))
        if found is None:
            _refuse(404, f"no allocation {request.match_info['id']}")
        return web.json_response(found)

    async def kill(self, request: web.Request) -> web.Response:
        killed = await _settle(self.ops.kill(request.match_info["id"]))
        return _removed(killed, "allocation", request, "id")

    async def users(self, _: web.Request) -> web.Response:
        return web.json_response(await _settle(self.ops.users()))

    async def add_user(self, request: web.Request) -> web.Response:
        password = _field(await _body(request), "password", str)
        await _or_refuse(400, lambda: self.ops.add_user(request.match_info["name"], password))
        return _no_content()

    async def remove_user(self, request: web.Request) -> web.Response:
        removed = await _settle(self.ops.remove_user(request.match_info["name"]))
        return _removed(removed, "user", request, "name")

    async def secrets(self, _: web.Request) -> web.Response:
        return web.json_response(await _settle(self.ops.secrets()))

    async def add_secret(self, request: web.Request) -> web.Response:
        value = _field(await _body(request), "secret", str, required=False)
        added = await _or_refuse(400, lambda: self.ops.add_secret(value))
        return web.json_response(added, status=201)

    async def retire_secret(self, request: web.Request) -> web.Response:
        retired = await _or_refuse(409, lambda: self.ops.retire_secret(request.match_info["id"]))
        return _removed(retired, "secret", request, "id")

    async def keys(self, _: web.Request) -> web.Response:
        return web.json_response(await _settle(self.ops.keys()))

    async def add_key(self, request: web.Request) -> web.Response:
        token = _field(await _body(request), "token", str, required=False)
        added = await _or_refuse(400, lambda: self.ops.add_key(request.match_info["id"], token))
        return web.json_response(added, status=201)

    async def remove_key(self, request: web.Request) -> web.Response:
        removed = await _or_refuse(409, lambda: self.ops.remove_key(request.match_info["id"]))
        return _removed(removed, "key", request, "id")

    async def reload(self, _: web.Request) -> web.Response:
        result = await _settle(self.ops.reload())
        return web.json_response(result, status=200 if result.get("ok") else 409)

    async def drain(self, request: web.Request) -> web.Response:
        on = _field(await _body(request), "on", bool)
        return web.json_response(await _settle(self.ops.drain(on)))

    async def upgrade(self, _: web.Request) -> web.Response:
        return web.json_response(await _or_refuse(409, self.ops.upgrade))

    async def revoke(self, request: web.Request) -> web.Response:
        ended = await _settle(self.ops.revoke(request.match_info["username"]))
        return web.json_response({"ended": ended})

    async def credentials(self, request: web.Request) -> web.Response:
        body = await _body(request)
        ttl = _field(body, "ttl", int)
        ident = _field(body, "id", str, required=False) or ""
        if ttl <= 0:
            _refuse(400, '"ttl" must be positive')
        try:
            minted = await _settle(self.ops.mint(ttl, ident))
        except MintRefused as exc:  # a ttl or id turnd would itself refuse at authentication
            _refuse(400, str(exc))
        except ValueError as exc:
            _refuse(409, str(exc))
        return web.json_response(minted, status=201)

    async def cluster_nodes(self, _: web.Request) -> web.Response:
        return web.json_response(await _settle(self.ops.cluster_nodes()))

    async def cluster_table(self, _: web.Request) -> web.Response:
        found = await _settle(self.ops.cluster_table())
        if found is None:
            _refuse(409, NOT_A_CLUSTER)
        return web.json_response(found)

    async def cluster_owner(self, request: web.Request) -> web.Response:
        query = request.query
        client = query.get("client")
        if not client:
            _refuse(400, '"client" is required: the client address, ip:port')
        transport, server = query.get("transport") or "udp", query.get("server") or None
        found = await _or_refuse(400, lambda: self.ops.cluster_owner(transport, client, server))
        if found is None:
            _refuse(409, NOT_A_CLUSTER)
        return web.json_response(found)


#: Whether an application demands a bearer token (TCP may only serve one that does).
_TOKEN_REQUIRED = web.AppKey("token_required", bool)


#: The pattern of a path segment that names a user, key, secret or allocation. aiohttp's default
#: (``[^{}/]+``) refuses braces, so a username such as ``{0.__class__}`` could not be revoked,
#: removed or listed by name (GHSA-4g7c-p5wg-j4hp); any percent-encoded text but ``/`` is a name.
_SEGMENT = "[^/]+"


def _route(method: str, path: str, handler: Handler) -> web.RouteDef:
    """The route of ``method`` on ``path``, each ``{name}`` in it matching :data:`_SEGMENT`."""
    return web.route(method, re.sub(r"\{(\w+)\}", rf"{{\1:{_SEGMENT}}}", path), handler)


def make_app(ops: ControlOps, token: str | None) -> web.Application:
    """The control API over ``ops``; with ``token``, every request must present it."""
    middlewares: list[Middleware] = [_errors] if token is None else [_errors, _require_token(token)]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[_TOKEN_REQUIRED] = token is not None
    routes = _Routes(ops)
    app.router.add_routes(
        [
            _route("GET", "/v1/status", routes.status),
            _route("GET", "/v1/allocations", routes.allocations),
            _route("GET", "/v1/allocations/{id}", routes.allocation),
            _route("DELETE", "/v1/allocations/{id}", routes.kill),
            _route("GET", "/v1/users", routes.users),
            _route("PUT", "/v1/users/{name}", routes.add_user),
            _route("DELETE", "/v1/users/{name}", routes.remove_user),
            _route("GET", "/v1/secrets", routes.secrets),
            _route("POST", "/v1/secrets", routes.add_secret),
            _route("DELETE", "/v1/secrets/{id}", routes.retire_secret),
            _route("GET", "/v1/keys", routes.keys),
            _route("PUT", "/v1/keys/{id}", routes.add_key),
            _route("DELETE", "/v1/keys/{id}", routes.remove_key),
            _route("POST", "/v1/reload", routes.reload),
            _route("POST", "/v1/drain", routes.drain),
            _route("POST", "/v1/upgrade", routes.upgrade),
            _route("POST", "/v1/revoke/{username}", routes.revoke),
            _route("POST", "/v1/credentials", routes.credentials),
            _route("GET", "/v1/cluster/nodes", routes.cluster_nodes),
            _route("GET", "/v1/cluster/table", routes.cluster_table),
            _route("GET", "/v1/cluster/owner", routes.cluster_owner),
        ]
    )
    return app


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse to touch a live one or a non-socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", str(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink(missing_ok=True)
            return
    raise OSError(errno.EADDRINUSE, "another process answers on this control socket", str(path))


def _bind_unix(path: Path) -> socket.socket:
    """A Unix socket bound at ``path`` with mode 0600 and not yet listening.

    The mode is set before listen(), so there is no moment when another user could connect.
    """
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True)
        path.parent.chmod(SOCKET_DIR_MODE)  # whatever the umask: others may reach the socket
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)
    except OSError:
        sock.close()
        raise
    return sock


def _identity(path: Path) -> tuple[int, int, int]:
    found = path.lstat()
    return found.st_dev, found.st_ino, found.st_ctime_ns


def _unlinker(path: Path) -> Callable[[web.Application], Awaitable[None]]:
    """An on_cleanup hook removing the socket file at ``path`` — only while it is this one."""
    ours = _identity(path)

    async def unlink(_: web.Application) -> None:
        try:
            if _identity(path) == ours:
                path.unlink()
        except FileNotFoundError:
            pass

    return unlink


async def start_control(
    app: web.Application,
    socket_path: str | None,
    listen: tuple[str, int] | None,
    limits: SideLimits | None = None,
) -> list[web.AppRunner]:
    """Serve ``app`` on the Unix socket ``socket_path`` and/or TCP ``listen``.

    One call per application. Returns the runners to hand to :func:`stop_control` (none when
    both are off: None or ""); the bound addresses are in ``runner.addresses``. Raises OSError
    when a door cannot be opened (nothing is left open then) and ValueError for TCP with an
    application that takes no token. Each door holds at most ``limits.max_connections``
    connections, each closed without a request head after ``limits.header_timeout``.
    """
    if not socket_path and listen is None:
        return []
    if listen is not None and not app[_TOKEN_REQUIRED]:
        raise ValueError("the TCP control listener needs a token (control.token)")
    sock = None
    if socket_path:
        path = Path(socket_path)
        sock = _bind_unix(path)
        app.on_cleanup.append(_unlinker(path))
    limits = limits or SideLimits()
    runner = side_http.runner(app, limits, access_log=None)
    try:
        await runner.setup()
        if sock is not None:
            await side_http.SockSite(runner, sock, name="control_socket", limits=limits).start()
        if listen is not None:
            site = side_http.TCPSite(runner, *listen, name="control_tcp", limits=limits)
            await site.start()
    except BaseException:
        await runner.cleanup()
        if sock is not None:
            sock.close()
        raise
    return [runner]


async def stop_control(runners: Iterable[web.AppRunner]) -> None:
    """Close the control listeners (and remove the socket file)."""
    for runner in runners:
        await runner.cleanup()
