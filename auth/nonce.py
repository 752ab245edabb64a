"""Stateless nonces for the long-term credential mechanism (RFC 8489 §9.2).

Theory of operation
-------------------
A nonce carries everything needed to check it, sealed by an HMAC under a key the whole cluster
shares, so a retry that lands on another node still validates and no node keeps nonce state::

    nonce = "obMatJos2" + base64(features, 3 bytes)            the 13-char nonce cookie (§9.2)
          + base64(version 1 byte | expiry 4 bytes | tag 16 bytes)                   28 chars
    tag   = HMAC-SHA256(nonce_key, cookie | version | expiry | client)[:16]
    nonce_key = HMAC-SHA256(cluster_key, "turnd nonce v1")     (never use the cluster key as is)

- The nonce cookie (§9.2) announces the STUN Security Features (§18.1). Bit 0 "Password
  algorithms" and bit 1 "Username anonymity" are numbered from the least significant bit of the
  24-bit set, as corrected by verified erratum 6290 (the published text says the opposite); the
  RFC 8489 Appendix B.1 cookie "obMatJos2AAAC" is bit 1 under that reading.
- The cookie is covered by the tag, so an on-path attacker who clears a feature bit (the
  bid-down attack of §9.2.1) turns the nonce INVALID.
- ``client`` is an opaque binding chosen by the caller (the client's transport address). §9.2.4:
  the server MUST NOT give the same NONCE to two requests unless they share source IP and port;
  a nonce is a function of (client, expiry second), so distinct bindings get distinct nonces.
- Expiry is whole Unix seconds; the nonce is VALID while ``now < expiry`` and STALE after (the
  core answers 438). A forged, malformed or foreign nonce is INVALID.
- Every character is base64 (A-Z a-z 0-9 + /): legal qdtext, no quote, no backslash, no "=".
"""

from __future__ import annotations

import base64
import hmac
import math
import struct
from collections.abc import Iterable
from enum import Enum, IntEnum

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_LIFETIME",
    "MIN_KEY_LENGTH",
    "NONCE_COOKIE",
    "NONCE_LENGTH",
    "NonceCheck",
    "NonceManager",
    "SecurityFeature",
    "features_of",
    "nonce_cookie",
]

#: The fixed prefix of every RFC 8489 nonce cookie (§9.2).
NONCE_COOKIE = "obMatJos2"
#: Default nonce lifetime in seconds: long enough that a client rarely sees 438 within one
#: allocation refresh period, short enough to bound replays (RFC 8489 §9.2, RFC 7616 §5.4).
DEFAULT_LIFETIME = 600.0
#: Minimum cluster key length: an HMAC key shorter than 128 bits is guessable.
MIN_KEY_LENGTH = 16
#: How far in the future an expiry may lie beyond ``now + lifetime``: tolerates clock
#: differences between nodes without letting a node with a wild clock mint long-lived nonces.
CLOCK_SKEW = 30.0

_FEATURE_CHARS = 4  # base64 of the 3-byte feature set (§9.2)
_COOKIE_LENGTH = len(NONCE_COOKIE) + _FEATURE_CHARS  # 13 (§9.2 "13-character string")
_VERSION = 1
_BODY = struct.Struct("!BI")  # version, expiry (uint32 Unix seconds: valid until 2106)
_TAG_LENGTH = 16  # 128-bit truncated HMAC-SHA256: forging needs ~2**128 online guesses
_BODY_LENGTH = _BODY.size + _TAG_LENGTH  # 21 bytes: a multiple of 3, so base64 has no padding
#: Length of every nonce this module issues.
NONCE_LENGTH = _COOKIE_LENGTH + _BODY_LENGTH * 4 // 3
_KEY_LABEL = b"turnd nonce v1"


class SecurityFeature(IntEnum):
    """STUN Security Features (RFC 8489 §18.1); the value is the bit number."""

    PASSWORD_ALGORITHMS = 0  # §9.2.4: PASSWORD-ALGORITHMS offered
    USERNAME_ANONYMITY = 1  # §9.2.5: the client MUST use USERHASH


class NonceCheck(Enum):
    """Outcome of :meth:`NonceManager.check`."""

    VALID = "valid"
    STALE = "stale"  # ours and untampered, but expired: 438 Stale Nonce (§9.2.4)
    INVALID = "invalid"  # not ours: forged, malformed, tampered or bound to another client


def nonce_cookie(features: Iterable[SecurityFeature]) -> str:
    """The 13-character nonce cookie announcing ``features`` (RFC 8489 §9.2, §18.1)."""
    bits = 0
    for feature in features:
        bits |= 1 << SecurityFeature(feature)
    return NONCE_COOKIE + base64.b64encode(bits.to_bytes(3, "big")).decode("ascii")


