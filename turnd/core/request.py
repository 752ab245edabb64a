"""Values shared by the request handlers: the request, its credential, and the refusal."""

from __future__ import annotations

from typing import Any

import attrs

from stun.errors import REASON_PHRASES
from stun.message import Message
from turnd.core.actions import FiveTuple


class StunError(Exception):
    """A request the server refuses: becomes one error response with ``code``."""

    def __init__(self, code: int, reason: str | None = None, *extra: Any) -> None:
        self.code = code
        self.reason = reason or REASON_PHRASES.get(code, "Error")
        self.extra: tuple[Any, ...] = extra
        super().__init__(f"{code} {self.reason}")


@attrs.frozen
class Credential:
    """The outcome of a successful authentication: what responses are signed with."""

    username: str
    realm: str
    key: bytes
    sha256: bool
    rest_id: str | None


@attrs.define(slots=True)
class Request:
    """One request as handlers see it."""

    five_tuple: FiveTuple
    message: Message
    now: float
    fingerprint: bool
    credential: Credential | None = None
    #: Bytes of the request on the wire: an unauthenticated error's reason phrase is cut to keep
    #: the answer within AMPLIFICATION_FACTOR times it (turnd.core.ratelimit).
    size: int = 0
