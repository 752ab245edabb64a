"""Fixtures shared by the interop tests: one turnd per test module, on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.daemon import Daemon, start_turnd


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A turnd with the static user, the REST secret and loopback peers of testkit/daemon.py."""
    running = start_turnd(tmp_path_factory.mktemp("turnd"))
    yield running
    assert running.stop() == 0
