"""A node of two workers behind one supervisor: each client flow stays on the worker the
reuseport selector names, and a worker that dies is started again while the other keeps
relaying without losing a datagram."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.client import error_code
from testkit.daemon import Daemon, start_turnd, wait_for_event
from testkit.sync import EchoPeer, TurnClient, wait_until
from tests.workers.nodes import (
    PORT_MAX,
    PORT_MIN,
    RELAY,
    WORKERS,
    client_on,
    echoed,
    relaying,
    worker_pids,
)
from turnd.workers.worker import relay_slice


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Daemon]:
    daemon = start_turnd(
        tmp_path,
        RELAY,
        env={"TURND_SERVER_WORKERS": str(WORKERS)},
        ready="workers.ready",
    )
    yield daemon
    assert daemon.stop() == 0


def test_each_flow_is_served_by_the_worker_the_selector_names(
    node: Daemon, clients: list[TurnClient]
) -> None:
    """A client whose port hashes to slot N gets a relayed port from worker N's slice, on each
    slot, and its channel relays."""
    with EchoPeer() as peer:
        for slot in range(WORKERS):
            for _ in range(3):
                client = relaying(client_on(node, slot, clients), peer)
                low, high = relay_slice(PORT_MIN, PORT_MAX, slot, WORKERS)
                assert client.session.relay is not None
                assert low <= client.session.relay.port <= high
                assert echoed(client, f"slot {slot}".encode())


def test_a_killed_worker_restarts_and_the_other_keeps_relaying_without_loss(
    node: Daemon, clients: list[TurnClient]
) -> None:
    """SIGKILL worker 1 while clients of worker 0 relay without a pause: none of their
    datagrams is lost; worker 1 is started again on its slot, its old allocations are gone
    (437) and a new client of its slot allocates there."""
    with EchoPeer() as peer:
        steady = [relaying(client_on(node, 0, clients), peer) for _ in range(4)]
        doomed = relaying(client_on(node, 1, clients), peer)
        sent = 0
        lost: list[int] = []
        done = threading.Event()

        def relay_all_along() -> None:
            nonlocal sent
            while not done.is_set():
                for client in steady:
                    sent += 1
                    if not echoed(client, sent.to_bytes(4, "big")):
                        lost.append(sent)

        relayer = threading.Thread(target=relay_all_along)
        relayer.start()
        try:
            assert wait_until(lambda: sent > 50)
            old_pid = worker_pids(node)[1]
            os.kill(old_pid, signal.SIGKILL)
            assert wait_for_event(node, "worker.exited"), node.log_path.read_text()
            assert wait_until(lambda: worker_pids(node)[1] != old_pid)
            assert wait_for_event(node, "service.started", count=WORKERS + 1)
            before = sent
            assert wait_until(lambda: sent > before + 50)
        finally:
            done.set()
            relayer.join()
        assert lost == [], f"{len(lost)} of {sent} datagrams lost"
        [exited] = wait_for_event(node, "worker.exited")
        assert exited["slot"] == 1 and exited["status"] == -signal.SIGKILL

        assert error_code(doomed.refresh()) == 437
        fresh = relaying(client_on(node, 1, clients), peer)
        low, high = relay_slice(PORT_MIN, PORT_MAX, 1, WORKERS)
        assert fresh.session.relay is not None and low <= fresh.session.relay.port <= high
        assert echoed(fresh, b"after the restart")
