"""Long-term keys, USERHASH and OpaqueString (RFC 8489 §9.2.2, §14.4, §18.5; RFC 8265 §4.2)."""

from __future__ import annotations

import hashlib
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stun.keys import (
    KEY_LENGTHS,
    PasswordAlgorithm,
    long_term_key,
    opaque_string,
    unquote,
    userhash,
)
from tests.conftest import StunVector

# --- Known answers ------------------------------------------------------------------------------


def test_rfc5769_s2_4_md5_key_matches_vector(stun_vectors: dict[str, StunVector]) -> None:
    """The RFC 5769 §2.4 long-term key is MD5(username:realm:processed password)."""
    vector = stun_vectors["rfc5769-sample-request-long-term"]
    creds = vector.credentials
    key = long_term_key(creds["username"], creds["realm"], creds["password_after_saslprep"])
    assert key.hex() == vector.expected["long_term_key_md5"]


def test_rfc8489_b1_sha256_key_matches_vector(stun_vectors: dict[str, StunVector]) -> None:
    """RFC 8489 App. B.1 (errata 6268): the SHA-256 key of §18.5.1.2."""
    vector = stun_vectors["rfc8489-b1-sha256-userhash-errata6268"]
    creds = vector.credentials
    key = long_term_key(
        creds["username"],
        creds["realm"],
        creds["password_after_processing"],
        PasswordAlgorithm.SHA256,
    )
    assert key.hex() == vector.expected["long_term_key_sha256"]


def test_rfc8489_b1_userhash_matches_vector(stun_vectors: dict[str, StunVector]) -> None:
    """§14.4: USERHASH = SHA-256(OpaqueString(username) ":" OpaqueString(realm))."""
    vector = stun_vectors["rfc8489-b1-sha256-userhash-errata6268"]
    creds = vector.credentials
    assert userhash(creds["username"], creds["realm"]).hex() == vector.expected["userhash"]


def test_rfc8489_b1_raw_password_is_not_opaquestring(stun_vectors: dict[str, StunVector]) -> None:
    """The vectors' "TheMatrIX" is SASLprep output: OpaqueString disallows U+00AD."""
    raw = stun_vectors["rfc8489-b1-sha256-userhash-errata6268"].credentials["password_raw"]
    with pytest.raises(ValueError, match="disallowed"):
        opaque_string(raw)
    # Without the soft hyphen, the compatibility characters survive (NFC, not NFKC).
    without_soft_hyphen = raw.replace("\u00ad", "")
    assert opaque_string(without_soft_hyphen) == without_soft_hyphen


# --- §9.2.2 / §18.5.1 key form ------------------------------------------------------------------


def test_s9_2_2_md5_key_is_md5_of_user_realm_pass() -> None:
    """§9.2.2: key = MD5(username ":" realm ":" password); the same for RFC 5389 ASCII clients."""
    assert long_term_key("user", "realm", "pass") == hashlib.md5(b"user:realm:pass").digest()


def test_s18_5_1_2_sha256_key_is_sha256_of_same_string() -> None:
    """§18.5.1.2: the SHA-256 algorithm hashes the same string."""
    key = long_term_key("user", "realm", "pass", PasswordAlgorithm.SHA256)
    assert key == hashlib.sha256(b"user:realm:pass").digest()


@pytest.mark.parametrize("algorithm", list(PasswordAlgorithm))
def test_key_length_is_16_for_md5_and_32_for_sha256(algorithm: PasswordAlgorithm) -> None:
    """§9.2.2: the MD5 key is 16 bytes; §18.5.1.2: the SHA-256 key is 32 bytes."""
    assert len(long_term_key("u", "r", "p", algorithm)) == KEY_LENGTHS[algorithm]
    assert KEY_LENGTHS == {PasswordAlgorithm.MD5: 16, PasswordAlgorithm.SHA256: 32}


def test_algorithm_may_be_given_as_its_wire_number() -> None:
    """PASSWORD-ALGORITHM numbers (§18.5) select the algorithm."""
    assert long_term_key("u", "r", "p", 2) == long_term_key("u", "r", "p", PasswordAlgorithm.SHA256)  # type: ignore[arg-type]


def test_unknown_algorithm_is_value_error() -> None:
    """An algorithm outside the §18.5 registry has no key."""
    with pytest.raises(ValueError):
        long_term_key("u", "r", "p", 3)  # type: ignore[arg-type]


def test_realm_and_password_are_prepared_username_is_not() -> None:
    """§9.2.2: OpaqueString(realm), OpaqueString(password); the username is used as received."""
    decomposed = "e\u0301"
    composed = unicodedata.normalize("NFC", decomposed)
    key = long_term_key(decomposed, decomposed, decomposed + "\u00a0")
    expected = f"{decomposed}:{composed}:{composed} ".encode()
    assert key == hashlib.md5(expected).digest()


def test_trailing_nulls_are_removed_from_all_three() -> None:
    """§9.2.2: username, realm and password lose their trailing nulls."""
    assert long_term_key("user\0", "realm\0\0", "pass\0") == long_term_key("user", "realm", "pass")


def test_enclosing_quotes_are_removed_from_username_and_realm_only() -> None:
    """§9.2.2: quotes are removed from username and realm, not from the password."""
    assert long_term_key('"user"', '"realm"', "pass") == long_term_key("user", "realm", "pass")
    assert long_term_key("u", "r", '"p"') == hashlib.md5(b'u:r:"p"').digest()


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [('"a"', "a"), ('"a"\0', "a"), ('"', '"'), ('"a', '"a'), ('""', ""), ("a", "a")],
)
def test_unquote_removes_one_enclosing_pair_after_nulls(given_value: str, expected: str) -> None:
    """§9.2.2: trailing nulls, then the enclosing quotes, are removed."""
    assert unquote(given_value) == expected


