"""Users, REST secrets and endpoint keys added with turnctl: kept in the state directory."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from turnd.runtime import RuntimeCredentials, secret_id


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
    """Revoked usernames are kept one JSON string a line (any UTF-8, quotes, colons); a line
    that is not one is skipped, not fatal."""
    runtime = RuntimeCredentials(tmp_path)
    assert runtime.revoked() == set()
    names = {"alice", '1795602757:app1:room "42"', "zoë\nnewline"}
    runtime.save_revoked(names)
    assert RuntimeCredentials(tmp_path).revoked() == names
    with (tmp_path / "revoked.runtime").open("a", encoding="utf-8") as handle:
        handle.write("not json\n42\n")
    assert runtime.revoked() == names
    assert (tmp_path / "revoked.runtime").stat().st_mode & 0o777 == 0o600
