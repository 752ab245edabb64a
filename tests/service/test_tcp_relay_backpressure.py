"""RFC 6062 §5.4 splices are byte streams: a slow reader on either side slows the sender down
(backpressure), it never makes turnd drop bytes from the middle of the stream.

A real turnd on loopback, one TCP allocation, Connect to a TCP peer of the test, ConnectionBind on
a data connection; then 8 MiB go one way while the receiving end reads slowly through a small
socket buffer. What arrives must be every byte, in order (same SHA-256).
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from stun import attributes as at
from stun.addresses import Address
from stun.keys import long_term_key
from stun.message import Message, MessageClass, Method, decode, encode
from testkit.daemon import PASSWORD, REALM, USER, Daemon, start_turnd
from testkit.sync import read_stun_frame
from turnd.tcp_relays import SPLICE_HARD_CAP, spliced_write

#: REQUESTED-TRANSPORT value for TCP (RFC 6062 §5.1: the IANA protocol number).
TCP_PROTOCOL = 6
#: What crosses the splice: several times every buffer on the way (socket buffers, turnd's
#: high water marks), so that a relay that drops past a backlog loses bytes.
TOTAL = 8 * 1024 * 1024
#: The slow reader's socket receive buffer: small, so that the sender's side backs up at once.
SLOW_RCVBUF = 32 * 1024
#: Longest wait for any one read or write (never reached when the relay works).
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    running = start_turnd(tmp_path_factory.mktemp("turnd"), listen='["udp:0", "tcp:0"]')
    yield running
    assert running.stop() == 0


class StreamTurn:
    """A TURN client on one TCP connection: the 401/438 dance, then signed requests."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.nonce: str | None = None
        self.key = long_term_key(USER, REALM, PASSWORD)
        self.txid = 0

    def request(self, method: Method, *attributes: Any) -> Message:
        for _ in range(2):
            values = list(attributes)
            key = None
            if self.nonce is not None:
                values += [at.Username(USER), at.Realm(REALM), at.Nonce(self.nonce)]
                key = self.key
            self.txid += 1
            message = Message(
                method, MessageClass.REQUEST, self.txid.to_bytes(12, "big"), tuple(values)
            )
            self.sock.sendall(encode(message, key=key))
            reply = decode(read_stun_frame(self.sock))
            nonce, error = reply.get(at.Nonce), reply.get(at.ErrorCode)
            if nonce is None or error is None or error.code not in (401, 438):
                return reply
            self.nonce = nonce.value  # learn the nonce (RFC 8489 §9.2.3) and ask again
        return reply


def _splice(
    daemon: Daemon, slow: str, early: bytes = b""
) -> tuple[socket.socket, socket.socket, socket.socket]:
    """(control, data connection, peer's end), spliced; ``slow`` ("client" or "peer") gets the
    small receive buffer; the peer sends ``early`` before the ConnectionBind."""
    turn_port = daemon.ports["tcp"][0]
    listener = socket.socket()
    if slow == "peer":
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(TIMEOUT)
    peer = Address("127.0.0.1", listener.getsockname()[1])
    control = socket.create_connection(("127.0.0.1", turn_port), timeout=TIMEOUT)
    turn = StreamTurn(control)
    allocated = turn.request(Method.ALLOCATE, at.RequestedTransport(TCP_PROTOCOL))
    assert allocated.cls is MessageClass.SUCCESS, allocated
    assert turn.request(Method.CREATE_PERMISSION, at.XorPeerAddress(peer)).cls is (
        MessageClass.SUCCESS
    )
    connected = turn.request(Method.CONNECT, at.XorPeerAddress(peer))
    cid = connected.get(at.ConnectionId)
    assert cid is not None, connected
    peer_end, _ = listener.accept()
    listener.close()
    peer_end.settimeout(TIMEOUT)
    if early:
        peer_end.sendall(early)
        time.sleep(0.2)  # let turnd's peer connection see it before the bind
    data = socket.socket()
    if slow == "client":
        data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    data.settimeout(TIMEOUT)
    data.connect(("127.0.0.1", turn_port))
    bound = StreamTurn(data).request(Method.CONNECTION_BIND, at.ConnectionId(cid.value))
    assert bound.cls is MessageClass.SUCCESS, bound
    return control, data, peer_end


