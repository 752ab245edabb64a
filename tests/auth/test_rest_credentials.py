"""REST ephemeral credentials (draft-uberti-behave-turn-rest-00, coturn use-auth-secret)."""

from __future__ import annotations

import base64
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth.credentials import (
    MAX_EXPIRY_DIGITS,
    Authenticator,
    CredentialKind,
    LookupFailure,
    RestUsername,
    mint_rest_credentials,
    parse_rest_username,
    rest_password,
)
from stun.keys import PasswordAlgorithm, long_term_key

REALM = "turn.example.org"
NOW = 1_700_000_000.0
OLD_SECRET = b"old secret, being retired"
NEW_SECRET = b"new secret, minted with today"


def authenticator(*secrets: bytes | str) -> Authenticator:
    return Authenticator.create(REALM, rest_secrets=secrets or (NEW_SECRET,))


# --- Password and username shape ------------------------------------------------------------------


def test_password_is_base64_of_hmac_sha1_of_username() -> None:
    """draft-uberti §2.2: password = base64(HMAC-SHA1(secret, username))."""
    username = "1700086400:alice"
    expected = base64.b64encode(hmac.digest(NEW_SECRET, username.encode(), "sha1")).decode()
    assert rest_password(NEW_SECRET, username) == expected


def test_text_secret_is_its_utf8_bytes() -> None:
    """A secret given as text (a config value) is used as its UTF-8 bytes."""
    assert rest_password("s\u00e9cret", "1:a") == rest_password("s\u00e9cret".encode(), "1:a")


def test_empty_secret_is_refused() -> None:
    """An empty HMAC key would make every password public."""
    with pytest.raises(ValueError, match="empty"):
        rest_password(b"", "1:a")
    with pytest.raises(ValueError, match="empty"):
        Authenticator.create(REALM, rest_secrets=[""])


def test_draft_uberti_example_username_shape() -> None:
    """draft-uberti §2.2: the username is "<expiry timestamp>:<username parameter>"."""
    assert parse_rest_username("12334939:mbzrxpgjys") == RestUsername(12334939, "mbzrxpgjys")


def test_minted_username_is_expiry_colon_id() -> None:
    """The expiry is now + ttl in whole Unix seconds, followed by the id."""
    username, password = mint_rest_credentials(NEW_SECRET, NOW + 0.7, 3600, "alice")
    assert username == "1700003600:alice"
    assert password == rest_password(NEW_SECRET, username)


def test_minted_username_without_id_is_the_bare_expiry() -> None:
    """With no username parameter the draft's username is the timestamp alone."""
    username, _ = mint_rest_credentials(NEW_SECRET, NOW, 60)
    assert username == "1700000060"
    assert parse_rest_username(username) == RestUsername(1_700_000_060, "")


def test_id_may_contain_colons() -> None:
    """Only the first colon separates the expiry; the id keeps the rest."""
    username, _ = mint_rest_credentials(NEW_SECRET, NOW, 60, "tenant:room:42")
    assert parse_rest_username(username) == RestUsername(1_700_000_060, "tenant:room:42")


@pytest.mark.parametrize("ttl", [0, -5])
def test_ttl_must_be_positive(ttl: int) -> None:
    """A credential that is born expired is a caller bug."""
    with pytest.raises(ValueError, match="ttl"):
        mint_rest_credentials(NEW_SECRET, NOW, ttl, "a")


@pytest.mark.parametrize("ident", ["tab\there", "e\u0301", "\u00a0x"])
def test_id_must_already_be_opaquestring(ident: str) -> None:
    """RFC 8489 §14.3: USERNAME MUST be OpaqueString-prepared; the client sends it verbatim."""
    with pytest.raises(ValueError):
        mint_rest_credentials(NEW_SECRET, NOW, 60, ident)


def test_username_must_fit_the_username_attribute() -> None:
    """RFC 8489 §14.3: USERNAME is fewer than 509 bytes."""
    with pytest.raises(ValueError, match="508 bytes"):
        mint_rest_credentials(NEW_SECRET, NOW, 60, "x" * 500)


