"""Where long-term keys come from: static users and REST ephemeral credentials.

Theory of operation
-------------------
The TURN core decodes a request, takes USERNAME (or maps USERHASH to a username with
:meth:`Authenticator.userhash_lookup`), REALM and the chosen PASSWORD-ALGORITHM, and asks
:meth:`Authenticator.lookup` for candidate keys. It then checks MESSAGE-INTEGRITY(-SHA256)
against each candidate with ``hmac.compare_digest``; any match authenticates (RFC 8489 §9.2.4).

- Static users (RFC 8489 §9.2): username -> password, or a key precomputed by an admin tool
  (coturn's ``turnadmin -k``, an MD5 key). Usernames are stored OpaqueString-prepared, which is
  the form a conforming client sends (§14.3). Keys for the configured realm and both algorithms
  are derived once when the :class:`Authenticator` is built, never per request.
- REST ephemeral credentials (draft-uberti-behave-turn-rest-00, coturn's use-auth-secret):
  username ``<expiry>:<id>`` (or a bare ``<expiry>``), password
  ``base64(HMAC-SHA1(secret, username))``. Secrets rotate: every secret on the list (newest
  first) yields one candidate key, so credentials minted under a retiring secret keep working.
- A username that is a static user is never treated as REST, even if it parses as one.
- Revocation is a set of usernames refused with reason ``revoked``. An Authenticator is
  immutable: :meth:`Authenticator.revoke` returns a new one sharing the precomputed tables.
"""

from __future__ import annotations

import base64
import hmac
import string
from collections.abc import Iterable, Mapping
from enum import StrEnum

import attrs

from stun.keys import (
    KEY_LENGTHS,
    PasswordAlgorithm,
    long_term_key,
    opaque_string,
    unquote,
)
from stun.keys import userhash as compute_userhash

__all__ = [
    "MAX_EXPIRY_DIGITS",
    "MAX_USERNAME_BYTES",
    "Authenticator",
    "Credential",
    "CredentialKind",
    "KeyLookup",
    "LookupFailure",
    "MintRefused",
    "Password",
    "PrecomputedKey",
    "RestUsername",
    "mint_rest_credentials",
    "parse_credential",
    "parse_rest_username",
    "parse_users_file",
    "prepare_username",
    "rest_password",
]

#: USERNAME is "a UTF-8-encoded sequence of fewer than 509 bytes" (RFC 8489 §14.3).
MAX_USERNAME_BYTES = 508
#: Expiry digits accepted in a REST username: Unix times for the next 30,000 years, and a bound
#: on the integer parsing done on hostile input.
MAX_EXPIRY_DIGITS = 12
_KEY_PREFIX = "0x"  # coturn turnadmin output: a hex key instead of a password


class LookupFailure(StrEnum):
    """Why :meth:`Authenticator.lookup` found no key (also the auth-failure metric label)."""

    UNKNOWN_USER = "unknown-user"
    EXPIRED = "expired"  # REST credential past its expiry
    MALFORMED_USERNAME = "malformed-username"  # not a static user, not a REST username
    REVOKED = "revoked"
    UNKNOWN_REALM = "unknown-realm"  # REALM is not this server's
    UNSUPPORTED_ALGORITHM = "unsupported-algorithm"  # only a key for another algorithm exists


class CredentialKind(StrEnum):
    """Which mechanism a username belongs to."""

    STATIC = "static"
    REST = "rest"


@attrs.frozen
class Password:
    """A long-term password as configured (prepared with OpaqueString when a key is derived)."""

    value: str = attrs.field(repr=False)


def _check_key_length(instance: PrecomputedKey, attribute: object, value: bytes) -> None:
    expected = KEY_LENGTHS[instance.algorithm]
    if len(value) != expected:
        raise ValueError(f"a {instance.algorithm.name} key is {expected} bytes")


@attrs.frozen
class PrecomputedKey:
    """A long-term key stored instead of a password (RFC 8489 §9.2.2 "H(A1)").

    It was derived with one realm and one algorithm, and only serves requests for those.
    """

    algorithm: PasswordAlgorithm = attrs.field(converter=PasswordAlgorithm)
    key: bytes = attrs.field(repr=False, validator=_check_key_length)


#: A static user's secret: a password, or a key precomputed from one.
Credential = Password | PrecomputedKey


