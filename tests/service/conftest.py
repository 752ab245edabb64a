"""Fixtures for the daemon tests: one shared turnd per module, clients and an echo peer.

Tests that need a daemon of their own (other config, signals, exit codes) start it themselves
with :func:`testkit.daemon.start_turnd` and stop it before they return.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from testkit.daemon import PASSWORD, USER, Daemon, start_turnd
from testkit.sync import EchoPeer, TurnClient


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A turnd with the static user, the REST secret and loopback peers of testkit/daemon.py."""
    running = start_turnd(tmp_path_factory.mktemp("turnd"))
    yield running
    assert running.stop() == 0


ClientFactory = Callable[..., TurnClient]


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    """Build TurnClients (``make_client(daemon, username, password)``); all closed afterwards."""
    clients: list[TurnClient] = []

    def make(daemon: Daemon, username: str = USER, password: str = PASSWORD) -> TurnClient:
        client = TurnClient((daemon.host, daemon.port), username, password)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def echo_peer() -> Iterator[EchoPeer]:
    """A UDP echo peer on 127.0.0.1, stopped after the test."""
    with EchoPeer() as peer:
        yield peer
