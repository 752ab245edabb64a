"""Authenticating a request with long-term credentials (RFC 8489 §9.2.4).

Theory of operation, in the order the RFC gives:

1. No MESSAGE-INTEGRITY(-SHA256): 401 with REALM and NONCE (a challenge, nothing stored).
2. Missing USERNAME/USERHASH, REALM or NONCE: 400.
3. Downgrade protection (§9.2.4): when the nonce announces the password-algorithms feature, a
   client either sends both PASSWORD-ALGORITHMS (identical to what the server offered) and
   PASSWORD-ALGORITHM (one of them), or neither (an RFC 5389 client, MD5 keys); anything else 400.
4. The key: from USERNAME or USERHASH through ``auth.credentials.Authenticator``; unknown,
   expired or revoked users get 401. Each candidate key (one per REST secret) is tried with a
   constant-time MAC comparison; none matching: 401.
5. Only then the NONCE: not issued by this cluster for this client, or expired: 438 with a fresh
   NONCE. Nonces are stateless (``auth.nonce``), so a retry that lands on another node validates
   there too.

Every failure is counted in the server's stats under ``auth_failure.<reason>``.
"""

from __future__ import annotations

from collections import Counter

from auth.credentials import Authenticator
from auth.nonce import NonceCheck, NonceManager, SecurityFeature, features_of
from stun import attributes as at
from stun.keys import PasswordAlgorithm
from stun.message import Message, check_integrity
from turnd.core.actions import FiveTuple
from turnd.core.ratelimit import FailureThrottle
from turnd.core.request import Credential, Request, StunError

#: Password algorithms offered in PASSWORD-ALGORITHMS, in preference order (RFC 8489 §14.11).
OFFERED_ALGORITHMS = (PasswordAlgorithm.SHA256, PasswordAlgorithm.MD5)
OFFERED_ENTRIES = tuple(at.PasswordAlgorithmEntry(a) for a in OFFERED_ALGORITHMS)


def nonce_binding(five_tuple: FiveTuple) -> bytes:
    """What a nonce is bound to: the client's transport and IP address (DESIGN.md: stateless
    nonces bound to the client address, valid on any node that shares the key).

    Not the port: an RFC 6062 client opens each data connection from a new port and
    authenticates its ConnectionBind with the nonce of its control connection (§5.4).
    """
    return f"{five_tuple.transport.value}|{five_tuple.client.host}".encode()


class RequestAuthenticator:
    """Checks requests against an :class:`Authenticator` and a :class:`NonceManager`."""

    def __init__(
        self,
        authenticator: Authenticator,
        nonces: NonceManager,
        stats: Counter[str],
        throttle: FailureThrottle,
    ) -> None:
        self.authenticator = authenticator
        self.nonces = nonces
        self.stats = stats
        self.throttle = throttle

    def challenge(self, realm: str, five_tuple: FiveTuple, now: float) -> list[object]:
        """REALM, a fresh NONCE and (with the feature) PASSWORD-ALGORITHMS for a 401/438."""
        nonce = self.nonces.issue(nonce_binding(five_tuple), now)
        attributes: list[object] = [at.Realm(realm), at.Nonce(nonce)]
        if SecurityFeature.PASSWORD_ALGORITHMS in self.nonces.features:
            attributes.append(at.PasswordAlgorithms(OFFERED_ENTRIES))
        return attributes

    def _failure(self, reason: str, request: Request, username: str | None) -> StunError:
        self.stats["auth_failure." + reason.replace("-", "_")] += 1
        self.throttle.failed(request.five_tuple.client.host, username, request.now)
        return StunError(401)

    def throttled(self, request: Request) -> bool:
        """Whether the request's source used up its failed authentications (then it is dropped,
        counted as ``auth_failure.throttled``)."""
        if self.throttle.blocked(request.five_tuple.client.host, request.now):
            self.stats["auth_failure.throttled"] += 1
            return True
        return False

    def authenticate(self, request: Request) -> Credential:
        """The credential ``request`` proves, or a :class:`StunError` (401, 400 or 438)."""
        message = request.message
        if message.mi_offset is None and message.mi256_offset is None:
            self.stats["auth.challenges"] += 1
            raise StunError(401)
        identity = message.get(at.Username) or message.get(at.Userhash)
        realm_attr = message.get(at.Realm)
        nonce_attr = message.get(at.Nonce)
        if identity is None or not realm_attr or not nonce_attr:
            self.stats["auth_failure.missing_attributes"] += 1
            raise StunError(400, "USERNAME or USERHASH, REALM and NONCE are required")
        nonce = nonce_attr.value
        check = self.nonces.check(nonce, nonce_binding(request.five_tuple), request.now)
        # Feature bits are only trustworthy in a nonce this cluster issued (its MAC covers them).
        features = features_of(nonce) if check is not NonceCheck.INVALID else self.nonces.features
        algorithm = self._password_algorithm(message, features)
        realm = realm_attr.value
        if isinstance(identity, at.Username):
            username = identity.value
        else:
            found = self.authenticator.userhash_lookup(identity.value, realm)
            if found is None:
                raise self._failure("unknown_userhash", request, None)
            username = found
        lookup = self.authenticator.lookup(username, realm, algorithm, request.now)
        if not lookup.keys:
            raise self._failure(str(lookup.reason or "unknown_user"), request, username)
        key = next((k for k in lookup.keys if check_integrity(message, k)), None)
        if key is None:
            raise self._failure("bad_integrity", request, username)
        if check is not NonceCheck.VALID:
            # Checked after integrity, as §9.2.4 orders it: a client whose MAC is right but whose
            # nonce expired (or was issued for another address) retries with the fresh one.
            self.stats["auth.stale_nonce" if check is NonceCheck.STALE else "auth.bad_nonce"] += 1
            raise StunError(438)
        sha256 = message.mi256_offset is not None
        return Credential(username, realm, key, sha256, lookup.rest_id)

    @staticmethod
    def _password_algorithm(
        message: Message, features: frozenset[SecurityFeature]
    ) -> PasswordAlgorithm:
        """Step 4 above: downgrade protection and the algorithm the key is derived with."""
        offered = message.get(at.PasswordAlgorithms)
        chosen = message.get(at.PasswordAlgorithm)
        if SecurityFeature.PASSWORD_ALGORITHMS not in features:
            if chosen is not None or offered is not None:
                raise StunError(400, "password algorithm attributes without the nonce feature")
            return PasswordAlgorithm.MD5
        if offered is None and chosen is None:
            return PasswordAlgorithm.MD5  # an RFC 5389 client: MD5 keys
        if offered is None or chosen is None:
            raise StunError(400, "PASSWORD-ALGORITHMS and PASSWORD-ALGORITHM go together")
        if offered.algorithms != OFFERED_ENTRIES:
            raise StunError(400, "PASSWORD-ALGORITHMS differs from what the server offered")
        entry = at.PasswordAlgorithmEntry(chosen.algorithm, chosen.parameters)
        if entry not in OFFERED_ENTRIES:
            raise StunError(400, "PASSWORD-ALGORITHM is not one the server offered")
        return PasswordAlgorithm(chosen.algorithm)