def parse_credential(text: str) -> Credential:
    """Read the secret half of a ``username:secret`` entry.

    ``0x`` followed by hex digits is a precomputed key: 32 digits for MD5, 64 for SHA-256
    (other lengths raise ValueError). Anything else is a password. As with coturn, a password
    that is "0x" plus hex digits cannot be written in this form.
    """
    digits = text[len(_KEY_PREFIX) :]
    if text[: len(_KEY_PREFIX)].lower() != _KEY_PREFIX or not digits:
        return Password(text)
    if not all(char in string.hexdigits for char in digits):
        return Password(text)
    for algorithm, length in KEY_LENGTHS.items():
        if len(digits) == 2 * length:
            return PrecomputedKey(algorithm, bytes.fromhex(digits))
    raise ValueError("a precomputed key is 0x and 32 (MD5) or 64 (SHA-256) hex digits")


def prepare_username(name: str) -> str:
    """The OpaqueString form of a configured username, which is what clients send (§14.3).

    Raises ValueError when the profile refuses it or it is not fewer than 509 bytes.
    """
    prepared = opaque_string(name)
    if len(prepared.encode("utf-8")) > MAX_USERNAME_BYTES:
        raise ValueError(f"longer than {MAX_USERNAME_BYTES} bytes")
    return prepared


def parse_users_file(text: str) -> dict[str, Credential]:
    """Parse a users file: one ``username:password`` or ``username:0x<hex key>`` per line.

    Blank lines and lines starting with ``#`` are skipped; whitespace around the username and
    the secret is ignored; the username ends at the first colon. Username and password must be
    valid OpaqueString (RFC 8489 §9.2.2, §14.3); the result is keyed by the prepared username.
    Any bad line, including a second entry for the same prepared username, raises ValueError
    naming its line number; messages never contain a password.
    """
    users: dict[str, Credential] = {}
    first_line: dict[str, int] = {}
    for number, raw_line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, secret_text = line.partition(":")
        name, secret_text = name.strip(), secret_text.strip()
        if not colon or not name or not secret_text:
            raise ValueError(f"line {number}: expected username:password")
        try:
            name = prepare_username(name)
        except ValueError as exc:
            raise ValueError(f"line {number}: username {name!r}: {exc}") from None
        if name in first_line:
            raise ValueError(
                f"line {number}: user {name!r} already defined on line {first_line[name]}"
            )
        try:
            credential = parse_credential(secret_text)
            if isinstance(credential, Password):
                opaque_string(credential.value)
        except ValueError as exc:
            raise ValueError(f"line {number}: secret of user {name!r}: {exc}") from None
        users[name] = credential
        first_line[name] = number
    return users


# --- REST ephemeral credentials -----------------------------------------------------------------


@attrs.frozen
class RestUsername:
    """A parsed REST username: expiry (Unix seconds) and the id part ("" when absent)."""

    expiry: int
    ident: str


def parse_rest_username(username: str) -> RestUsername | None:
    """Split ``<expiry>:<id>`` or ``<expiry>``; None when it is not a REST username.

    The expiry is 1 to MAX_EXPIRY_DIGITS ASCII digits; the id may be empty or contain colons.
    """
    expiry, _, ident = username.partition(":")
    if not (0 < len(expiry) <= MAX_EXPIRY_DIGITS and expiry.isascii() and expiry.isdigit()):
        return None
    return RestUsername(int(expiry), ident)


def _secret_bytes(secret: bytes | str) -> bytes:
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise ValueError("a REST secret must not be empty")
    return raw


def rest_password(secret: bytes | str, username: str) -> str:
    """The REST password for ``username``: base64(HMAC-SHA1(secret, username)) (draft-uberti)."""
    mac = hmac.digest(_secret_bytes(secret), username.encode("utf-8"), "sha1")
    return base64.b64encode(mac).decode("ascii")


class MintRefused(ValueError):
    """A ttl or id that cannot make a credential the authenticator accepts (a client's error)."""