@pytest.mark.parametrize(
    ("username", "parsed"),
    [
        ("1700000000:alice", RestUsername(1_700_000_000, "alice")),
        ("1700000000", RestUsername(1_700_000_000, "")),
        ("1700000000:", RestUsername(1_700_000_000, "")),
        ("001700000000:a", RestUsername(1_700_000_000, "a")),  # leading zeros
        ("9" * MAX_EXPIRY_DIGITS, RestUsername(int("9" * MAX_EXPIRY_DIGITS), "")),
    ],
)
def test_rest_usernames_parse(username: str, parsed: RestUsername) -> None:
    """`<expiry>:<id>` and a bare `<expiry>` are REST usernames."""
    assert parse_rest_username(username) == parsed


@pytest.mark.parametrize(
    "username",
    [
        "",
        ":alice",
        "alice",
        "alice:1700000000",  # the legacy "user:timestamp" order is not accepted
        "+1700000000:a",
        "-1:a",
        " 1700000000:a",
        "1_700_000_000:a",  # int() would accept it
        "\u0661\u0662:a",  # non-ASCII digits: isdigit() is true, int() would accept them
        "\u00b2:a",
        "9" * (MAX_EXPIRY_DIGITS + 1),
    ],
)
def test_malformed_rest_usernames_do_not_parse(username: str) -> None:
    """The expiry is 1 to MAX_EXPIRY_DIGITS ASCII digits, before the first colon."""
    assert parse_rest_username(username) is None


@given(st.text())
def test_parse_rest_username_never_raises(username: str) -> None:
    """Remote input: any USERNAME parses or is refused, without an exception."""
    parsed = parse_rest_username(username)
    assert parsed is None or parsed.expiry >= 0


# --- Lookup through the Authenticator -------------------------------------------------------------


@pytest.mark.parametrize("algorithm", list(PasswordAlgorithm))
def test_valid_credentials_give_the_key_of_their_password(algorithm: PasswordAlgorithm) -> None:
    """RFC 8489 §9.2.2: the key is derived from the REST password like any password."""
    username, password = mint_rest_credentials(NEW_SECRET, NOW, 600, "alice")
    found = authenticator().lookup(username, REALM, algorithm, NOW)
    assert found.keys == (long_term_key(username, REALM, password, algorithm),)
    assert found.reason is None and found.ok
    assert (found.kind, found.rest_id, found.expires) == (CredentialKind.REST, "alice", NOW + 600)


def test_rotation_offers_one_candidate_key_per_secret() -> None:
    """During rotation credentials minted under either secret validate."""
    auth = authenticator(NEW_SECRET, OLD_SECRET)
    for secret in (NEW_SECRET, OLD_SECRET):
        username, password = mint_rest_credentials(secret, NOW, 600, "bob")
        found = auth.lookup(username, REALM, PasswordAlgorithm.MD5, NOW)
        assert len(found.keys) == 2
        assert long_term_key(username, REALM, password) in found.keys


def test_credentials_of_a_retired_secret_have_no_matching_key() -> None:
    """Once a secret leaves the list its credentials stop validating."""
    username, password = mint_rest_credentials(OLD_SECRET, NOW, 600, "bob")
    found = authenticator(NEW_SECRET).lookup(username, REALM, PasswordAlgorithm.MD5, NOW)
    assert long_term_key(username, REALM, password) not in found.keys


def test_expired_credentials_give_no_key() -> None:
    """A credential whose expiry is before now is refused with reason 'expired'."""
    username, _ = mint_rest_credentials(NEW_SECRET, NOW, 600, "carol")
    found = authenticator().lookup(username, REALM, PasswordAlgorithm.MD5, NOW + 601)
    assert found.keys == () and not found.ok
    assert found.reason is LookupFailure.EXPIRED and str(found.reason) == "expired"
    assert (found.kind, found.rest_id) == (CredentialKind.REST, "carol")


def test_credentials_are_valid_up_to_their_expiry_second() -> None:
    """Expired means expiry < now: at the expiry second itself the credential still works."""
    username, _ = mint_rest_credentials(NEW_SECRET, NOW, 600)
    assert authenticator().lookup(username, REALM, PasswordAlgorithm.MD5, NOW + 600).ok


def test_malformed_username_gives_no_key() -> None:
    """With REST enabled, a username that is neither static nor REST is 'malformed-username'."""
    found = authenticator().lookup("alice", REALM, PasswordAlgorithm.MD5, NOW)
    assert found == authenticator().lookup("alice", REALM, PasswordAlgorithm.MD5, NOW)
    assert found.reason is LookupFailure.MALFORMED_USERNAME
    assert found.keys == () and found.kind is None
