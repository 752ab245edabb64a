"""Stateless nonces and the nonce cookie (RFC 8489 §9.2, §9.2.1, §9.2.4, §18.1)."""

from __future__ import annotations

import base64
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth.nonce import (
    CLOCK_SKEW,
    DEFAULT_LIFETIME,
    NONCE_COOKIE,
    NONCE_LENGTH,
    NonceCheck,
    NonceManager,
    SecurityFeature,
    features_of,
    nonce_cookie,
)
from tests.conftest import StunVector

KEY = bytes(range(32))
CLIENT = b"udp|192.0.2.1|50000"
OTHER_CLIENT = b"udp|192.0.2.1|50001"
NOW = 1_700_000_000.0
BASE64_ALPHABET = frozenset(string.ascii_letters + string.digits + "+/")
ALL = frozenset(SecurityFeature)


def manager(features: frozenset[SecurityFeature] = ALL, key: bytes = KEY) -> NonceManager:
    return NonceManager(key, features=features)


def flip_body_byte(nonce: str, index: int, mask: int) -> str:
    """Re-encode ``nonce`` with one byte of its sealed body XORed with ``mask``."""
    sealed = bytearray(base64.b64decode(nonce[13:]))
    sealed[index] ^= mask
    return nonce[:13] + base64.b64encode(bytes(sealed)).decode()


# --- Round trip and lifetime (§9.2, §9.2.4) -------------------------------------------------------


def test_issued_nonce_is_valid_for_its_client() -> None:
    """A nonce this cluster issued validates for the client it was issued to."""
    nonces = manager()
    assert nonces.check(nonces.issue(CLIENT, NOW), CLIENT, NOW) is NonceCheck.VALID


def test_nonce_validates_on_another_node_with_the_same_key() -> None:
    """Stateless: a retry landing on another node (same cluster key) still validates."""
    nonce = manager().issue(CLIENT, NOW)
    assert manager().check(nonce, CLIENT, NOW + 1) is NonceCheck.VALID


def test_nonce_is_stale_once_lifetime_has_passed() -> None:
    """§9.2.4: a nonce no longer valid is STALE (the core answers 438), not INVALID."""
    nonces = manager()
    nonce = nonces.issue(CLIENT, NOW)
    assert nonces.check(nonce, CLIENT, NOW + DEFAULT_LIFETIME - 0.001) is NonceCheck.VALID
    assert nonces.check(nonce, CLIENT, NOW + DEFAULT_LIFETIME) is NonceCheck.STALE
    assert nonces.check(nonce, CLIENT, NOW + 10 * DEFAULT_LIFETIME) is NonceCheck.STALE


def test_expiry_is_rounded_up_so_a_nonce_lives_at_least_its_lifetime() -> None:
    """Whole-second expiry: a nonce lives its lifetime, plus less than a second."""
    nonces = NonceManager(KEY, features=ALL, lifetime=10)
    nonce = nonces.issue(CLIENT, NOW + 0.1)
    assert nonces.check(nonce, CLIENT, NOW + 10.1) is NonceCheck.VALID
    assert nonces.check(nonce, CLIENT, NOW + 10.999) is NonceCheck.VALID
    assert nonces.check(nonce, CLIENT, NOW + 11) is NonceCheck.STALE


def test_expiry_slightly_ahead_of_the_clock_is_tolerated() -> None:
    """A node whose clock runs a little ahead issues nonces the others accept."""
    nonce = manager().issue(CLIENT, NOW + CLOCK_SKEW - 1)
    assert manager().check(nonce, CLIENT, NOW) is NonceCheck.VALID


def test_expiry_too_far_in_the_future_is_invalid() -> None:
    """No node issues a nonce expiring beyond now + lifetime + skew: such a nonce is INVALID."""
    nonce = manager().issue(CLIENT, NOW + CLOCK_SKEW + 1)
    assert manager().check(nonce, CLIENT, NOW) is NonceCheck.INVALID


def test_expiry_beyond_uint32_cannot_be_issued() -> None:
    """The expiry field is 32-bit Unix seconds; later times raise ValueError."""
    with pytest.raises(ValueError, match="does not fit"):
        manager().issue(CLIENT, 2.0**32)


