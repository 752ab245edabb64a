"""Static users files: ``username:password`` and coturn-style ``username:0x<key>`` lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth.credentials import (
    Authenticator,
    Password,
    PrecomputedKey,
    parse_credential,
    parse_users_file,
)
from auth.users_file import load_users_file
from stun.keys import PasswordAlgorithm, long_term_key

REALM = "turn.example.org"
MD5, SHA256 = PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256


def test_lines_comments_blank_lines_and_whitespace() -> None:
    """One user per line; '#' comments and blank lines are skipped; whitespace is trimmed."""
    text = "\ufeff# users\n\nalice:wonderland\r\n  bob : builder  \n\t# indented comment\n"
    assert parse_users_file(text) == {"alice": Password("wonderland"), "bob": Password("builder")}


def test_password_may_contain_colons_and_hashes() -> None:
    """The username ends at the first colon; the rest of the line is the password."""
    assert parse_users_file("carol:pa:ss#word") == {"carol": Password("pa:ss#word")}


def test_usernames_are_returned_in_opaquestring_form() -> None:
    """§14.3: clients send the prepared username, so the file's names are prepared."""
    assert parse_users_file("e\u0301:pw") == {"\u00e9": Password("pw")}


def test_empty_file_has_no_users() -> None:
    """An empty or comment-only file defines no user."""
    assert parse_users_file("") == {}
    assert parse_users_file("# nobody\n") == {}


@pytest.mark.parametrize(("algorithm", "prefix"), [(MD5, "0x"), (SHA256, "0x"), (MD5, "0X")])
def test_hex_key_is_a_precomputed_key(algorithm: PasswordAlgorithm, prefix: str) -> None:
    """coturn's turnadmin -k output (0x + 32 hex digits, an MD5 key) stands for the password."""
    key = long_term_key("dave", REALM, "secret", algorithm)
    users = parse_users_file(f"dave:{prefix}{key.hex().upper()}")
    assert users == {"dave": PrecomputedKey(algorithm, key)}


def test_precomputed_key_authenticates_like_the_password() -> None:
    """A key line gives the same key the password would have given."""
    key = long_term_key("dave", REALM, "secret")
    authn = Authenticator.create(REALM, users=parse_users_file(f"dave:0x{key.hex()}"))
    assert authn.lookup("dave", REALM, MD5, 0.0).keys == (key,)


@pytest.mark.parametrize("text", ["0x", "0xzz", "0x12g4", "0", "x0"])
def test_values_that_are_not_hex_keys_are_passwords(text: str) -> None:
    """Only 0x followed by hex digits is read as a key."""
    assert parse_credential(text) == Password(text)


@pytest.mark.parametrize("digits", [1, 31, 33, 48, 63, 65])
def test_hex_key_of_the_wrong_length_is_refused(digits: int) -> None:
    """A hex key is 32 (MD5) or 64 (SHA-256) digits: anything else is a typo, not a password."""
    with pytest.raises(ValueError, match=r"line 2: .*32 \(MD5\) or 64"):
        parse_users_file("alice:pw\nbob:0x" + "a" * digits)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice", "line 1: expected username:password"),
        ("alice:pw\n:pw", "line 2: expected username:password"),
        ("\n\nalice:", "line 3: expected username:password"),
        ("alice:   ", "line 1: expected username:password"),
        ("al\x01ice:pw", "line 1: username"),
        ("alice:pw\nbob:x\nalice:y", "line 3: user 'alice' already defined on line 1"),
        ("\u00e9:pw\ne\u0301:y", "line 2: user '\u00e9' already defined on line 1"),
        ("x" * 509 + ":pw", "line 1: username .*508 bytes"),
    ],
)
def test_bad_lines_name_their_line_number(text: str, message: str) -> None:
    """Every malformed line is a ValueError naming the line."""
    with pytest.raises(ValueError, match=message):
        parse_users_file(text)


def test_bad_password_is_refused_without_echoing_it() -> None:
    """Passwords must be OpaqueString (§9.2.2); the error names the line and user only."""
    with pytest.raises(ValueError, match="line 1: secret of user 'alice'") as info:
        parse_users_file("alice:hunter2\u00ad")
    assert "hunter2" not in str(info.value)


@given(st.text())
def test_parse_users_file_parses_or_raises_value_error(text: str) -> None:
    """Any text gives users or a ValueError, and every parsed name is usable."""
    try:
        users = parse_users_file(text)
    except ValueError:
        return
    Authenticator.create(REALM, users=users)


# --- The I/O helper -----------------------------------------------------------------------------


def test_load_users_file_reads_utf8(tmp_path: Path) -> None:
    """load_users_file reads the file as UTF-8 and parses it."""
    path = tmp_path / "users"
    path.write_text("\u00e9lodie:mot de passe\n", encoding="utf-8")
    assert load_users_file(path) == {"\u00e9lodie": Password("mot de passe")}
    assert load_users_file(str(path)) == {"\u00e9lodie": Password("mot de passe")}


def test_load_users_file_errors_name_the_file(tmp_path: Path) -> None:
    """A bad line or a non-UTF-8 file is a ValueError naming the path."""
    bad = tmp_path / "bad"
    bad.write_text("nocolon\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{bad}: line 1"):
        load_users_file(bad)
    latin = tmp_path / "latin"
    latin.write_bytes(b"caf\xe9:pw\n")
    with pytest.raises(ValueError, match=str(latin)):
        load_users_file(latin)


def test_missing_file_is_os_error(tmp_path: Path) -> None:
    """An unreadable file is an OSError, not a parse error."""
    with pytest.raises(OSError):
        load_users_file(tmp_path / "absent")