def features_of(nonce: str) -> frozenset[SecurityFeature]:
    """The security features announced by ``nonce``'s cookie (RFC 8489 §9.2, §18.1).

    A nonce without a well-formed cookie announces none. Unassigned bits are ignored. This
    parses only: trust the answer for a nonce that :meth:`NonceManager.check` found VALID or
    STALE (both prove the cookie is the one this cluster issued).
    """
    if not nonce.startswith(NONCE_COOKIE) or len(nonce) < _COOKIE_LENGTH:
        return frozenset()
    try:
        raw = base64.b64decode(nonce[len(NONCE_COOKIE) : _COOKIE_LENGTH], validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        return frozenset()
    if len(raw) != 3:  # "=" padding inside the four characters
        return frozenset()
    bits = int.from_bytes(raw, "big")
    return frozenset(feature for feature in SecurityFeature if bits >> feature & 1)


class NonceManager:
    """Issues and checks stateless nonces under a cluster-shared key.

    ``key`` is shared by every node; ``features`` are the security features this server
    announces (set PASSWORD_ALGORITHMS when 401/438 responses carry PASSWORD-ALGORITHMS,
    §9.2.4; USERNAME_ANONYMITY only when every user can be found by USERHASH, §9.2.5).
    """

    __slots__ = ("_cookie", "_features", "_lifetime", "_mac_key")

    def __init__(
        self,
        key: bytes,
        *,
        features: Iterable[SecurityFeature],
        lifetime: float = DEFAULT_LIFETIME,
    ) -> None:
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"nonce key must be at least {MIN_KEY_LENGTH} bytes")
        if not (math.isfinite(lifetime) and lifetime > 0):
            raise ValueError("nonce lifetime must be a positive number of seconds")
        self._mac_key = hmac.digest(key, _KEY_LABEL, "sha256")
        self._features = frozenset(SecurityFeature(feature) for feature in features)
        self._cookie = nonce_cookie(self._features)
        self._lifetime = float(lifetime)

    def __repr__(self) -> str:
        names = sorted(feature.name for feature in self._features)
        return f"NonceManager(key=<secret>, features={names}, lifetime={self._lifetime})"

    @property
    def features(self) -> frozenset[SecurityFeature]:
        """The security features announced in issued nonces."""
        return self._features

    @property
    def lifetime(self) -> float:
        """Seconds an issued nonce stays VALID."""
        return self._lifetime

    def _tag(self, cookie: str, body: bytes, client: bytes) -> bytes:
        data = cookie.encode("ascii") + body + client
        return hmac.digest(self._mac_key, data, "sha256")[:_TAG_LENGTH]

    def issue(self, client: bytes, now: float) -> str:
        """A fresh nonce for ``client``, valid for ``lifetime`` rounded up to a whole second."""
        expiry = math.ceil(now + self._lifetime)  # never shorter than lifetime
        try:
            body = _BODY.pack(_VERSION, expiry)
        except struct.error as exc:
            raise ValueError(f"expiry {expiry} does not fit the nonce") from exc
        sealed = body + self._tag(self._cookie, body, client)
        return self._cookie + base64.b64encode(sealed).decode("ascii")

    def check(self, nonce: str, client: bytes, now: float) -> NonceCheck:
        """Whether ``nonce`` was issued by this cluster for ``client`` and is still fresh.

        Never raises on any string. The tag is compared in constant time. A nonce whose expiry
        lies further ahead than ``lifetime + CLOCK_SKEW`` is INVALID: no node issues those.
        """
        if len(nonce) != NONCE_LENGTH or not nonce.startswith(NONCE_COOKIE):
            return NonceCheck.INVALID
        cookie = nonce[:_COOKIE_LENGTH]
        try:
            features = base64.b64decode(cookie[len(NONCE_COOKIE) :], validate=True)
            sealed = base64.b64decode(nonce[_COOKIE_LENGTH:], validate=True)
        except ValueError:
            return NonceCheck.INVALID
        if len(features) != 3 or len(sealed) != _BODY_LENGTH:
            return NonceCheck.INVALID
        body, tag = sealed[: _BODY.size], sealed[_BODY.size :]
        version, expiry = _BODY.unpack(body)
        if version != _VERSION:
            return NonceCheck.INVALID
        if not hmac.compare_digest(tag, self._tag(cookie, body, client)):
            return NonceCheck.INVALID
        if expiry > now + self._lifetime + CLOCK_SKEW:
            return NonceCheck.INVALID
        if now >= expiry:
            return NonceCheck.STALE
        return NonceCheck.VALID
