"""bench.batching's recvmmsg/sendmmsg through ctypes carry the datagrams whole, and every row
of a short run receives each datagram sent. Nothing is timed against a threshold."""

from __future__ import annotations

import socket

from bench import batching


def test_sendmmsg_and_recvmmsg_carry_each_payload_whole_and_in_order() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as source,
    ):
        sink.bind(("127.0.0.1", 0))
        payloads = [bytes([n]) * (n + 1) for n in range(5)]
        batch = batching.Batch(8, 64)
        sent = batch.send(source.fileno(), payloads, batching._sockaddr_in(*sink.getsockname()))
        assert sent == 5
        sink.settimeout(2.0)
        got: list[bytes] = []
        while len(got) < 5:
            got += batching.Batch(8, 64).receive(sink.fileno()) or [sink.recv(64)]
        assert got == payloads


def test_a_short_run_prints_every_row(capsys: object) -> None:
    batching.main(["--datagrams", "640", "--burst", "32"])
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    for row in ("uvloop datagram transport", "recvfrom loop", "recvmmsg by 32", "sendto",
                "sendmmsg by 32"):  # fmt: skip
        assert row in out