# --- Binding and forgery (§9.2.1, §9.2.4) ---------------------------------------------------------


def test_nonce_bound_to_another_client_is_invalid() -> None:
    """The nonce is bound to the client's transport address: elsewhere it is INVALID."""
    nonces = manager()
    assert nonces.check(nonces.issue(CLIENT, NOW), OTHER_CLIENT, NOW) is NonceCheck.INVALID


def test_distinct_clients_never_share_a_nonce() -> None:
    """§9.2.4: the server MUST NOT choose the same NONCE for different source addresses."""
    nonces = manager()
    assert nonces.issue(CLIENT, NOW) != nonces.issue(OTHER_CLIENT, NOW)


def test_nonce_from_another_key_is_invalid() -> None:
    """A nonce sealed under another cluster key is INVALID."""
    nonce = manager(key=b"\xff" * 32).issue(CLIENT, NOW)
    assert manager().check(nonce, CLIENT, NOW) is NonceCheck.INVALID


def test_every_single_character_change_is_invalid() -> None:
    """Any tampering with any character, feature bits included, makes the nonce INVALID."""
    nonces = manager()
    nonce = nonces.issue(CLIENT, NOW)
    for index in range(len(NONCE_COOKIE), len(nonce)):
        replacement = "A" if nonce[index] != "A" else "B"
        tampered = nonce[:index] + replacement + nonce[index + 1 :]
        assert nonces.check(tampered, CLIENT, NOW) is NonceCheck.INVALID, index


def test_cleared_feature_bits_are_detected() -> None:
    """§9.2.1 bid-down: removing a feature bit from the cookie invalidates the nonce."""
    nonces = manager()
    nonce = nonces.issue(CLIENT, NOW)
    downgraded = nonce_cookie(frozenset()) + nonce[13:]
    assert nonces.check(downgraded, CLIENT, NOW) is NonceCheck.INVALID


def test_expired_nonce_with_forged_tag_is_invalid_not_stale() -> None:
    """STALE proves the nonce is ours; a forged expired nonce is INVALID."""
    nonces = manager()
    forged = flip_body_byte(nonces.issue(CLIENT, NOW), 10, 0x01)
    assert nonces.check(forged, CLIENT, NOW + 2 * DEFAULT_LIFETIME) is NonceCheck.INVALID


def test_unknown_version_is_invalid() -> None:
    """Only version 1 nonces are understood."""
    nonces = manager()
    future = flip_body_byte(nonces.issue(CLIENT, NOW), 0, 0x03)  # version 1 -> 2
    assert nonces.check(future, CLIENT, NOW) is NonceCheck.INVALID


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x" * NONCE_LENGTH,  # right length, no cookie
        "obMatJos2AAAD",  # cookie only
        "f//499k954d6OL34oL9FSTvy64sA",  # an RFC 5389-style nonce
        "obMatJos2AA==" + "A" * 28,  # padding inside the feature characters
        "obMatJos2AAAD" + "A" * 26 + "==",  # padding inside the body
        "obMatJos2AAAD" + "A" * 27 + "!",  # not base64
        "obMatJos2AAAD" + "A" * 27 + "\u00e9",  # not ASCII
        "obMatJos2AA\u00e9D" + "A" * 28,
    ],
)
def test_malformed_nonce_is_invalid(text: str) -> None:
    """Anything that is not exactly a nonce this module issues is INVALID."""
    assert manager().check(text, CLIENT, NOW) is NonceCheck.INVALID


@given(st.text(max_size=80), st.binary(max_size=40), st.floats(min_value=0, max_value=2**32))
def test_check_never_raises(text: str, client: bytes, now: float) -> None:
    """Remote input: check() answers a NonceCheck for every string, never an exception."""
    assert isinstance(manager().check(text, client, now), NonceCheck)


@given(st.text(alphabet=sorted(BASE64_ALPHABET), min_size=28, max_size=28))
def test_guessed_bodies_are_invalid(body: str) -> None:
    """A well-formed but guessed nonce does not validate."""
    assert manager().check(nonce_cookie(ALL) + body, CLIENT, NOW) is NonceCheck.INVALID


# --- Format (§9.2, §14.10) ------------------------------------------------------------------------


