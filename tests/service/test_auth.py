"""Long-term and REST credentials against a real turnd (RFC 8489 §9.2, RFC 8656 §7.2)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auth.credentials import mint_rest_credentials, rest_password
from stun import attributes as at
from stun.addresses import Address
from stun.message import Method
from testkit.daemon import PASSWORD, REST_SECRET, USER, Daemon, start_turnd
from testkit.sync import error_code
from tests.service.conftest import ClientFactory
from turnd import turnctl

#: An address the default deny-list refuses (RFC 1918) and the test config does not re-open.
DENIED_PEER = Address("10.0.0.1", 40000)


def test_wrong_password_is_401_and_the_daemon_keeps_serving(
    daemon: Daemon, make_client: ClientFactory
) -> None:
    """A request signed with the wrong password gets 401 (RFC 8489 §9.2.4) and the next client
    with the right one is served."""
    wrong = make_client(daemon, USER, PASSWORD + "x")
    assert error_code(wrong.allocate()) == 401
    assert wrong.nonce is not None, "the first 401 gave a nonce and the request was signed"
    right = make_client(daemon)
    assert error_code(right.allocate()) is None
    assert daemon.process.poll() is None


def test_unknown_user_is_401(daemon: Daemon, make_client: ClientFactory) -> None:
    """A username nobody configured gets 401 (RFC 8489 §9.2.4)."""
    client = make_client(daemon, "mallory", PASSWORD)
    assert error_code(client.allocate()) == 401


def test_expired_rest_credential_is_401(daemon: Daemon, make_client: ClientFactory) -> None:
    """A REST username whose expiry has passed gets 401 even with the right HMAC password."""
    username = f"{int(time.time()) - 3600}:x"
    client = make_client(daemon, username, rest_password(REST_SECRET, username))
    assert error_code(client.allocate()) == 401


def test_rest_credential_from_the_shared_secret_allocates(
    daemon: Daemon, make_client: ClientFactory
) -> None:
    """A REST credential minted from the configured secret allocates a relay."""
    username, password = mint_rest_credentials(REST_SECRET, time.time(), 600, "svc")
    client = make_client(daemon, username, password)
    assert error_code(client.allocate()) is None
    assert client.relay is not None


def test_rest_credential_from_another_secret_is_401(
    daemon: Daemon, make_client: ClientFactory
) -> None:
    """A REST credential minted from a secret the daemon does not hold gets 401."""
    username, password = mint_rest_credentials("not-the-secret", time.time(), 600, "svc")
    client = make_client(daemon, username, password)
    assert error_code(client.allocate()) == 401


def test_create_permission_to_denied_peer_is_403(
    daemon: Daemon, make_client: ClientFactory
) -> None:
    """CreatePermission for a peer the deny-list refuses is 403 Forbidden (RFC 8656 §9.1);
    a permission sends no traffic, so no packet goes to 10.0.0.1."""
    client = make_client(daemon)
    assert error_code(client.allocate()) is None
    assert error_code(client.create_permission(DENIED_PEER)) == 403


def test_turnctl_minted_credential_allocates(
    daemon: Daemon, make_client: ClientFactory, tmp_path: Path
) -> None:
    """``turnctl credentials generate`` with the daemon's REST secret prints an iceServers
    credential that the daemon accepts."""
    secret_file = tmp_path / "rest-secret"
    secret_file.write_text(REST_SECRET + "\n")
    result = CliRunner().invoke(
        turnctl.app,
        [
            "credentials",
            "generate",
            "--host",
            daemon.host,
            "--port",
            str(daemon.port),
            "--secret-file",
            str(secret_file),
            "--ttl",
            "600",
        ],
    )
    assert result.exit_code == 0, result.output
    turn_server = json.loads(result.stdout)["iceServers"][1]
    assert turn_server["urls"] == [f"turn:{daemon.host}:{daemon.port}?transport=udp"]
    client = make_client(daemon, turn_server["username"], turn_server["credential"])
    assert error_code(client.allocate()) is None


def test_stale_nonce_is_438_and_the_retry_with_the_new_nonce_succeeds(
    tmp_path: Path, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a nonce expires the request gets 438 Stale Nonce with a fresh NONCE, and the same
    request signed with it succeeds (RFC 8489 §9.2.4, §9.2.5)."""
    monkeypatch.setenv("TURND_AUTH_NONCE_LIFETIME", "1")
    daemon = start_turnd(tmp_path)
    try:
        client = make_client(daemon)
        assert error_code(client.allocate()) is None
        old_nonce = client.nonce
        # Nonces expire on whole seconds. Wake just after the second boundary that follows the
        # old nonce's expiry: it is stale, and the one the 438 carries lives about a second.
        time.sleep(math.floor(time.time()) + 2 - time.time())
        stale = client.request(Method.REFRESH, retry=False)
        assert error_code(stale) == 438
        fresh = stale.get(at.Nonce)
        assert fresh is not None and fresh.value != old_nonce
        assert client.learn(stale)
        assert error_code(client.request(Method.REFRESH, retry=False)) is None
    finally:
        assert daemon.stop() == 0
