"""Revocations outlive a restart (they are kept in the state directory), REST usernames leave
the list once expired, and turnctl users add of a revoked name lets it in again."""

from __future__ import annotations

import time
from pathlib import Path

from auth.credentials import LookupFailure
from stun.keys import PasswordAlgorithm
from turnd.config import parse_config
from turnd.operations import Operations
from turnd.service import TurnService, resolve_secrets

CONFIG = """
[server]
realm = "turnd.test"
listen = ["udp:0"]
state_dir = "{state_dir}"

[auth]
users = {{ alice = "s3cret" }}
secrets = ["rest-secret"]
"""


def service(state_dir: Path) -> TurnService:
    config, _ = resolve_secrets(parse_config(CONFIG.format(state_dir=state_dir), {}))
    return TurnService(config, relay_ipv4="127.0.0.1")


def refused(node: TurnService, username: str) -> bool:
    lookup = node.core.auth.authenticator.lookup(
        username, "turnd.test", PasswordAlgorithm.MD5, time.time()
    )
    return lookup.reason is LookupFailure.REVOKED


def test_a_revocation_outlives_a_restart(tmp_path: Path) -> None:
    rest = f"{int(time.time()) + 3600}:app1:room-42"
    first = service(tmp_path)
    first.revoke("alice")
    first.revoke(rest)
    again = service(tmp_path)  # a restart: a new service on the same state directory
    assert refused(again, "alice") and refused(again, rest)


def test_expired_rest_usernames_leave_the_list(tmp_path: Path) -> None:
    node = service(tmp_path)
    expired = f"{int(time.time()) - 10}:app1:old"
    node.revoke(expired)
    node.revoke("alice")
    assert service(tmp_path).revoked == {"alice"}


def test_adding_a_revoked_user_lets_it_in_again(tmp_path: Path) -> None:
    node = service(tmp_path)
    node.revoke("bob")
    Operations(node).add_user("bob", "new-password")
    assert not refused(node, "bob")
    assert "bob" not in service(tmp_path).revoked
