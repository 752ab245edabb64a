"""The state directory's files: generated secrets, atomic writes and their errors, modes."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from turnd import state
from turnd.state import StateError, StateFileError, read_or_create_secret, read_state, write_atomic


def test_a_secret_is_generated_once_then_reused_at_0600(tmp_path: Path) -> None:
    """First call creates the secret (0600), later calls return the same one."""
    value, created = read_or_create_secret(tmp_path / "state", "rest-secret")
    assert created and len(value) >= 40
    assert read_or_create_secret(tmp_path / "state", "rest-secret") == (value, False)
    assert (tmp_path / "state" / "rest-secret").stat().st_mode & 0o777 == 0o600


def test_an_empty_secret_file_is_an_error_naming_it_not_a_recursion(tmp_path: Path) -> None:
    """An existing empty file is refused with what to do (it used to recurse forever)."""
    (tmp_path / "nonce-key").write_bytes(b"")
    with pytest.raises(StateFileError) as refused:
        read_or_create_secret(tmp_path, "nonce-key")
    assert refused.value.path == str(tmp_path / "nonce-key")
    assert "empty" in str(refused.value) and "remove it" in str(refused.value)


@pytest.mark.parametrize(("content", "problem"), [(b"\xff\xfe", "not ASCII"), (b"a b\n", "more")])
def test_a_secret_file_that_is_not_one_secret_is_an_error(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    """Bytes that are not ASCII, or two words, are refused naming the file."""
    (tmp_path / "rest-secret").write_bytes(content)
    with pytest.raises(StateFileError, match=problem):
        read_or_create_secret(tmp_path, "rest-secret")


def test_a_directory_in_place_of_a_secret_is_an_error(tmp_path: Path) -> None:
    """A directory where the secret should be: StateFileError, not IsADirectoryError."""
    (tmp_path / "rest-secret").mkdir()
    with pytest.raises(StateFileError, match="is a directory"):
        read_or_create_secret(tmp_path, "rest-secret")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file anyway")
def test_an_unreadable_state_file_is_an_error(tmp_path: Path) -> None:
    """A file turnd's user may not read: StateFileError saying so."""
    path = tmp_path / "users.runtime"
    path.write_text("alice:pw\n")
    path.chmod(0)
    with pytest.raises(StateFileError, match="cannot read it"):
        read_state(path)


def test_a_permission_error_on_read_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EACCES (what a mode-000 file gives a non-root turnd), simulated so it runs as root too."""
    path = tmp_path / "users.runtime"
    path.write_text("alice:pw\n")

    def denied(_: Path) -> bytes:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(StateFileError) as refused:
        read_state(path)
    assert str(path) in str(refused.value) and "Permission denied" in str(refused.value)


def test_a_full_disk_is_a_clear_error_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while writing: StateFileError naming the file and the cause; the previous content
    stays and no temporary file is left behind."""
    path = tmp_path / "secrets.runtime"
    write_atomic(path, "old\n")

    def full(_: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(state.os, "fsync", full)
    with pytest.raises(StateFileError) as refused:
        write_atomic(path, "new\n")
    assert str(path) in str(refused.value) and "no space left" in str(refused.value)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.runtime"]


def test_a_state_directory_that_cannot_be_made_is_a_state_error(tmp_path: Path) -> None:
    """state_dir under a file: StateError saying which setting to change."""
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match=r"server\.state_dir"):
        read_or_create_secret(tmp_path / "file" / "state", "rest-secret")


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_a_secret_others_may_change_is_refused(tmp_path: Path, mode: int) -> None:
    """A rest-secret or nonce-key group/world writable is refused, with the chmod fix."""
    path = tmp_path / "nonce-key"
    path.write_text("s3cret\n")
    path.chmod(mode)
    with pytest.raises(StateFileError) as refused:
        read_or_create_secret(tmp_path, "nonce-key")
    assert f"chmod 600 {path}" in str(refused.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_secret_others_may_read_is_used_with_a_warning(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A readable-by-others secret is used, and a warning names the file and the chmod fix."""
    path = tmp_path / "rest-secret"
    path.write_text("s3cret\n")
    path.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="turnd"):
        assert read_or_create_secret(tmp_path, "rest-secret") == ("s3cret", False)
    warned = [r for r in caplog.records if getattr(r, "event", "") == "state.exposed_secret"]
    assert len(warned) == 1
    assert f"chmod 600 {path}" in warned[0].getMessage()
    assert warned[0].__dict__["fields"]["file"] == str(path)


def test_a_private_secret_is_used_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mode 0600: no warning."""
    path = tmp_path / "rest-secret"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="turnd"):
        read_or_create_secret(tmp_path, "rest-secret")
    assert not caplog.records


def test_creating_a_secret_never_replaces_one_another_process_made(tmp_path: Path) -> None:
    """replace=False keeps an existing file (FileExistsError) and leaves no temporary file: two
    turnds starting at once end up with the same secret."""
    path = tmp_path / "rest-secret"
    path.write_text("first\n")
    with pytest.raises(FileExistsError):
        write_atomic(path, "second\n", replace=False)
    assert path.read_text() == "first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rest-secret"]
