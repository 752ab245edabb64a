"""Bad state files: start refuses naming the file (no traceback), a reload keeps serving with the
old state and still tells systemd READY=1, and turnctl reload gets the reason, not a 500."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from testkit.daemon import run_turnd, start_turnd, wait_for_event, write_config
from turnd.turnctl import app as turnctl_app

#: Bound on waiting for turnd to refuse to start, or for one notification.
WAIT = 15.0


def _damage(state: Path, name: str, how: str) -> None:
    state.mkdir(mode=0o700, exist_ok=True)
    path = state / name
    if how == "directory":
        path.mkdir()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not-utf8":
        path.write_bytes(b"alice:\xff\xfe\n")
    elif how == "bad-line":
        path.write_bytes(b"no colon here\n")
    elif how == "truncated":
        path.write_bytes(b'"alice"\n"1795602757:app1:ro')


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("nonce-key", "empty"),  # read_or_create_secret used to recurse until RecursionError
        ("nonce-key", "directory"),
        ("nonce-key", "not-utf8"),
        ("users.runtime", "directory"),
        ("users.runtime", "not-utf8"),
        ("users.runtime", "bad-line"),
        ("secrets.runtime", "not-utf8"),
        ("revoked.runtime", "directory"),
        ("revoked.runtime", "truncated"),
    ],
)
def test_start_on_a_bad_state_file_exits_nonzero_naming_it(
    tmp_path: Path, name: str, how: str
) -> None:
    """turnd exits non-zero with one line naming the file and what to do; no traceback."""
    config = write_config(tmp_path)
    _damage(tmp_path / "state", name, how)
    done = run_turnd(config, timeout=WAIT)
    assert done.returncode == 2  # the unit's RestartPreventExitStatus: no restart loop
    assert str(tmp_path / "state" / name) in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "service.started" not in done.stderr


def test_accept_damaged_revocations_starts_and_keeps_the_good_lines(tmp_path: Path) -> None:
    """With --accept-damaged-revocations turnd starts, logs how many lines it dropped and
    rewrites the file with the good ones."""
    _damage(tmp_path / "state", "revoked.runtime", "truncated")
    daemon = start_turnd(tmp_path, args=("--accept-damaged-revocations",))
    try:
        dropped = wait_for_event(daemon, "state.damaged_revocations_dropped")[0]
        assert dropped["lines"] == 1
        assert (tmp_path / "state" / "revoked.runtime").read_text() == '"alice"\n'
    finally:
        assert daemon.stop() == 0


def _next(sock: socket.socket) -> dict[str, str]:
    sock.settimeout(WAIT)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)


def test_reload_on_a_bad_state_file_keeps_serving_and_tells_systemd_ready(
    tmp_path: Path,
) -> None:
    """SIGHUP with users.runtime made a directory: RELOADING=1 then READY=1 with the refusal,
    reload.refused names the file, turnctl reload and users add answer it (not 500), and once
    the file is fixed a reload works again."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        daemon = start_turnd(tmp_path, env={"NOTIFY_SOCKET": str(path)})
        try:
            assert _next(sock)["READY"] == "1"
            bad = tmp_path / "state" / "users.runtime"
            bad.mkdir()
            daemon.process.send_signal(signal.SIGHUP)
            assert _next(sock)["RELOADING"] == "1"
            ready = _next(sock)
            assert ready["READY"] == "1" and str(bad) in ready["STATUS"]
            assert str(bad) in wait_for_event(daemon, "reload.refused")[0]["msg"]
            result = CliRunner().invoke(
                turnctl_app, ["--socket", daemon.control_socket, "--json", "reload"]
            )
            assert "internal error" not in result.output
            assert str(bad) in result.output
            added = CliRunner().invoke(
                turnctl_app,
                ["--socket", daemon.control_socket, "users", "add", "bob", "--password", "pw"],
            )
            assert added.exit_code != 0 and str(bad) in added.output
            assert "internal error" not in added.output
            bad.rmdir()
            result = CliRunner().invoke(
                turnctl_app, ["--socket", daemon.control_socket, "--json", "reload"]
            )
            assert json.loads(result.stdout) == {"ok": True, "error": None}
            assert daemon.process.poll() is None
            assert "Traceback" not in daemon.log_path.read_text()
        finally:
            assert daemon.stop() == 0
