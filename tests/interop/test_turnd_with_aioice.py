"""aioice's TURN client (an implementation nobody here wrote) relaying through turnd."""

from __future__ import annotations

import asyncio
import time

import pytest

from auth.credentials import mint_rest_credentials
from testkit.daemon import PASSWORD, REST_SECRET, USER, Daemon
from tests.interop.aioice_peer import Collect, echo_peer

turn = pytest.importorskip("aioice.turn", reason="aioice is not installed (pip install -e .[test])")

pytestmark = pytest.mark.interop

#: Bound on every wait, so a broken relay fails the test instead of hanging it.
WAIT = 10.0


async def _relay_round_trips(daemon: Daemon, username: str, password: str) -> list[bytes]:
    async with echo_peer() as peer:
        transport, protocol = await turn.create_turn_endpoint(
            Collect, ("127.0.0.1", daemon.port), username, password
        )
        try:
            relayed = transport.get_extra_info("sockname")
            assert relayed[0] == "127.0.0.1"
            payloads = [f"message {i}".encode() * (i + 1) for i in range(20)]
            answers = []
            for payload in payloads:
                transport.sendto(payload, peer)
                data, addr = await asyncio.wait_for(protocol.received.get(), WAIT)
                assert tuple(addr[:2]) == tuple(peer[:2])
                answers.append(data)
            return answers
        finally:
            await protocol.close(transport, WAIT)


def test_aioice_long_term_user_relays_through_channel(daemon: Daemon) -> None:
    """aioice allocates, binds a channel and every payload comes back from the echo peer."""
    answers = asyncio.run(_relay_round_trips(daemon, USER, PASSWORD))
    assert answers == [f"message {i}".encode() * (i + 1) for i in range(20)]


def test_aioice_rest_credential_relays(daemon: Daemon) -> None:
    """A REST credential minted from the shared secret works for aioice too."""
    username, password = mint_rest_credentials(REST_SECRET, time.time(), 600, "aioice")
    answers = asyncio.run(_relay_round_trips(daemon, username, password))
    assert len(answers) == 20 and answers[0] == b"message 0"


def test_aioice_wrong_password_is_refused(daemon: Daemon) -> None:
    """A wrong password ends in 401: aioice's allocation fails with that error code."""
    from aioice.stun import TransactionFailed

    async def attempt() -> None:
        await turn.create_turn_endpoint(Collect, ("127.0.0.1", daemon.port), USER, "wrong")

    with pytest.raises(TransactionFailed) as failure:
        asyncio.run(attempt())
    assert failure.value.response.attributes["ERROR-CODE"][0] == 401
