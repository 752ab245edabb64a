"""Signals: SIGTERM stops cleanly, SIGHUP swaps credentials and leaves allocations alone."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.daemon import (
    PASSWORD,
    USER,
    Daemon,
    run_turnd,
    start_turnd,
    wait_for_event,
    write_config,
)
from testkit.sync import DataIndication, EchoPeer, error_code
from tests.service.conftest import ClientFactory

NEW_USER, NEW_PASSWORD = "bob", "b0b-secret"
USERS_LINE = f'users = {{ {USER} = "{PASSWORD}" }}'


@pytest.fixture
def own_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A turnd for this test alone (signals change its state)."""
    daemon = start_turnd(tmp_path)
    yield daemon
    daemon.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_zero_and_logs_service_stopped(
    own_daemon: Daemon, make_client: ClientFactory, signum: signal.Signals
) -> None:
    """SIGTERM, or one SIGINT (Ctrl-C), ends turnd with status 0 after it logs
    ``service.stopped`` with the allocations it still held."""
    assert error_code(make_client(own_daemon).allocate()) is None
    own_daemon.process.send_signal(signum)
    try:
        code = own_daemon.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"turnd did not stop on {signum.name}")
    assert code == 0
    stopped = [e for e in own_daemon.log_events() if e.get("event") == "service.stopped"]
    assert [e["allocations"] for e in stopped] == [1]


def _rewrite_config(daemon: Daemon, old: str, new: str) -> None:
    text = daemon.config_path.read_text()
    assert old in text
    daemon.config_path.write_text(text.replace(old, new))


def test_sighup_adds_a_user_while_an_allocation_keeps_relaying(
    own_daemon: Daemon, make_client: ClientFactory, echo_peer: EchoPeer
) -> None:
    """After the config file gains a user and turnd gets SIGHUP, the new user can allocate
    and an allocation made before the reload keeps relaying."""
    alice = make_client(own_daemon)
    assert error_code(alice.allocate()) is None
    assert error_code(alice.create_permission(echo_peer.address)) is None
    alice.send_indication(echo_peer.address, b"before reload")
    assert alice.receive() == DataIndication(echo_peer.address, b"before reload")
    assert error_code(make_client(own_daemon, NEW_USER, NEW_PASSWORD).allocate()) == 401

    _rewrite_config(
        own_daemon,
        USERS_LINE,
        f'users = {{ {USER} = "{PASSWORD}", {NEW_USER} = "{NEW_PASSWORD}" }}',
    )
    own_daemon.process.send_signal(signal.SIGHUP)
    assert wait_for_event(own_daemon, "reload.done"), own_daemon.log_path.read_text()

    assert error_code(make_client(own_daemon, NEW_USER, NEW_PASSWORD).allocate()) is None
    alice.send_indication(echo_peer.address, b"after reload")
    assert alice.receive() == DataIndication(echo_peer.address, b"after reload")
    assert own_daemon.stop() == 0


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        ('nonce_lifetime = "soon"', "auth.nonce_lifetime"),
        ('users_file = "{missing}"', "{missing}: No such file or directory"),
        ('users_file = "{malformed}"', "{malformed}: line 1"),
    ],
    ids=["bad-value", "missing-users-file", "malformed-users-file"],
)
def test_sighup_with_broken_config_is_refused_and_old_users_still_work(
    own_daemon: Daemon, make_client: ClientFactory, tmp_path: Path, breakage: str, named: str
) -> None:
    """A configuration that fails to load on SIGHUP — a bad value, a users file that is missing
    or malformed — is logged as ``reload.refused`` naming the culprit, and the users of the
    running configuration keep allocating."""
    files = {"missing": tmp_path / "missing-users", "malformed": tmp_path / "malformed-users"}
    files["malformed"].write_text("a line without a password\n")
    _rewrite_config(own_daemon, USERS_LINE, USERS_LINE + "\n" + breakage.format(**files))
    own_daemon.process.send_signal(signal.SIGHUP)
    [refused] = wait_for_event(own_daemon, "reload.refused")
    assert named.format(**files) in refused["msg"]
    assert error_code(make_client(own_daemon).allocate()) is None
    assert own_daemon.process.poll() is None
    assert own_daemon.stop() == 0


def test_unreadable_users_file_at_start_exits_1_naming_it(tmp_path: Path) -> None:
    """A users file that cannot be read stops the start with status 1 and one line naming the
    field and the file, not a traceback."""
    missing = tmp_path / "missing-users"
    config = write_config(tmp_path)
    config.write_text(
        config.read_text().replace(USERS_LINE, f'{USERS_LINE}\nusers_file = "{missing}"')
    )
    done = run_turnd(config)
    assert done.returncode == 1
    assert f"turnd: auth.users_file: cannot read {missing}: No such file or directory" in (
        done.stderr.splitlines()
    )
    assert "Traceback" not in done.stderr
