"""An upgrade in place: every worker is replaced by a new process that takes over its UDP
allocations, relay sockets and all, while clients on every slot relay without a pause; none of
their datagrams is lost and their allocations go on as before (refreshes, permissions, channels,
counters, one usage line each). A TCP client's allocation stays with its old worker, which
serves it until it ends and then exits."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from testkit.client import error_code
from testkit.daemon import PASSWORD, USER, Daemon, start_turnd, wait_for_event
from testkit.sync import EchoPeer, TurnClient, wait_until
from tests.workers.nodes import RELAY, WORKERS, client_on, echoed, relaying
from turnd.turnctl import app

runner = CliRunner()
PER_SLOT = 3


@pytest.fixture
def usage_path(tmp_path: Path) -> Path:
    return tmp_path / "usage.jsonl"


@pytest.fixture
def node(tmp_path: Path, usage_path: Path) -> Iterator[Daemon]:
    daemon = start_turnd(
        tmp_path,
        RELAY + f'[usage]\nfile = "{usage_path}"\n',
        listen='["udp:0", "tcp:0"]',
        env={"TURND_SERVER_WORKERS": str(WORKERS)},
        ready="workers.ready",
    )
    yield daemon
    assert daemon.stop() == 0


def turnctl(daemon: Daemon, *args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["--socket", daemon.control_socket, "--json", *args])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if code == 0 else result.output


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Relayer:
    """Echoes numbered datagrams through every client, one after another, without a pause,
    and remembers each one that did not come back."""

    def __init__(self, clients: list[TurnClient]) -> None:
        self.clients = clients
        self.sent = 0
        self.lost: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._done.is_set():
            for client in self.clients:
                self.sent += 1
                if not echoed(client, self.sent.to_bytes(4, "big")):
                    self.lost.append(self.sent)

    def __enter__(self) -> Relayer:
        self._thread.start()
        assert wait_until(lambda: self.sent > 50)
        return self

    def more(self, count: int = 50) -> None:
        before = self.sent
        assert wait_until(lambda: self.sent > before + count)

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def test_an_upgrade_moves_every_udp_allocation_without_losing_a_datagram(
    node: Daemon, clients: list[TurnClient], usage_path: Path
) -> None:
    with EchoPeer() as peer:
        on = [
            relaying(client_on(node, slot, clients), peer)
            for slot in range(WORKERS)
            for _ in range(PER_SLOT)
        ]
        before = {a["client"]: a for a in turnctl(node, "allocations", "list")}
        with Relayer(on) as relayer:
            counted = node.scrape()
            upgraded = turnctl(node, "upgrade")["workers"]
            relayer.more()
        assert relayer.lost == [], f"{len(relayer.lost)} of {relayer.sent} datagrams lost"
        # The counters move with the allocations: the node's totals do not start over.
        key = ("turnd_relayed_packets_total", (("direction", "to_peer"),))
        assert node.scrape()[key] >= counted[key] + 50

        assert [w["slot"] for w in upgraded] == list(range(WORKERS))
        assert [w["moved"] for w in upgraded] == [PER_SLOT] * WORKERS
        assert all(w["pid"] != w["old_pid"] for w in upgraded)
        assert all(w["window_ms"] >= 0 for w in upgraded)
        status = turnctl(node, "status")
        assert [w["pid"] for w in status["workers"]] == [w["pid"] for w in upgraded]
        assert status["allocations"] == WORKERS * PER_SLOT
        # With no TCP connection to serve, the old workers go at once.
        assert wait_until(lambda: not any(alive(w["old_pid"]) for w in upgraded))

        after = {a["client"]: a for a in turnctl(node, "allocations", "list")}
        assert set(after) == set(before)
        for client_address, was in before.items():
            now = after[client_address]
            assert now["relays"] == was["relays"] and now["started"] == was["started"]
            assert now["packets_to_peer"] > was["packets_to_peer"]
            assert now["channels"] == 1 and now["permissions"] == 1
        for client in on:  # the credential, the nonce and the allocation are as they were
            assert error_code(client.refresh()) is None
            assert echoed(client, b"after the upgrade")
        assert not usage_path.exists() or usage_path.read_text() == ""
        for client in on:
            assert error_code(client.refresh(0)) is None
        assert wait_until(lambda: len(usage_path.read_text().splitlines()) == len(on))
        lines = [json.loads(line) for line in usage_path.read_text().splitlines()]
        assert sorted(line["client"] for line in lines) == sorted(before)
        for line in lines:
            # The usage counts what both processes relayed: at least what turnctl saw before.
            assert line["packets_to_peer"] > before[line["client"]]["packets_to_peer"]


def test_a_tcp_allocation_stays_with_its_old_worker_until_it_ends(
    node: Daemon, clients: list[TurnClient]
) -> None:
    """An upgrade by SIGUSR2 leaves the TCP client on its worker, which relays on for it; the
    old worker exits once that client goes, and a new TCP client is served by a new worker."""
    with EchoPeer() as peer:
        udp = relaying(client_on(node, 0, clients), peer)
        tcp = TurnClient((node.host, node.ports["tcp"][0]), USER, PASSWORD, transport="tcp")
        clients.append(tcp)
        relaying(tcp, peer)
        node.process.send_signal(signal.SIGUSR2)
        [done] = wait_for_event(node, "upgrade.done")
        assert done["moved"] == 1
        slots = wait_for_event(node, "upgrade.slot", count=WORKERS)
        assert sum(slot["lingering"] for slot in slots) == 1
        lingering = next(slot for slot in slots if slot["lingering"])
        assert alive(lingering["old_pid"])

        assert echoed(tcp, b"served by the old worker")
        assert echoed(udp, b"served by the new one")
        assert error_code(tcp.refresh()) is None
        # The operator sees the old worker and what it holds, and one scrape counts it all.
        [old] = turnctl(node, "status")["lingering"]
        assert (old["pid"], old["allocations"]) == (lingering["old_pid"], 1)
        held = [a for a in turnctl(node, "allocations", "list") if "old_pid" in a]
        assert [(a["transport"], a["old_pid"]) for a in held] == [("tcp", lingering["old_pid"])]
        while_lingering = node.scrape()
        assert while_lingering[("turnd_workers_lingering", ())] == 1
        assert while_lingering[("turnd_allocations", (("relay", "udp"), ("transport", "tcp")))] == 1
        tcp.close()
        assert wait_until(lambda: not alive(lingering["old_pid"]))
        assert wait_for_event(node, "upgrade.retired", count=WORKERS)
        # Its counts went to its slot's new worker as it exited: the node's counters go on.
        after = node.scrape()
        assert after[("turnd_workers_lingering", ())] == 0
        for direction in ("to_peer", "to_client"):
            key = ("turnd_relayed_packets_total", (("direction", direction),))
            assert after[key] >= while_lingering[key] > 0

        fresh = TurnClient((node.host, node.ports["tcp"][0]), USER, PASSWORD, transport="tcp")
        clients.append(fresh)
        assert echoed(relaying(fresh, peer), b"a new worker's TCP client")


def test_a_single_process_refuses_to_upgrade_and_says_what_to_do(tmp_path: Path) -> None:
    daemon = start_turnd(tmp_path)
    try:
        output = turnctl(daemon, "upgrade", code=1)
        assert "server.workers" in output and "one process" in output
    finally:
        assert daemon.stop() == 0


def test_a_failed_upgrade_leaves_every_worker_serving_and_says_which_one_failed(
    node: Daemon, clients: list[TurnClient]
) -> None:
    """With the config file broken after the start, turnctl upgrade exits 1 with the file's
    error before it starts any worker, and the old workers relay on, PIDs unchanged."""
    with EchoPeer() as peer:
        on = [relaying(client_on(node, slot, clients), peer) for slot in range(WORKERS)]
        before = [w["pid"] for w in turnctl(node, "status")["workers"]]
        good = node.config_path.read_text()
        node.config_path.write_text(good + "\n[relay\n")
        try:
            with Relayer(on) as relayer:
                output = turnctl(node, "upgrade", code=1)
                relayer.more()
        finally:
            node.config_path.write_text(good)
        assert relayer.lost == [], f"{len(relayer.lost)} of {relayer.sent} datagrams lost"
        assert "no worker was upgraded" in output, output
        assert f"TOML syntax error (in {node.config_path})" in output, output
        assert [w["pid"] for w in turnctl(node, "status")["workers"]] == before
        assert all(alive(pid) for pid in before)
        for client in on:
            assert error_code(client.refresh()) is None
        # Fixed, the same upgrade goes through.
        upgraded = turnctl(node, "upgrade")["workers"]
        assert [w["old_pid"] for w in upgraded] == before
        assert [w["moved"] for w in upgraded] == [1] * WORKERS
        for client in on:
            assert echoed(client, b"after the second upgrade")
