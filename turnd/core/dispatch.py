"""The request path: from a decoded request to its answer (RFC 8489 §6.3, §9.2.4).

Theory of operation: an unsigned request is answered only within its source's unauthenticated
rate (turnd.core.ratelimit); a signed one is not answered while its source is throttled for
failed authentications, unless it names the user whose allocation its 5-tuple holds. Then
authentication (except anonymous Binding), the 420 check, and the one dispatch table
``(method, class) -> handler``. Handlers raise :class:`StunError`; :func:`answer` is the one
place that turns it into the error response (built by turnd.core.responses).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from stun import attributes as at
from stun.message import MessageClass, Method
from turnd.core import allocate, permissions, tcp_relay, teardown
from turnd.core.actions import Action
from turnd.core.request import Request, StunError

if TYPE_CHECKING:
    from turnd.core.server import TurnServer

Handler = Callable[["TurnServer", Request], list[Action]]


def answer(server: TurnServer, request: Request) -> list[Action]:
    """Authenticate and dispatch ``request``; its answer (or nothing: dropped, counted)."""
    message, five_tuple, now = request.message, request.five_tuple, request.now
    handler = DISPATCH.get((message.method, message.cls))
    unsigned = message.mi_offset is None and message.mi256_offset is None
    if unsigned and not server.gate.may_answer(five_tuple, now):
        return []  # no credential can come of it: the answer would be unauthenticated
    if not unsigned and not _allocation_owner(server, request) and server.auth.throttled(request):
        return []  # too many failed authentications from this source: guessing is slowed
    try:
        if handler is None:
            server.stats["request.unknown_method"] += 1
            raise StunError(400, "unknown or unsupported method")
        if handler is not handle_binding or not server.settings.allow_anonymous_binding:
            request.credential = server.auth.authenticate(request)
        unknown = message.unknown_required()
        if unknown:
            raise StunError(420, None, at.UnknownAttributes(unknown))
        return handler(server, request)
    except StunError as err:
        refused = request.credential is None and not unsigned
        if refused and not server.gate.may_answer(five_tuple, now):
            return []  # credentials were offered and refused: unauthenticated answer too
        server.stats[f"error.{err.code}"] += 1
        return server.reply(five_tuple, server.responses.error(request, err))


def _allocation_owner(server: TurnServer, request: Request) -> bool:
    """Whether the request names the user whose allocation its 5-tuple holds: a guesser
    sharing a client's NAT address cannot starve that client's Refresh, CreatePermission
    and ChannelBind (guessing the password of one's own allocation gains nothing)."""
    alloc = server.allocations.get(request.five_tuple)
    if alloc is None:
        return False
    username = request.message.get(at.Username)
    return username is not None and username.value == alloc.username


def handle_binding(server: TurnServer, request: Request) -> list[Action]:
    """RFC 8489 §6.3.1: the client's reflexive address (bare Bindings take the hot path,
    TurnServer.binding_route)."""
    server.stats["stun.binding_requests"] += 1
    client = request.five_tuple.client
    reply = server.responses.success(request, at.XorMappedAddress(client))
    return server.reply(request.five_tuple, reply)


#: The one dispatch table: (method, class) -> handler.
DISPATCH: dict[tuple[int, MessageClass], Handler] = {
    (Method.BINDING, MessageClass.REQUEST): handle_binding,
    (Method.ALLOCATE, MessageClass.REQUEST): allocate.handle_allocate,
    (Method.REFRESH, MessageClass.REQUEST): teardown.handle_refresh,
    (Method.CREATE_PERMISSION, MessageClass.REQUEST): permissions.handle_create_permission,
    (Method.CHANNEL_BIND, MessageClass.REQUEST): permissions.handle_channel_bind,
    (Method.CONNECT, MessageClass.REQUEST): tcp_relay.handle_connect,
    (Method.CONNECTION_BIND, MessageClass.REQUEST): tcp_relay.handle_connection_bind,
}
