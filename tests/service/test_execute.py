"""The packet path carries out every action the core can return, each by its one handler, and an
action it has no handler for is counted and skipped, never raised."""

from __future__ import annotations

import asyncio
import typing
from pathlib import Path

import pytest

from stun.addresses import Address
from testkit.daemon import write_config
from turnd.assembly import resolve_secrets
from turnd.config import load_config
from turnd.core.actions import Action, FiveTuple, SendToClient, Transport
from turnd.service import TurnService

CLIENT = FiveTuple(Transport.UDP, Address("192.0.2.1", 4000), Address("127.0.0.1", 3478))


@pytest.fixture
def turnd(tmp_path: Path) -> TurnService:
    """An unstarted service (no listener bound) with the test daemons' configuration."""
    config, _ = resolve_secrets(load_config(str(write_config(tmp_path)), {}))
    return TurnService(config, relay_ipv4="127.0.0.1")


def test_every_core_action_has_a_handler(turnd: TurnService) -> None:
    """The handler table covers exactly the action types of turnd.core.actions.Action."""
    assert turnd.packets.action_types == set(typing.get_args(Action))


def test_an_action_without_a_handler_is_counted_and_the_rest_carried_out(
    turnd: TurnService,
) -> None:
    """An unknown action is dropped as drop.unknown_action; the actions after it still run (a
    send to a listener that is not bound is counted as drop.listener_missing)."""

    async def run() -> None:
        turnd.packets.execute([object(), SendToClient(CLIENT, b"x")])  # type: ignore[list-item]

    asyncio.run(run())
    assert turnd.core.stats["drop.unknown_action"] == 1
    assert turnd.core.stats["drop.listener_missing"] == 1