@given(st.binary(max_size=64), st.floats(min_value=0, max_value=2**32 - 10**4))
def test_nonce_uses_only_legal_qdtext_characters(client: bytes, now: float) -> None:
    """§14.10: NONCE is qdtext (no quote, no backslash), fewer than 128 characters; ours < 64."""
    nonce = manager().issue(client, now)
    assert len(nonce) == NONCE_LENGTH < 64
    assert set(nonce[len(NONCE_COOKIE) :]) <= BASE64_ALPHABET
    assert '"' not in nonce and "\\" not in nonce


@pytest.mark.parametrize(
    ("features", "cookie"),
    [
        (frozenset(), "obMatJos2AAAA"),
        (frozenset({SecurityFeature.PASSWORD_ALGORITHMS}), "obMatJos2AAAB"),
        (frozenset({SecurityFeature.USERNAME_ANONYMITY}), "obMatJos2AAAC"),
        (ALL, "obMatJos2AAAD"),
    ],
)
def test_nonce_starts_with_the_cookie_of_its_features(
    features: frozenset[SecurityFeature], cookie: str
) -> None:
    """§9.2: "obMatJos2" + base64 of the 24-bit set; bit 0 is the rightmost (erratum 6290)."""
    assert nonce_cookie(features) == cookie
    nonce = manager(features).issue(CLIENT, NOW)
    assert nonce.startswith(cookie)
    assert features_of(nonce) == features


def test_rfc8489_b1_cookie_announces_username_anonymity(
    stun_vectors: dict[str, StunVector],
) -> None:
    """App. B.1's cookie (with USERHASH in the request) is bit 1, Username anonymity."""
    vector = stun_vectors["rfc8489-b1-sha256-userhash-errata6268"]
    nonce = vector.credentials["nonce"]
    assert nonce.startswith(vector.expected["nonce_cookie"])
    assert nonce_cookie({SecurityFeature.USERNAME_ANONYMITY}) == (
        NONCE_COOKIE + vector.expected["security_feature_bits_b64"]
    )
    assert features_of(nonce) == {SecurityFeature.USERNAME_ANONYMITY}


@pytest.mark.parametrize(
    ("text", "features"),
    [
        ("f//499k954d6OL34oL9FSTvy64sA", frozenset()),  # no cookie: an RFC 5389 server
        ("obMatJos2AA", frozenset()),  # truncated cookie
        ("obMatJos2AA=A", frozenset()),  # not base64
        ("obMatJos2AA==", frozenset()),  # padding: fewer than 24 bits
        ("obMatJos2\u00e9\u00e9\u00e9\u00e9", frozenset()),  # not ASCII
        ("obMatJos2////rest", ALL),  # unassigned bits are ignored
    ],
)
def test_features_of_parses_only_well_formed_cookies(
    text: str, features: frozenset[SecurityFeature]
) -> None:
    """§9.2.5: a client tests whether NONCE starts with the nonce cookie; so does the core."""
    assert features_of(text) == features


# --- Construction ---------------------------------------------------------------------------------


def test_short_key_is_refused() -> None:
    """A cluster key under 128 bits is refused."""
    with pytest.raises(ValueError, match="at least"):
        NonceManager(b"short", features=ALL)


@pytest.mark.parametrize("lifetime", [0, -1, float("nan"), float("inf")])
def test_lifetime_must_be_positive_and_finite(lifetime: float) -> None:
    """A nonce lifetime is a positive number of seconds."""
    with pytest.raises(ValueError, match="lifetime"):
        NonceManager(KEY, features=ALL, lifetime=lifetime)


def test_manager_exposes_features_and_lifetime() -> None:
    """The core reads what it announces (to add PASSWORD-ALGORITHMS when the bit is set)."""
    nonces = NonceManager(KEY, features=[SecurityFeature.PASSWORD_ALGORITHMS], lifetime=30)
    assert nonces.features == {SecurityFeature.PASSWORD_ALGORITHMS}
    assert nonces.lifetime == 30.0


def test_repr_does_not_show_the_key() -> None:
    """Secrets never appear in repr."""
    text = repr(NonceManager(b"\x41" * 32, features=ALL))
    assert "AAAA" not in text and "<secret>" in text
