"""The Authenticator: static users, USERHASH, revocation, realms (RFC 8489 §9.2, §14.4)."""

from __future__ import annotations

import pytest

import auth.credentials
from auth.credentials import (
    Authenticator,
    CredentialKind,
    KeyLookup,
    LookupFailure,
    Password,
    PrecomputedKey,
    mint_rest_credentials,
)
from stun.keys import PasswordAlgorithm, long_term_key, userhash
from tests.conftest import StunVector

REALM = "turn.example.org"
NOW = 1_700_000_000.0
SECRET = b"rest secret"
MD5, SHA256 = PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256


def static(**users: str) -> Authenticator:
    return Authenticator.create(REALM, users=users)


# --- Static users (§9.2.2) ----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", list(PasswordAlgorithm))
def test_static_user_has_one_key_per_algorithm(algorithm: PasswordAlgorithm) -> None:
    """§9.2.2, §18.5.1: the key is derived from the user's password with the chosen algorithm."""
    found = static(alice="correct horse").lookup("alice", REALM, algorithm, NOW)
    assert found.keys == (long_term_key("alice", REALM, "correct horse", algorithm),)
    assert found.ok and found.reason is None
    assert (found.kind, found.rest_id, found.expires) == (CredentialKind.STATIC, None, None)


def test_static_keys_are_derived_once_not_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys for static users come from a table built at construction."""
    authn = static(alice="pw")
    expected = long_term_key("alice", REALM, "pw")

    def no_derivation(*args: object) -> bytes:
        raise AssertionError("key derived during lookup")

    monkeypatch.setattr(auth.credentials, "long_term_key", no_derivation)
    assert authn.lookup("alice", REALM, MD5, NOW).keys == (expected,)


def test_unknown_user_without_rest_gives_no_key() -> None:
    """§9.2.4: a USERNAME that is not valid gets 401; the lookup says 'unknown-user'."""
    found = static(alice="pw").lookup("mallory", REALM, MD5, NOW)
    assert found == KeyLookup(reason=LookupFailure.UNKNOWN_USER)


def test_other_realm_gives_no_key() -> None:
    """A REALM that is not this server's has no credentials."""
    found = static(alice="pw").lookup("alice", "other.example", MD5, NOW)
    assert found.reason is LookupFailure.UNKNOWN_REALM and not found.ok


def test_quoted_username_and_realm_are_unquoted() -> None:
    """§9.2.2: quotes and trailing nulls are removed from username and realm."""
    found = static(alice="pw").lookup('"alice"\0', f'"{REALM}"', MD5, NOW)
    assert found.keys == (long_term_key("alice", REALM, "pw"),)


def test_usernames_are_stored_in_opaquestring_form() -> None:
    """§14.3: clients send the prepared username, so the table holds prepared names."""
    authn = static(**{"e\u0301": "pw"})
    assert authn.static_usernames == {"\u00e9"}
    assert authn.lookup("\u00e9", REALM, MD5, NOW).ok
    assert not authn.lookup("e\u0301", REALM, MD5, NOW).ok


def test_realm_is_stored_in_opaquestring_form() -> None:
    """§14.9: REALM MUST have been processed with OpaqueString."""
    assert Authenticator.create("r\u00e9alm\u3000x").realm == "r\u00e9alm x"


def test_static_user_shadows_a_rest_looking_username() -> None:
    """A static user whose name parses as REST stays static."""
    name = "1700000600:alice"
    authn = Authenticator.create(REALM, users={name: "static pw"}, rest_secrets=[SECRET])
    found = authn.lookup(name, REALM, MD5, NOW)
    assert found.kind is CredentialKind.STATIC
    assert found.keys == (long_term_key(name, REALM, "static pw"),)


def test_static_and_rest_users_coexist() -> None:
    """REST usernames are looked up when the name is not a static user."""
    authn = Authenticator.create(REALM, users={"alice": "pw"}, rest_secrets=[SECRET])
    username, _ = mint_rest_credentials(SECRET, NOW, 60, "bob")
    assert authn.lookup("alice", REALM, MD5, NOW).kind is CredentialKind.STATIC
    assert authn.lookup(username, REALM, MD5, NOW).kind is CredentialKind.REST


def test_precomputed_key_is_used_as_is() -> None:
    """§9.2.2 "H(A1)": a stored key serves the algorithm it was made with."""
    key = long_term_key("alice", REALM, "pw")
    authn = Authenticator.create(REALM, users={"alice": PrecomputedKey(MD5, key)})
    assert authn.lookup("alice", REALM, MD5, NOW).keys == (key,)


def test_precomputed_md5_key_cannot_serve_sha256() -> None:
    """A stored MD5 key cannot produce the SHA-256 key: 'unsupported-algorithm'."""
    key = long_term_key("alice", REALM, "pw")
    authn = Authenticator.create(REALM, users={"alice": PrecomputedKey(MD5, key)})
    found = authn.lookup("alice", REALM, SHA256, NOW)
    assert found.reason is LookupFailure.UNSUPPORTED_ALGORITHM
    assert found.kind is CredentialKind.STATIC and not found.ok


def test_password_values_are_accepted_like_strings() -> None:
    """The users mapping may hold Password values (from a users file) or plain strings."""
    assert Authenticator.create(REALM, users={"a": Password("pw")}).lookup(
        "a", REALM, MD5, NOW
    ) == static(a="pw").lookup("a", REALM, MD5, NOW)


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ({"bad\tname": "pw"}, "bad"),
        ({"alice": "soft\u00adhyphen"}, "password of user 'alice'"),
        ({"e\u0301": "a", "\u00e9": "b"}, "same user"),
        ({"x" * 509: "pw"}, "508"),
    ],
)
def test_invalid_users_are_refused_at_construction(users: dict[str, str], message: str) -> None:
    """Usernames and passwords must be valid OpaqueString, distinct and short enough."""
    with pytest.raises(ValueError, match=message):
        Authenticator.create(REALM, users=users)


