"""Response building: the bytes of every success and error response the core sends (RFC 8489
§6.3, §9.2.4, §14.8). (The transaction ids of the indications the core originates are
TurnServer.new_txid: the Data indication hot path calls it.)

Theory of operation: a handler answers with :meth:`Responder.success` or raises ``StunError``,
which exactly one place, :meth:`Responder.error`, turns into the error response, adding REALM and
NONCE (401, 438), MESSAGE-INTEGRITY once the request was authenticated and SOFTWARE to
authenticated clients only. Unauthenticated answers are amplification (DESIGN.md, Security): their
reason phrase is cut so the answer stays within ``AMPLIFICATION_FACTOR`` times the request.
"""

from __future__ import annotations

from typing import Any

import attrs

from stun import attributes as at
from stun.errors import REASON_PHRASES
from stun.message import Header, Integrity, Message, MessageClass, encode
from turnd.core.authn import RequestAuthenticator
from turnd.core.ratelimit import AMPLIFICATION_FACTOR
from turnd.core.request import Request, StunError
from turnd.core.settings import CoreSettings

#: The most an unauthenticated answer exceeds its request by, besides the padded REALM: a 401 to
#: a bare 20-byte request adds ERROR-CODE (8: an empty reason), REALM's header (4), NONCE (48) and
#: PASSWORD-ALGORITHMS (12). Binding answers, 400s and 420s stay well under it.
UNAUTHENTICATED_OVERHEAD = 72

#: Characters of the reason in a 400 to an undecodable request: enough to name the problem,
#: short enough that the answer stays close to the request's size (amplification).
MALFORMED_REASON_CHARS = 48


def amplification_bound(realm: str) -> int:
    """Bytes an unauthenticated answer may exceed its request by, for ``realm``."""
    size = len(realm.encode())
    return UNAUTHENTICATED_OVERHEAD + size + (-size % 4)


class Responder:
    """Encodes the server's answers to requests."""

    def __init__(self, settings: CoreSettings, auth: RequestAuthenticator) -> None:
        self.settings = settings
        self.auth = auth

    def success(self, request: Request, *attributes: Any) -> bytes:
        """Encode a success response to ``request``, signed if it was authenticated."""
        message = request.message
        attrs_ = list(attributes)
        cred = request.credential
        if self.settings.software and cred is not None:
            # Only to authenticated clients: in an unauthenticated answer it is amplification
            # (and tells a scanner what runs here).
            attrs_.append(at.Software(self.settings.software))
        response = Message(
            message.method, MessageClass.SUCCESS, message.transaction_id, tuple(attrs_)
        )
        return encode(
            response,
            key=cred.key if cred else None,
            integrity=Integrity.SHA256 if cred and cred.sha256 else Integrity.SHA1,
            fingerprint=request.fingerprint,
        )

    def error(self, request: Request, err: StunError) -> bytes:
        """The one place a refusal becomes bytes (RFC 8489 §6.3.4, §9.2.4)."""
        message = request.message
        attrs_: list[Any] = [at.ErrorCode(err.code, err.reason), *err.extra]
        cred = request.credential
        if err.code in (401, 438):
            cred = None  # §9.2.4: challenges carry no MESSAGE-INTEGRITY
            # §14.8: the reason phrase is for a human and may be empty; a challenge goes to
            # sources not yet authenticated, so every byte of it is amplification.
            attrs_[0] = at.ErrorCode(err.code, "")
            attrs_ += self.auth.challenge(self.settings.realm, request.five_tuple, request.now)
        elif cred is not None and self.settings.software:
            attrs_.append(at.Software(self.settings.software))
        response = Message(
            message.method, MessageClass.ERROR, message.transaction_id, tuple(attrs_)
        )
        if cred is None and request.size and attrs_[0].reason:
            response = trim_reason(response, request.size, request.fingerprint)
        return encode(
            response,
            key=cred.key if cred else None,
            integrity=Integrity.SHA256 if cred and cred.sha256 else Integrity.SHA1,
            fingerprint=request.fingerprint,
        )

    @staticmethod
    def malformed(header: Header, code: int, reason: str, size: int) -> bytes:
        """An error response to a ``size``-byte request too malformed to decode (no integrity
        possible)."""
        reply = Message(
            header.method,
            MessageClass.ERROR,
            header.transaction_id,
            (at.ErrorCode(code, f"{REASON_PHRASES[code]}: {reason}"[:MALFORMED_REASON_CHARS]),),
        )
        return encode(trim_reason(reply, size, fingerprint=False))


def trim_reason(response: Message, size: int, fingerprint: bool) -> Message:
    """``response`` with its ERROR-CODE reason phrase (the first attribute; RFC 8489 §14.8: for
    a human, may be empty) cut so that it stays within AMPLIFICATION_FACTOR x ``size`` bytes."""
    error = response.attributes[0]
    assert isinstance(error, at.ErrorCode)  # both callers put it first: not remote input
    bare = attrs.evolve(
        response, attributes=(at.ErrorCode(error.code, ""), *response.attributes[1:])
    )
    room = AMPLIFICATION_FACTOR * size - len(encode(bare, fingerprint=fingerprint))
    room -= room % 4  # the reason is padded to 4 bytes
    reason = error.reason.encode()[: max(0, room)].decode(errors="ignore")
    if reason == error.reason:
        return response
    return attrs.evolve(
        response, attributes=(at.ErrorCode(error.code, reason), *response.attributes[1:])
    )
