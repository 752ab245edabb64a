"""Users, REST secrets and endpoint keys added with turnctl: kept in the state directory."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from turnd.runtime import RuntimeCredentials, secret_id
from turnd.state import StateFileError, write_atomic


def test_users_round_trip_and_files_are_private(tmp_path: Path) -> None:
    """Users are added, replaced and removed; the file is 0600."""
    runtime = RuntimeCredentials(tmp_path / "state")
    assert runtime.users() == {}
    runtime.add_user("alice", "pw1")
    runtime.add_user("alice", "pw2")
    runtime.add_user("bob", "pw3")
    assert runtime.users() == {"alice": "pw2", "bob": "pw3"}
    assert stat.S_IMODE(runtime.users_path.stat().st_mode) == 0o600
    assert runtime.remove_user("alice") and not runtime.remove_user("alice")
    assert runtime.users() == {"bob": "pw3"}


@pytest.mark.parametrize(("name", "password"), [("", "p"), ("a:b", "p"), (" a", "p"), ("a", "")])
def test_bad_users_are_refused(tmp_path: Path, name: str, password: str) -> None:
    """Names the users-file format cannot hold, and empty passwords, are ValueErrors."""
    with pytest.raises(ValueError):
        RuntimeCredentials(tmp_path).add_user(name, password)


def test_secrets_newest_first_generated_and_removed_by_id(tmp_path: Path) -> None:
    """A new secret goes first (it mints); a generated one is long; removal is by secret id."""
    runtime = RuntimeCredentials(tmp_path)
    assert runtime.secrets() == []
    runtime.add_secret("first")
    generated = runtime.add_secret(None)
    assert len(generated) >= 40
    assert runtime.secrets() == [generated, "first"]
    assert runtime.add_secret("first") == "first"  # re-adding moves it to the front
    assert runtime.secrets() == ["first", generated]
    assert runtime.remove_secret(secret_id(generated)) and not runtime.remove_secret("00000000")
    with pytest.raises(ValueError):
        runtime.add_secret("has space")


def test_endpoint_keys_round_trip(tmp_path: Path) -> None:
    """Keys are added (token generated or given), listed and removed; bad ids are refused."""
    runtime = RuntimeCredentials(tmp_path)
    assert runtime.api_keys() == {}
    assert runtime.add_key("app1", "t0ken") == "t0ken"
    generated = runtime.add_key("app2", None)
    assert runtime.api_keys() == {"app1": "t0ken", "app2": generated}
    assert runtime.remove_key("app1") and not runtime.remove_key("app1")
    for bad_id, token in (("a:b", "t"), ("-a", "t"), ("app", "has space")):
        with pytest.raises(ValueError):
            runtime.add_key(bad_id, token)


def test_revocations_round_trip_any_username(tmp_path: Path) -> None:
    """Revoked usernames are kept one JSON string a line (any UTF-8, quotes, colons), written
    whole or appended, in a 0600 file."""
    runtime = RuntimeCredentials(tmp_path)
    assert runtime.revoked() == (set(), 0)
    names = {"alice", '1795602757:app1:room "42"', "zoë\nnewline"}
    runtime.save_revoked(names)
    runtime.append_revoked("bob")
    assert RuntimeCredentials(tmp_path).revoked() == ({*names, "bob"}, 0)
    assert (tmp_path / "revoked.runtime").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("damage", ['"1795602757:app1:ro', "not json", "42", '["alice"]'])
def test_a_damaged_revocation_file_is_refused_naming_it(tmp_path: Path, damage: str) -> None:
    """A truncated line or one that is not a JSON string is a StateFileError naming the file and
    the line, not silently skipped; accept_damaged skips and counts it."""
    runtime = RuntimeCredentials(tmp_path)
    runtime.save_revoked({"alice", "bob"})
    with runtime.revoked_path.open("a", encoding="utf-8") as handle:
        handle.write(damage)  # no newline: a file cut short
    with pytest.raises(StateFileError) as refused:
        runtime.revoked()
    assert str(runtime.revoked_path) in str(refused.value)
    assert "line 3" in str(refused.value) and "--accept-damaged-revocations" in str(refused.value)
    assert runtime.revoked(accept_damaged=True) == ({"alice", "bob"}, 1)


def test_writes_are_atomic_and_leave_no_temporary_file(tmp_path: Path) -> None:
    """Every runtime file is replaced whole; a failed write leaves the old content and no
    temporary file behind."""
    runtime = RuntimeCredentials(tmp_path)
    runtime.add_user("alice", "pw")
    before = runtime.users_path.read_bytes()
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    with pytest.raises(StateFileError, match="blocked"):
        write_atomic(blocker, "x")  # a directory in the file's place: os.replace fails
    assert runtime.users_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "users.runtime"]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("users.runtime", b"alice\n", "users.runtime"),
        ("users.runtime", b"alice:\xff\xfe\n", "not UTF-8"),
        ("secrets.runtime", b"\xffsecret\n", "not ASCII"),
        ("api-keys.runtime", b"app1\n", "line 1 is not key_id:token"),
    ],
)
def test_bad_runtime_files_are_state_file_errors(
    tmp_path: Path, name: str, content: bytes, problem: str
) -> None:
    """A bad line or a byte that is not text in a runtime file is a StateFileError naming the
    file and the problem (no traceback of a UnicodeDecodeError or a parse error)."""
    (tmp_path / name).write_bytes(content)
    runtime = RuntimeCredentials(tmp_path)
    with pytest.raises(StateFileError) as refused:
        runtime.users()
        runtime.secrets()
        runtime.api_keys()
    assert refused.value.path == str(tmp_path / name)
    assert problem in str(refused.value)


@pytest.mark.parametrize("name", ["users.runtime", "secrets.runtime", "api-keys.runtime"])
def test_a_directory_in_place_of_a_runtime_file_is_a_state_file_error(
    tmp_path: Path, name: str
) -> None:
    """A directory where a runtime file should be cannot be read: StateFileError naming it."""
    (tmp_path / name).mkdir()
    runtime = RuntimeCredentials(tmp_path)
    with pytest.raises(StateFileError, match="is a directory"):
        runtime.users()
        runtime.secrets()
        runtime.api_keys()
