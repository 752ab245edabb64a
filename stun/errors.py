"""The codec's own error, and the STUN/TURN error codes with their recommended reason phrases."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stun.message import Header


class StunDecodeError(ValueError):
    """Bytes that are not a valid STUN message. The only exception the decoders raise.

    ``header`` is set when the 20-byte header itself was valid (so a server can still answer a
    request with 400 Bad Request, RFC 8489 §6.3.1); it is None for bytes that are not STUN at all.
    """

    def __init__(self, reason: str, header: Header | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.header = header


#: The error codes a TURN server sends (RFC 8489 §14.8, RFC 8656 §19, RFC 6062 §6.3) and their
#: recommended reason phrases (IANA "STUN Error Codes" registry).
REASON_PHRASES: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    405: "Mobility Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    487: "Role Conflict",
    500: "Server Error",
    508: "Insufficient Capacity",
}
