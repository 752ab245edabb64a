"""Revocations outlive a restart (they are kept in the state directory), REST usernames leave
the list once expired, and turnctl users add of a revoked name lets it in again."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

import turnd.credential_state
from auth.credentials import LookupFailure
from stun.keys import PasswordAlgorithm
from turnd.assembly import resolve_secrets
from turnd.config import parse_config
from turnd.operations import Operations
from turnd.service import TurnService

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


def test_revocations_are_appended_off_the_event_loop_and_outlive_a_restart(
    tmp_path: Path,
) -> None:
    """With an event loop, each revocation is one appended line written by the state writer
    thread, not the loop's; stop() waits for it and a restart refuses the names."""
    node = service(tmp_path)
    writers: list[str] = []
    append = node.credentials.runtime.append_revoked

    def recording(name: str) -> None:
        writers.append(threading.current_thread().name)
        append(name)

    node.credentials.runtime.append_revoked = recording  # type: ignore[method-assign]
    rest = f"{int(time.time()) + 3600}:app1:room-42"

    async def main() -> None:
        node.revoke("alice")
        node.revoke(rest)
        await node.stop()

    asyncio.run(main())
    assert len(writers) == 2 and all(w.startswith("turnd-state") for w in writers)
    lines = node.credentials.runtime.revoked_path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == ["alice", rest]
    again = service(tmp_path)
    assert refused(again, "alice") and refused(again, rest)


def test_expired_revocations_are_pruned_while_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a prune is due, a revoke drops the expired REST names and rewrites the file with
    the live ones only."""
    monkeypatch.setattr(turnd.credential_state, "REVOCATION_PRUNE_INTERVAL", 0.0)
    node = service(tmp_path)
    expired = f"{int(time.time()) - 10}:app1:old"
    live = f"{int(time.time()) + 3600}:app1:new"
    node.revoke(expired)
    node.revoke(live)
    assert node.revoked == {live}
    assert node.core.auth.authenticator.revoked == {live}
    assert node.credentials.runtime.revoked_path.read_text() == json.dumps(live) + "\n"


def test_a_revocation_that_cannot_be_written_is_counted_not_raised(tmp_path: Path) -> None:
    """A full disk (or any write failure) while saving a revocation: the revocation holds in
    memory, the failure is counted and logged, the revoke still answers."""
    node = service(tmp_path)
    node.credentials.runtime.revoked_path.mkdir(parents=True)  # appending to a directory fails
    assert node.revoke("alice") == 0
    assert refused(node, "alice")
    assert node.core.stats["state.write_failures"] == 1
    node.credentials.runtime.revoked_path.rmdir()  # space again: the next revoke rewrites it all
    node.revoke("bob")
    assert service(tmp_path).revoked == {"alice", "bob"}


def test_live_revocations_are_counted_per_endpoint_key(tmp_path: Path) -> None:
    """The count the endpoint bounds: per key, only live REST names, kept across a restart."""
    node = service(tmp_path)
    soon = int(time.time()) + 3600
    node.revoke(f"{soon}:app1:a")
    node.revoke(f"{soon}:app1:b")
    node.revoke(f"{soon}:app1:b")  # again: not counted twice
    node.revoke(f"{soon}:app2")
    node.revoke(f"{int(time.time()) - 10}:app1:gone")
    node.revoke("alice")
    again = service(tmp_path)  # prunes the expired one at start
    assert [again.credentials.revocations(k) for k in ("app1", "app2", "app3")] == [2, 1, 0]
    again.credentials.unrevoke(f"{soon}:app1:a")
    assert again.credentials.revocations("app1") == 1
