"""The credential REST endpoint of a running turnd: its credentials relay, revocation bites."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.daemon import Daemon, start_turnd, wait_for_event
from testkit.sync import EchoPeer, TurnClient, error_code, wait_until

TOKEN = "app1-token-for-tests"


@pytest.fixture(scope="module")
def usage_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("usage") / "usage.jsonl"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, usage_path: Path) -> Iterator[Daemon]:
    extra = (
        f'[api]\nlisten = "127.0.0.1:0"\nkeys = {{ app1 = "{TOKEN}" }}\n'
        f'[usage]\nfile = "{usage_path}"\n'
    )
    running = start_turnd(tmp_path_factory.mktemp("turnd"), extra)
    yield running
    assert running.stop() == 0


def _api_port(daemon: Daemon) -> int:
    [started] = [e for e in daemon.log_events() if e.get("event") == "api.started"]
    return int(started["port"])


def _post(daemon: Daemon, path: str, body: dict[str, Any] | None, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{_api_port(daemon)}{path}",
        data=json.dumps(body).encode() if body is not None else b"",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_generated_credentials_relay_and_revocation_ends_the_allocation(
    daemon: Daemon, usage_path: Path
) -> None:
    """generate-ice-servers → 201; the credential allocates and relays; revoke → 204, the live
    allocation ends at once and the username gets 401; the usage line names key and tag."""
    status, body = _post(
        daemon,
        "/v1/turn/keys/app1/credentials/generate-ice-servers",
        {"ttl": 600, "customIdentifier": "room-42"},
        TOKEN,
    )
    assert status == 201
    turn = body["iceServers"][-1]
    assert any(url.startswith("turn:") and url.endswith("?transport=udp") for url in turn["urls"])
    username, password = turn["username"], turn["credential"]
    with TurnClient(("127.0.0.1", daemon.port), username, password) as client, EchoPeer() as peer:
        assert error_code(client.allocate()) is None
        assert error_code(client.create_permission(peer.address)) is None
        client.send_indication(peer.address, b"hello")
        assert wait_until(lambda: len(peer.received) >= 1)
        status, _ = _post(daemon, f"/v1/turn/keys/app1/credentials/{username}/revoke", None, TOKEN)
        assert status == 204
        ended = wait_for_event(daemon, "auth.revoked")
        assert ended[-1]["allocations"] == 1
        assert error_code(client.refresh()) in (401, 437)
    with TurnClient(("127.0.0.1", daemon.port), username, password) as again:
        assert error_code(again.allocate()) == 401
    lines = [json.loads(line) for line in usage_path.read_text().splitlines()]
    [line] = [entry for entry in lines if entry["username"] == username]
    assert (line["key_id"], line["customIdentifier"], line["reason"]) == (
        "app1",
        "room-42",
        "revoked",
    )


def test_wrong_token_is_401_without_detail(daemon: Daemon) -> None:
    """A wrong bearer token gets 401 and a body that says nothing about why."""
    status, body = _post(
        daemon, "/v1/turn/keys/app1/credentials/generate-ice-servers", {"ttl": 60}, "nope"
    )
    assert status == 401 and body == {"error": "unauthorized"}


def test_keys_added_with_turnctl_mint_and_removed_ones_are_refused(daemon: Daemon) -> None:
    """turnctl keys add → the endpoint accepts its token; keys remove → 401 again; a key from the
    configuration cannot be removed at run time."""
    from typer.testing import CliRunner

    from turnd.turnctl import app

    runner = CliRunner()
    base = ["--socket", daemon.control_socket, "--json"]
    added = runner.invoke(app, [*base, "keys", "add", "app9"])
    assert added.exit_code == 0, added.output
    token = json.loads(added.stdout)["token"]
    path = "/v1/turn/keys/app9/credentials/generate-ice-servers"
    assert _post(daemon, path, {"ttl": 60}, token)[0] == 201
    assert runner.invoke(app, [*base, "keys", "remove", "app9"]).exit_code == 0
    assert _post(daemon, path, {"ttl": 60}, token)[0] == 401
    refused = runner.invoke(app, [*base, "keys", "remove", "app1"])
    assert refused.exit_code == 1 and "configuration" in refused.stderr
