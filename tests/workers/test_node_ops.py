"""A node of two workers is one node to its operator: turnctl sees and acts on every worker's
allocations, users and revocations reach every worker, one scrape sums them, the usage file
holds every worker's lines and the quotas count the whole node."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from testkit.client import error_code
from testkit.daemon import USER, Daemon, start_turnd
from testkit.sync import EchoPeer, TurnClient, wait_until
from tests.workers.nodes import RELAY, WORKERS, client_on, echoed, relaying
from turnd.turnctl import app

runner = CliRunner()


@pytest.fixture(scope="module")
def usage_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("usage") / "usage.jsonl"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, usage_path: Path) -> Iterator[Daemon]:
    daemon = start_turnd(
        tmp_path_factory.mktemp("node"),
        RELAY + f'[usage]\nfile = "{usage_path}"\n',
        env={"TURND_SERVER_WORKERS": str(WORKERS)},
        ready="workers.ready",
    )
    yield daemon
    assert daemon.stop() == 0
    assert daemon.faults() == []


def turnctl(daemon: Daemon, *args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["--socket", daemon.control_socket, "--json", *args])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if result.stdout.strip() else None


def test_turnctl_and_the_scrape_see_every_worker(
    node: Daemon, clients: list[TurnClient], usage_path: Path
) -> None:
    with EchoPeer() as peer:
        on = [relaying(client_on(node, slot, clients), peer) for slot in range(WORKERS)]
        for slot, client in enumerate(on):
            assert echoed(client, f"to worker {slot}".encode())

        status = turnctl(node, "status")
        assert status["allocations"] == WORKERS
        assert [(w["slot"], w["up"], w["allocations"]) for w in status["workers"]] == [
            (0, True, 1),
            (1, True, 1),
        ]
        table = runner.invoke(app, ["--socket", node.control_socket, "status"]).stdout
        assert "workers" in table and "RESTARTS" in table

        listed = turnctl(node, "allocations", "list", "--user", USER)
        by_client = {a["client"]: a for a in listed}
        assert {by_client[str(c.address)]["worker"] for c in on} == {0, 1}
        second = by_client[str(on[1].address)]
        shown = turnctl(node, "allocations", "show", second["id"])
        assert shown["worker"] == 1 and len(shown["channel_list"]) == 1

        samples = node.scrape()
        allocations = sum(v for (name, _), v in samples.items() if name == "turnd_allocations")
        assert allocations == WORKERS
        for slot in range(WORKERS):
            label = (("worker", str(slot)),)
            assert samples[("turnd_worker_up", label)] == 1
            assert samples[("turnd_worker_allocations", label)] == 1
        relayed = samples[("turnd_relayed_packets_total", (("direction", "to_client"),))]
        assert relayed >= WORKERS

        turnctl(node, "allocations", "kill", second["id"])
        assert error_code(on[1].refresh()) == 437
        turnctl(node, "allocations", "kill", second["id"], code=1)  # gone: 404

        def usage_of(relay: str) -> list[dict[str, Any]]:
            if not usage_path.exists():
                return []
            lines = [json.loads(line) for line in usage_path.read_text().splitlines()]
            return [line for line in lines if line["relay"] == relay]

        assert wait_until(lambda: usage_of(second["id"]))
        [line] = usage_of(second["id"])
        assert line["packets_to_client"] >= 1 and line["username"] == USER


def test_users_and_revocations_reach_every_worker(node: Daemon, clients: list[TurnClient]) -> None:
    turnctl(node, "users", "add", "carol", "--password", "c4rol-pw")
    assert "carol" in turnctl(node, "users", "list")
    carols = [client_on(node, slot, clients, "carol", "c4rol-pw") for slot in range(WORKERS)]
    for client in carols:  # the worker that wrote the file and the one that read it again
        assert error_code(client.allocate()) is None

    assert turnctl(node, "revoke", "carol")["ended"] == WORKERS
    assert turnctl(node, "allocations", "list", "--user", "carol") == []
    for client in carols:
        assert error_code(client.refresh()) == 401
    for slot in range(WORKERS):
        late = client_on(node, slot, clients, "carol", "c4rol-pw")
        assert error_code(late.allocate()) == 401
    revoked = (node.config_path.parent / "state" / "revoked.runtime").read_text().splitlines()
    assert revoked.count(json.dumps("carol")) == 1

    turnctl(node, "users", "add", "carol", "--password", "c4rol-pw")  # accepted again
    for slot in range(WORKERS):
        back = client_on(node, slot, clients, "carol", "c4rol-pw")
        assert error_code(back.allocate()) is None


def test_a_per_user_quota_counts_the_allocations_of_every_worker(
    tmp_path: Path, clients: list[TurnClient]
) -> None:
    daemon = start_turnd(
        tmp_path,
        RELAY + "[limits]\nmax_allocations_per_user = 1\n",
        env={"TURND_SERVER_WORKERS": str(WORKERS)},
        ready="workers.ready",
    )
    try:
        first = client_on(daemon, 0, clients)
        assert error_code(first.allocate()) is None
        second = client_on(daemon, 1, clients)
        assert error_code(second.allocate()) == 486  # held on the other worker
        assert error_code(first.refresh(0)) is None  # gone: the quota is free again
        assert wait_until(lambda: error_code(client_on(daemon, 1, clients).allocate()) is None)
    finally:
        assert daemon.stop() == 0
