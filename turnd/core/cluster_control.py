"""Every operation one cluster node asks of another, in one table: :data:`CONTROL_OPS`.

A CONTROL frame (:mod:`forwarding.frames`) carries a JSON object whose ``"op"`` names a row of
:data:`CONTROL_OPS`. A row says which shapes the body may take — each a set of required fields,
each field with the parser of its JSON type — and which handler runs it. :func:`run_control` is
the one place a body is checked: not a JSON object, or no shape of its row fits: counted
``backbone.drop.malformed``; no ``op`` or one no row names: ``backbone.drop.unknown_control``.
Handlers answer with the core's actions, like every other input.

The operations:

* ``pin`` / ``unpin`` ``flow``: the sender holds (no longer holds) the allocation of that flow
  although another node owns it (a RESERVATION-TOKEN redeemed there, RFC 8656 §7.2): send the
  flow there rather than to its owner.
* ``revoke`` ``username`` or ``usernames``: an operator revoked those names on the sender; each
  one this node has not revoked yet becomes a :class:`~turnd.core.actions.RevokeUser`, which the
  adapter carries out as a local revocation (persisted, allocations ended) but does not
  broadcast again.
* ``revocations?``: the sender just saw this node join; it gets every revocation this node holds
  (``revoke`` frames) and the pins of this node's flows.

Revocations are the adapter's state (it persists them, as given, in revoked.runtime); the node
reads them through the ``revoked`` callable the adapter hands it (:class:`ClusterNode`), so the
core answers ``revocations?`` itself and the adapter only sends the frames.

To add an operation: a row here (its shapes and handler) and a builder of its body below.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from stun.addresses import Address
from turnd.core.actions import Action, FiveTuple, RevokeUser, Transport

if TYPE_CHECKING:
    from turnd.core.cluster import ClusterNode

#: A field's parser: its value as the handler uses it, or None when the JSON value is not that.
Parse = Callable[[object], Any]
#: A handler: the node, the sending node's id and the body's fields (those of the shape that
#: fitted, parsed), to the actions it asks for.
Handler = Callable[["ClusterNode", int, Mapping[str, Any]], list[Action]]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _texts(value: object) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def flow_of(value: object) -> FiveTuple | None:
    """The 5-tuple of :func:`flow_text`'s data, or None if it is not that."""
    if not isinstance(value, list) or len(value) != 5:
        return None
    transport, client_host, client_port, server_host, server_port = value
    if not (isinstance(client_port, int) and isinstance(server_port, int)):
        return None
    if not (isinstance(client_host, str) and isinstance(server_host, str)):
        return None
    try:
        return FiveTuple(
            Transport(transport),
            Address(client_host, client_port),
            Address(server_host, server_port),
        )
    except ValueError:
        return None


def flow_text(five_tuple: FiveTuple) -> list[object]:
    """A 5-tuple as JSON data: [transport, client host, client port, server host, server port]."""
    client, server = five_tuple.client, five_tuple.server
    return [five_tuple.transport.value, client.host, client.port, server.host, server.port]


@attrs.frozen
class ControlOp:
    """One operation: the shapes its body may take (field -> parser; the first that fits is
    used) and its handler."""

    shapes: tuple[Mapping[str, Parse], ...]
    handler: Handler

    def fields(self, body: Mapping[str, object]) -> dict[str, Any] | None:
        """The parsed fields of the first shape ``body`` fits, or None when none fits."""
        for shape in self.shapes:
            found = {}
            for name, parse in shape.items():
                value = parse(body[name]) if name in body else None
                if value is None:
                    break
                found[name] = value
            else:
                return found
        return None


def _pin(node: ClusterNode, origin: int, fields: Mapping[str, Any]) -> list[Action]:
    node.learn_pin(fields["flow"], origin)
    return []


def _unpin(node: ClusterNode, origin: int, fields: Mapping[str, Any]) -> list[Action]:
    node.pins.pop(fields["flow"], None)
    return []


def _revoke(node: ClusterNode, origin: int, fields: Mapping[str, Any]) -> list[Action]:
    names = fields["usernames"] if "usernames" in fields else [fields["username"]]
    held = node.revoked()
    return [RevokeUser(name) for name in dict.fromkeys(names) if name not in held]


def _revocations(node: ClusterNode, origin: int, fields: Mapping[str, Any]) -> list[Action]:
    answer: list[Action] = []
    answer += node.revocations(origin, sorted(node.revoked()))
    answer += node.pins_for(origin)
    return answer


#: Every CONTROL operation (DESIGN.md "The cluster"), by its ``op``.
CONTROL_OPS: Mapping[str, ControlOp] = {
    "pin": ControlOp(({"flow": flow_of},), _pin),
    "unpin": ControlOp(({"flow": flow_of},), _unpin),
    "revoke": ControlOp(({"usernames": _texts}, {"username": _text}), _revoke),
    "revocations?": ControlOp(({},), _revocations),
}


def run_control(node: ClusterNode, origin: int, payload: bytes) -> list[Action]:
    """Check a CONTROL frame's JSON body against its row of :data:`CONTROL_OPS` and run it
    (drops counted)."""
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        node.stats["backbone.drop.malformed"] += 1
        return []
    op = body.get("op")
    row = CONTROL_OPS.get(op) if isinstance(op, str) else None
    if row is None:
        node.stats["backbone.drop.unknown_control"] += 1
        return []
    fields = row.fields(body)
    if fields is None:
        node.stats["backbone.drop.malformed"] += 1
        return []
    return row.handler(node, origin, fields)


# --- bodies, as the senders build them ---------------------------------------------------------


def pin(five_tuple: FiveTuple) -> dict[str, object]:
    """``pin``: this node holds ``five_tuple``'s allocation."""
    return {"op": "pin", "flow": flow_text(five_tuple)}


def unpin(five_tuple: FiveTuple) -> dict[str, object]:
    """``unpin``: ``five_tuple``'s allocation here ended."""
    return {"op": "unpin", "flow": flow_text(five_tuple)}


def revoke(username: str) -> dict[str, object]:
    """``revoke`` one name (an operator's revocation here)."""
    return {"op": "revoke", "username": username}


def revoke_all(usernames: list[str]) -> dict[str, object]:
    """``revoke`` a list of names (the answer to ``revocations?``)."""
    return {"op": "revoke", "usernames": usernames}


def ask_revocations() -> dict[str, object]:
    """``revocations?``: send me every revocation (and pin) you hold."""
    return {"op": "revocations?"}
