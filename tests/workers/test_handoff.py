"""The hand-off's socket passing: the fd channel keeps only the latest hand-off socket, and the
relay sockets arrive by name in batches, over real Unix sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest

from turnd.workers.handoff import MAX_FDS, SocketReceiver, receive_one, send_sockets


def seqpacket() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def test_the_latest_hand_off_socket_is_taken_and_stale_ones_are_closed() -> None:
    """A hand-off called off before its export leaves its socket queued: the next export takes
    the newest one, and the stale one is closed (its peer sees the end)."""
    ours, theirs = seqpacket()
    stale, stale_peer = seqpacket()
    fresh, fresh_peer = seqpacket()
    with ours, theirs, stale_peer, fresh_peer:
        for sock in (stale, fresh):
            socket.send_fds(ours, [b"handoff"], [sock.fileno()])
            sock.close()
        got = receive_one(theirs, 1.0)
        with got:
            got.send(b"to the successor")
            assert fresh_peer.recv(64) == b"to the successor"
        assert stale_peer.recv(64) == b""  # closed: the copy in the worker was closed too


def test_no_hand_off_socket_is_an_error_not_a_hang() -> None:
    ours, theirs = seqpacket()
    with ours, theirs, pytest.raises(OSError, match="no hand-off socket"):
        receive_one(theirs, 0.05)
    ours, theirs = seqpacket()
    ours.close()
    with theirs, pytest.raises(OSError, match="no hand-off socket"):
        receive_one(theirs, 5.0)  # the supervisor's end is gone: at once, not after 5 s


def test_relay_sockets_arrive_by_name_over_several_messages() -> None:
    async def run() -> None:
        give, take = seqpacket()
        relays = {f"127.0.0.1:{n}": socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                  for n in range(MAX_FDS + 3)}  # fmt: skip
        for sock in relays.values():
            sock.bind(("127.0.0.1", 0))
        receiver = SocketReceiver(take)
        with give:
            assert send_sockets(give, relays) == 2
        got = await receiver.wait(2.0)
        assert set(got) == set(relays)
        for name, sock in relays.items():
            assert got[name].getsockname() == sock.getsockname()
            sock.close()
        receiver.close()
        assert got == {}

    asyncio.run(run())


def test_a_sender_that_stops_midway_is_reported() -> None:
    async def run() -> None:
        give, take = seqpacket()
        receiver = SocketReceiver(take)
        give.close()
        with pytest.raises(ValueError, match="closed before its last socket"):
            await receiver.wait(2.0)

    asyncio.run(run())