def mint_rest_credentials(
    secret: bytes | str, now: float, ttl: int, ident: str = ""
) -> tuple[str, str]:
    """A REST (username, password) pair valid for ``ttl`` seconds from ``now``.

    The username is ``<expiry>:<ident>``, or the bare expiry when ``ident`` is empty. Raises
    MintRefused (a ValueError) when ttl is not positive, the expiry has more than
    MAX_EXPIRY_DIGITS digits, or the username would not be a valid STUN USERNAME that
    ``Authenticator.lookup`` reads back unchanged (OpaqueString-prepared, no trailing NUL, fewer
    than 509 bytes; RFC 8489 §14.3).
    """
    if ttl <= 0:
        raise MintRefused("ttl must be a positive number of seconds")
    expiry = int(now) + int(ttl)
    if len(str(expiry)) > MAX_EXPIRY_DIGITS:
        raise MintRefused(
            f"ttl {ttl} puts the expiry past {MAX_EXPIRY_DIGITS} digits, which turnd refuses "
            "as a malformed REST username: use a shorter ttl"
        )
    username = f"{expiry}:{ident}" if ident else str(expiry)
    try:
        prepared = opaque_string(username)
    except ValueError as exc:
        raise MintRefused(f"the id is not a valid STUN username ({exc})") from None
    if prepared != username or unquote(username) != username:
        raise MintRefused("the id is not in OpaqueString form (NFC, ASCII spaces only)")
    if len(username.encode("utf-8")) > MAX_USERNAME_BYTES:
        raise MintRefused(f"the username would exceed {MAX_USERNAME_BYTES} bytes")
    # The authenticator's own reading of the name, so that what is minted is what it accepts.
    if parse_rest_username(username) != RestUsername(expiry, ident):
        raise MintRefused("the id does not survive the REST username format")
    return username, rest_password(secret, username)


# --- Lookup -----------------------------------------------------------------------------------


def _redact_keys(keys: tuple[bytes, ...]) -> str:
    return f"<{len(keys)} keys>"


def _redact_secrets(secrets: tuple[bytes, ...]) -> str:
    return f"<{len(secrets)} secrets>"


@attrs.frozen
class KeyLookup:
    """Candidate keys for one request, or why there are none.

    ``keys`` holds one key per candidate secret (one for a static user, one per REST secret);
    the core accepts the request if its MESSAGE-INTEGRITY(-SHA256) verifies under any of them.
    ``kind``, ``rest_id`` and ``expires`` describe the username even when the lookup failed.
    """

    keys: tuple[bytes, ...] = attrs.field(default=(), repr=_redact_keys)
    reason: LookupFailure | None = None
    kind: CredentialKind | None = None
    rest_id: str | None = None  # REST id part: the customIdentifier used for accounting
    expires: int | None = None  # REST expiry (Unix seconds)

    @property
    def ok(self) -> bool:
        """Whether there is at least one key to try."""
        return bool(self.keys)


@attrs.frozen
class _StaticTable:
    """Static users, prepared once: names, derived keys, USERHASH index."""

    names: frozenset[str]
    keys: Mapping[tuple[str, PasswordAlgorithm], bytes] = attrs.field(repr=False)
    by_userhash: Mapping[bytes, str] = attrs.field(repr=False)

    @classmethod
    def build(cls, users: Mapping[str, Credential | str], realm: str) -> _StaticTable:
        keys: dict[tuple[str, PasswordAlgorithm], bytes] = {}
        by_userhash: dict[bytes, str] = {}
        written: dict[str, str] = {}
        for raw_name, secret in users.items():
            try:
                name = prepare_username(raw_name)
            except ValueError as exc:
                raise ValueError(f"user {raw_name!r}: {exc}") from None
            if name in written:
                raise ValueError(f"users {written[name]!r} and {raw_name!r} are the same user")
            written[name] = raw_name
            credential = Password(secret) if isinstance(secret, str) else secret
            if isinstance(credential, PrecomputedKey):
                keys[name, credential.algorithm] = credential.key
            else:
                try:
                    for algorithm in PasswordAlgorithm:
                        keys[name, algorithm] = long_term_key(
                            name, realm, credential.value, algorithm
                        )
                except ValueError as exc:
                    raise ValueError(f"password of user {raw_name!r}: {exc}") from None
            by_userhash[compute_userhash(name, realm)] = name
        return cls(frozenset(written), keys, by_userhash)


