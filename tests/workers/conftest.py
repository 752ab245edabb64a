"""Fixtures of the workers' tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.sync import TurnClient


@pytest.fixture
def clients() -> Iterator[list[TurnClient]]:
    made: list[TurnClient] = []
    yield made
    for client in made:
        client.close()