def _pattern() -> bytes:
    """TOTAL bytes in which every 4-byte word is its own offset: any hole or reordering shows."""
    return b"".join(struct.pack("!I", offset) for offset in range(0, TOTAL, 4))


def _slow_read(sock: socket.socket, total: int) -> bytes:
    """Read ``total`` bytes, pausing after every read, as a reader that cannot keep up."""
    received = bytearray()
    while len(received) < total:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:  # bytes went missing: the assertion shows how many arrived
            break
        if not chunk:
            break
        received += chunk
        time.sleep(0.001)
    return bytes(received)


def _metrics(daemon: Daemon) -> str:
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.mark.parametrize("slow", ["peer", "client"])
def test_eight_mib_through_a_splice_to_a_slow_reader_arrive_whole_and_in_order(
    daemon: Daemon, slow: str
) -> None:
    """8 MiB written at full speed towards a reader that reads slowly through a 32 KiB buffer
    (the peer, or the client's data connection) arrive complete and in order: same SHA-256."""
    control, data, peer_end = _splice(daemon, slow)
    sender, reader = (data, peer_end) if slow == "peer" else (peer_end, data)
    payload = _pattern()
    errors: list[BaseException] = []

    def send() -> None:
        try:
            sender.sendall(payload)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        received = _slow_read(reader, TOTAL)
        thread.join(TIMEOUT)
    finally:
        for sock in (control, data, peer_end):
            sock.close()
    assert not errors
    assert len(received) == TOTAL
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert "splice_backlog" not in _metrics(daemon)


class _StuckTransport:
    """A transport whose write buffer is full and never drains."""

    def __init__(self) -> None:
        self.aborted = False
        self.written = 0

    def is_closing(self) -> bool:
        return self.aborted

    def get_write_buffer_size(self) -> int:
        return SPLICE_HARD_CAP

    def get_extra_info(self, name: str) -> Any:
        return ("192.0.2.1", 4000)

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def abort(self) -> None:
        self.aborted = True


def test_a_side_past_the_hard_cap_is_closed_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A spliced side with SPLICE_HARD_CAP bytes queued is aborted, never written past:
    drop.splice_backlog counts it and tcp_relay.backlog_closed says which side."""
    transport = _StuckTransport()
    service = SimpleNamespace(core=SimpleNamespace(stats=Counter()))
    with caplog.at_level("WARNING", logger="turnd"):
        spliced_write(transport, b"x" * 1000, service, "peer")  # type: ignore[arg-type]
    assert transport.aborted and transport.written == 0
    assert service.core.stats["drop.splice_backlog"] == 1
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "tcp_relay.backlog_closed"]
    assert record.fields["side"] == "peer"  # type: ignore[attr-defined]


def test_bytes_a_peer_sends_before_connection_bind_reach_the_client_first(
    daemon: Daemon,
) -> None:
    """§5.4: what the peer sends between Connect and ConnectionBind is held, not lost: the data
    connection gets it first, then the rest of the stream."""
    control, data, peer_end = _splice(daemon, "none", early=b"sent before ConnectionBind|")
    try:
        peer_end.sendall(b"after")
        expected = b"sent before ConnectionBind|after"
        received = b""
        data.settimeout(5)
        while len(received) < len(expected):
            try:
                chunk = data.recv(4096)
            except TimeoutError:  # bytes went missing: the assertion shows what arrived
                break
            if not chunk:
                break
            received += chunk
    finally:
        for sock in (control, data, peer_end):
            sock.close()
    assert received == expected