@attrs.frozen
class Authenticator:
    """Finds long-term keys for a username (RFC 8489 §9.2.2) in one realm.

    Build it with :meth:`create`. Immutable: :meth:`revoke`, :meth:`unrevoke` and
    :meth:`prune_revoked` return a new Authenticator sharing the precomputed tables.
    """

    realm: str
    revoked: frozenset[str]
    _static: _StaticTable = attrs.field(alias="static")
    _rest_secrets: tuple[bytes, ...] = attrs.field(alias="rest_secrets", repr=_redact_secrets)

    @classmethod
    def create(
        cls,
        realm: str,
        *,
        users: Mapping[str, Credential | str] | None = None,
        rest_secrets: Iterable[bytes | str] = (),
        revoked: Iterable[str] = (),
    ) -> Authenticator:
        """Prepare the realm and usernames (OpaqueString) and derive every static key.

        ``rest_secrets`` is newest first. Raises ValueError for an invalid realm, username or
        password, two usernames that prepare to the same string, or an empty secret.
        """
        prepared_realm = opaque_string(realm)
        return cls(
            realm=prepared_realm,
            revoked=frozenset(revoked),
            static=_StaticTable.build(users or {}, prepared_realm),
            rest_secrets=tuple(_secret_bytes(secret) for secret in rest_secrets),
        )

    @property
    def static_usernames(self) -> frozenset[str]:
        """The static users' names, OpaqueString-prepared."""
        return self._static.names

    def lookup(
        self, username: str, realm: str, algorithm: PasswordAlgorithm, now: float
    ) -> KeyLookup:
        """Candidate keys for ``username`` in ``realm`` under ``algorithm`` at time ``now``.

        Order: realm, static user, REST username (malformed, revoked, expired), with the
        username's metadata filled in as soon as it is known. A REST credential expires when
        its expiry is before ``now``.
        """
        if unquote(realm) != self.realm:
            return KeyLookup(reason=LookupFailure.UNKNOWN_REALM)
        name = unquote(username)
        if name in self._static.names:
            if name in self.revoked:
                return KeyLookup(reason=LookupFailure.REVOKED, kind=CredentialKind.STATIC)
            key = self._static.keys.get((name, PasswordAlgorithm(algorithm)))
            if key is None:
                return KeyLookup(
                    reason=LookupFailure.UNSUPPORTED_ALGORITHM, kind=CredentialKind.STATIC
                )
            return KeyLookup(keys=(key,), kind=CredentialKind.STATIC)
        if not self._rest_secrets:
            reason = LookupFailure.REVOKED if name in self.revoked else LookupFailure.UNKNOWN_USER
            return KeyLookup(reason=reason)
        rest = parse_rest_username(name)
        if rest is None:
            reason = (
                LookupFailure.REVOKED if name in self.revoked else LookupFailure.MALFORMED_USERNAME
            )
            return KeyLookup(reason=reason)
        meta = KeyLookup(kind=CredentialKind.REST, rest_id=rest.ident, expires=rest.expiry)
        if name in self.revoked:
            return attrs.evolve(meta, reason=LookupFailure.REVOKED)
        if rest.expiry < now:
            return attrs.evolve(meta, reason=LookupFailure.EXPIRED)
        keys = tuple(
            long_term_key(name, self.realm, rest_password(secret, name), algorithm)
            for secret in self._rest_secrets
        )
        return attrs.evolve(meta, keys=keys)

    def userhash_lookup(self, userhash: bytes, realm: str) -> str | None:
        """The static username whose USERHASH (RFC 8489 §14.4) is ``userhash``, if any.

        REST usernames cannot be recovered from their hash, so they never match.
        """
        if unquote(realm) != self.realm:
            return None
        return self._static.by_userhash.get(bytes(userhash))

    def revoke(self, username: str) -> Authenticator:
        """A copy that refuses ``username`` with reason ``revoked``."""
        return attrs.evolve(self, revoked=self.revoked | {unquote(username)})

    def unrevoke(self, username: str) -> Authenticator:
        """A copy that no longer refuses ``username``."""
        return attrs.evolve(self, revoked=self.revoked - {unquote(username)})

    def prune_revoked(self, now: float) -> Authenticator:
        """A copy without revoked REST usernames that have expired anyway (bounds the set)."""
        keep = set()
        for name in self.revoked:
            rest = parse_rest_username(name)
            if name in self._static.names or rest is None or rest.expiry >= now:
                keep.add(name)
        return attrs.evolve(self, revoked=frozenset(keep))
