"""turnctl against a running turnd over its control socket: the operator's levers work."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from testkit.daemon import PASSWORD, USER, Daemon, start_turnd
from testkit.sync import TurnClient, error_code
from turnd.turnctl import app

runner = CliRunner()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    running = start_turnd(tmp_path_factory.mktemp("turnd"))
    yield running
    assert running.stop() == 0


def turnctl(daemon: Daemon, *args: str, code: int = 0) -> Any:
    """Run turnctl --json against the daemon; return the parsed output (or None if empty)."""
    result = runner.invoke(app, ["--socket", daemon.control_socket, "--json", *args])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if result.stdout.strip() else None


def test_status_lists_listeners_and_allocations(daemon: Daemon) -> None:
    """turnctl status shows the serving listeners and the live allocation count."""
    with TurnClient(("127.0.0.1", daemon.port), USER, PASSWORD) as client:
        assert error_code(client.allocate()) is None
        status = turnctl(daemon, "status")
        assert {"transport": "udp", "address": "127.0.0.1", "port": daemon.port} in status[
            "listeners"
        ]
        assert status["allocations"] >= 1 and status["draining"] is False


def test_allocations_list_show_and_kill(daemon: Daemon) -> None:
    """An operator finds a user's allocation, looks at it and kills it; the client sees 437."""
    with TurnClient(("127.0.0.1", daemon.port), USER, PASSWORD) as client:
        assert error_code(client.allocate()) is None
        assert error_code(client.create_permission(client.address)) is None
        listed = turnctl(daemon, "allocations", "list", "--user", USER)
        [mine] = [a for a in listed if a["client"] == str(client.address)]
        shown = turnctl(daemon, "allocations", "show", mine["id"])
        assert shown["permission_list"] == ["127.0.0.1"]
        turnctl(daemon, "allocations", "kill", mine["id"])
        assert error_code(client.refresh()) == 437


def test_users_added_at_run_time_can_allocate_and_be_removed(daemon: Daemon) -> None:
    """users add → the new user allocates; users remove → 401."""
    turnctl(daemon, "users", "add", "carol", "--password", "c4rol-pw")
    assert "carol" in turnctl(daemon, "users", "list")
    with TurnClient(("127.0.0.1", daemon.port), "carol", "c4rol-pw") as client:
        assert error_code(client.allocate()) is None
    turnctl(daemon, "users", "remove", "carol")
    with TurnClient(("127.0.0.1", daemon.port), "carol", "c4rol-pw") as client:
        assert error_code(client.allocate()) == 401


def test_drain_refuses_new_allocations_until_undone(daemon: Daemon) -> None:
    """drain → new Allocates get 508; drain --off → they work again."""
    assert turnctl(daemon, "drain")["draining"] is True
    try:
        with TurnClient(("127.0.0.1", daemon.port), USER, PASSWORD) as client:
            assert error_code(client.allocate()) == 508
    finally:
        assert turnctl(daemon, "drain", "--off")["draining"] is False
    with TurnClient(("127.0.0.1", daemon.port), USER, PASSWORD) as client:
        assert error_code(client.allocate()) is None


def test_minted_credential_works_then_revoke_ends_it(daemon: Daemon) -> None:
    """credentials generate (via the daemon) allocates; revoke ends it and refuses it."""
    servers = turnctl(daemon, "credentials", "generate", "--ttl", "600", "--id", "ops")
    turn = servers["iceServers"][-1]
    with TurnClient(("127.0.0.1", daemon.port), turn["username"], turn["credential"]) as client:
        assert error_code(client.allocate()) is None
        assert turnctl(daemon, "revoke", turn["username"])["ended"] == 1
        assert error_code(client.allocate()) == 401


def test_reload_reports_success(daemon: Daemon) -> None:
    """turnctl reload re-reads the configuration and says it worked."""
    assert turnctl(daemon, "reload") == {"ok": True, "error": None}


def test_unreachable_daemon_is_a_clear_error(tmp_path: Any) -> None:
    """No daemon at the socket: exit 1 and a message that says what to check."""
    result = runner.invoke(app, ["--socket", str(tmp_path / "none.sock"), "status"])
    assert result.exit_code == 1
    assert "cannot reach turnd" in result.output