def test_password_errors_do_not_contain_the_password() -> None:
    """Secrets never appear in error messages."""
    with pytest.raises(ValueError) as info:
        Authenticator.create(REALM, users={"alice": "hunter2\t"})
    assert "hunter2" not in str(info.value)


def test_invalid_realm_is_refused() -> None:
    """The realm must be valid OpaqueString (§14.9)."""
    with pytest.raises(ValueError):
        Authenticator.create("bad\nrealm")


# --- USERHASH (§14.4) ---------------------------------------------------------------------------


def test_userhash_finds_the_static_user(stun_vectors: dict[str, StunVector]) -> None:
    """§14.4, App. B.1: the server maps USERHASH back to its username."""
    vector = stun_vectors["rfc8489-b1-sha256-userhash-errata6268"]
    creds = vector.credentials
    authn = Authenticator.create(
        creds["realm"], users={creds["username"]: creds["password_after_processing"]}
    )
    found = authn.userhash_lookup(bytes.fromhex(vector.expected["userhash"]), creds["realm"])
    assert found is not None and found == creds["username"]
    key = authn.lookup(found, creds["realm"], SHA256, NOW).keys
    assert key == (bytes.fromhex(vector.expected["long_term_key_sha256"]),)


def test_userhash_of_unknown_user_or_other_realm_is_none() -> None:
    """Only this realm's static users can be found by USERHASH."""
    authn = static(alice="pw")
    assert authn.userhash_lookup(userhash("alice", REALM), REALM) == "alice"
    assert authn.userhash_lookup(userhash("alice", REALM), "other.example") is None
    assert authn.userhash_lookup(userhash("bob", REALM), REALM) is None
    assert authn.userhash_lookup(b"short", REALM) is None


# --- Revocation -----------------------------------------------------------------------------------


def test_revoked_static_user_is_refused_and_unrevoke_restores() -> None:
    """A revoked username is refused with reason 'revoked'; the original is unchanged."""
    authn = static(alice="pw")
    revoked = authn.revoke("alice")
    found = revoked.lookup("alice", REALM, MD5, NOW)
    assert found.reason is LookupFailure.REVOKED and found.kind is CredentialKind.STATIC
    assert authn.lookup("alice", REALM, MD5, NOW).ok
    assert revoked.unrevoke("alice").lookup("alice", REALM, MD5, NOW).ok


def test_revoked_rest_username_is_refused_with_its_metadata() -> None:
    """Revoking a REST username (the credential REST endpoint's revoke) refuses it."""
    username, _ = mint_rest_credentials(SECRET, NOW, 60, "room-7")
    authn = Authenticator.create(REALM, rest_secrets=[SECRET], revoked=[username])
    found = authn.lookup(username, REALM, MD5, NOW)
    assert found.reason is LookupFailure.REVOKED and not found.ok
    assert (found.kind, found.rest_id) == (CredentialKind.REST, "room-7")


def test_revoked_unknown_names_report_revoked() -> None:
    """A revoked name is reported as revoked whatever else is wrong with it."""
    plain = static().revoke("mallory")
    assert plain.lookup("mallory", REALM, MD5, NOW).reason is LookupFailure.REVOKED
    rest = Authenticator.create(REALM, rest_secrets=[SECRET]).revoke("mallory")
    assert rest.lookup("mallory", REALM, MD5, NOW).reason is LookupFailure.REVOKED


def test_prune_drops_only_expired_rest_usernames() -> None:
    """Revoked REST usernames that expired need no entry: they are refused as expired."""
    expired, _ = mint_rest_credentials(SECRET, NOW - 100, 10)
    current, _ = mint_rest_credentials(SECRET, NOW, 10)
    authn = Authenticator.create(
        REALM,
        users={"1600000000": "pw"},
        rest_secrets=[SECRET],
        revoked=[expired, current, "mallory", "1600000000"],
    )
    assert authn.prune_revoked(NOW).revoked == {current, "mallory", "1600000000"}


# --- Secrets stay out of repr ---------------------------------------------------------------------


def test_repr_shows_no_secret() -> None:
    """Passwords, keys and REST secrets never appear in repr."""
    key = long_term_key("bob", REALM, "pw")
    authn = Authenticator.create(
        REALM,
        users={"alice": "hunter2", "bob": PrecomputedKey(MD5, key)},
        rest_secrets=[b"topsecret"],
    )
    found = authn.lookup("alice", REALM, MD5, NOW)
    texts = [repr(authn), repr(found), repr(Password("hunter2")), repr(PrecomputedKey(MD5, key))]
    for text in texts:
        assert "hunter2" not in text and "topsecret" not in text
        assert key.hex() not in text and repr(key) not in text
        assert repr(found.keys[0]) not in text
    assert "<1 keys>" in repr(found) and "<1 secrets>" in repr(authn)


def test_precomputed_key_length_must_match_its_algorithm() -> None:
    """§9.2.2: an MD5 key is 16 bytes; §18.5.1.2: a SHA-256 key is 32."""
    with pytest.raises(ValueError, match="16"):
        PrecomputedKey(MD5, bytes(32))
    assert PrecomputedKey(2, bytes(32)).algorithm is SHA256


def test_module_exports_resolve() -> None:
    """Everything in __all__ exists."""
    for name in auth.credentials.__all__:
        assert hasattr(auth.credentials, name)