def test_invalid_realm_or_password_is_value_error() -> None:
    """The realm and password MUST be valid OpaqueString (§9.2.2)."""
    with pytest.raises(ValueError):
        long_term_key("u", "bad\trealm", "p")
    with pytest.raises(ValueError):
        long_term_key("u", "r", "")


def test_userhash_prepares_username_and_realm() -> None:
    """§14.4: both inputs go through OpaqueString before hashing."""
    assert userhash("e\u0301", "r\u3000x") == hashlib.sha256("é:r x".encode()).digest()


# --- RFC 8265 §4.2 OpaqueString -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        ("TheMatrIX", "TheMatrIX"),  # ASCII is unchanged (RFC 8264 §9.11 ASCII7)
        ("pass word", "pass word"),  # ASCII space is kept (Spaces are FREE_PVAL)
        ("a\u00a0b\u2000c\u3000d", "a b c d"),  # §4.2.1: non-ASCII spaces become U+0020
        ("e\u0301", "\u00e9"),  # §4.2.1: NFC
        ("\uff21", "\uff21"),  # §4.2.1: no width mapping (fullwidth A stays)
        ("AbC", "AbC"),  # §4.2.1: no case mapping
        ("\u00aa\u2168", "\u00aa\u2168"),  # HasCompat code points are FREE_PVAL, kept
        ("\u00df\u03c2", "\u00df\u03c2"),  # RFC 5892 exceptions: PVALID
        ("\u01c5", "\u01c5"),  # titlecase letter
        ("\u20ac\u00bf\U0001f600", "\u20ac\u00bf\U0001f600"),  # Sc, Po, So
        ("\u16a0\u0b95", "\u16a0\u0b95"),  # Lo letters without compatibility forms
        ("\u1680", " "),  # OGHAM SPACE MARK: a non-ASCII space
    ],
)
def test_opaquestring_maps_and_keeps(given_value: str, expected: str) -> None:
    """RFC 8265 §4.2: the profile's mapping rules and the FreeformClass allow these."""
    assert opaque_string(given_value) == expected


@pytest.mark.parametrize(
    "given_value",
    [
        "",  # §4.2.2: the empty string
        "tab\there",  # Cc (RFC 8264 §9.12 Controls)
        "nul\0",
        "del\x7f",
        "next\x85line",
        "soft\u00adhyphen",  # Default_Ignorable_Code_Point (§9.13)
        "zero\u200bwidth",
        "bom\ufeff",
        "tag\U000e0041",
        "\u0378",  # unassigned
        "\ufdd0",  # noncharacter
        "\U0010fffe",
        "\ue000",  # Co private use
        "\ud800",  # Cs lone surrogate
        "line\u2028sep",  # Zl
        "\u1100",  # OldHangulJamo (§9.9)
        "\ua960",
        "\u0640",  # RFC 5892 exception: DISALLOWED
        "\u3031",
        "\u0600",  # Cf without default-ignorable property: step 15
    ],
)
def test_opaquestring_rejects_disallowed(given_value: str) -> None:
    """RFC 8264 §8: code points outside the FreeformClass are refused with ValueError."""
    with pytest.raises(ValueError, match="OpaqueString"):
        opaque_string(given_value)


@pytest.mark.parametrize(
    "given_value",
    [
        "\u0915\u094d\u200d",  # A.2: ZWJ after a virama
        "\u0915\u094d\u200c",  # A.1: ZWNJ after a virama
        "l\u00b7l",  # A.3: MIDDLE DOT between two l
        "\u0375\u03b1",  # A.4: KERAIA before Greek
        "\u05d0\u05f3",  # A.5: GERESH after Hebrew
        "\u05d0\u05f4",  # A.6: GERSHAYIM after Hebrew
        "\u30ab\u30fb",  # A.7: KATAKANA MIDDLE DOT with Katakana
        "\u4e00\u30fb",  # A.7: ... or Han
        "\u0660\u0661",  # A.8: Arabic-Indic digits alone
        "\u06f1\u06f2",  # A.9: extended Arabic-Indic digits alone
    ],
)
def test_opaquestring_allows_contextual_code_points_in_context(given_value: str) -> None:
    """RFC 5892 Appendix A: CONTEXTJ/CONTEXTO code points pass when their rule holds."""
    assert opaque_string(given_value) == given_value


@pytest.mark.parametrize(
    "given_value",
    [
        "\u200d",  # ZWJ with nothing before
        "a\u200cb",  # ZWNJ after a non-virama (joining-type rule not implemented)
        "a\u00b7b",
        "\u00b7l",
        "\u0375a",
        "\u0375",
        "a\u05f3",
        "\u05f4",
        "a\u30fbb",
        "\u30fb",
        "\u0660\u06f1",  # A.8: mixed digit sets
        "\u06f1\u0660",  # A.9
    ],
)
def test_opaquestring_rejects_contextual_code_points_out_of_context(given_value: str) -> None:
    """RFC 5892 Appendix A: a contextual code point whose rule fails is refused."""
    with pytest.raises(ValueError, match="context"):
        opaque_string(given_value)


def test_opaquestring_error_does_not_echo_the_string() -> None:
    """The input may be a password: errors name a position and category only."""
    with pytest.raises(ValueError) as info:
        opaque_string("hunter2\t")
    assert "hunter2" not in str(info.value)
    assert "position 7" in str(info.value)


@given(st.text())
def test_opaquestring_is_idempotent_or_raises_value_error(value: str) -> None:
    """Enforcement either refuses with ValueError or yields a string that is its own image."""
    try:
        prepared = opaque_string(value)
    except ValueError:
        return
    assert opaque_string(prepared) == prepared
