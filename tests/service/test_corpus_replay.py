"""Replaying the fuzz corpora at a live turnd over UDP, TCP and TLS leaves it serving.

Every coturn seed file, pion's ChannelData corpus and the captured messages go to one turnd that
listens on all three transports: as datagrams; over TCP and TLS each on a connection of its own,
and all of them one after the other on a single connection. turnd may answer, drop, or close a
connection on garbage (a stream cannot be resynchronised). It must not stop, log an internal
error or send anything that does not decode; and afterwards a client still allocates and relays
over UDP and gets Binding answers over TCP and TLS. Loopback only, every wait bounded.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import time
from collections.abc import Iterable, Iterator

import pytest

from stun import attributes as at
from stun.channeldata import PacketKind, classify, parse_channel_data
from stun.framing import StreamDeframer
from stun.message import Message, MessageClass, Method, decode, encode
from testkit.daemon import Daemon, start_turnd
from testkit.sync import (
    LOOPBACK,
    MAX_DATAGRAM,
    TIMEOUT,
    DataIndication,
    EchoPeer,
    error_code,
)
from tests.conftest import FuzzMaterial
from tests.service.conftest import ClientFactory

#: Connections open at once: well under turnd's default per-IP limit (64), which would close the
#: ones beyond it before they carry anything.
BATCH = 16
#: A replay is over when nothing has arrived for this long (turnd answers on loopback within
#: milliseconds; a connection it keeps open, waiting for the rest of a frame, sends nothing).
QUIET = 0.3


@pytest.fixture(scope="module")
def turnd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One turnd listening on UDP, TCP and TLS."""
    daemon = start_turnd(tmp_path_factory.mktemp("replay"), listen='["udp:0", "tcp:0", "tls:0"]')
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture(scope="module")
def corpus(fuzz_material: FuzzMaterial) -> list[bytes]:
    """coturn's seed corpora, pion's ChannelData corpus and both pion captures."""
    seeds = [
        *fuzz_material.coturn_seeds().values(),
        *fuzz_material.pion_channel_data().values(),
        *fuzz_material.capture("01_chromeallocreq"),
        *fuzz_material.capture("02_chandata"),
    ]
    assert len(seeds) > 40
    return seeds


# --- talking to turnd ----------------------------------------------------------------------------


def tls_context() -> ssl.SSLContext:
    """A client context for turnd's self-signed certificate (nothing to verify on loopback)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect(daemon: Daemon, transport: str) -> socket.socket:
    """A TCP connection to turnd's ``transport`` ("tcp" or "tls") listener."""
    if transport not in daemon.ports:
        pytest.skip(f"turnd started no {transport} listener: {daemon.log_path.read_text()}")
    sock = socket.create_connection((LOOPBACK, daemon.ports[transport][0]), timeout=TIMEOUT)
    if transport == "tls":
        return tls_context().wrap_socket(sock)
    return sock


def send(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` and, over plain TCP, end the stream; turnd may have closed already."""
    try:
        sock.sendall(data)
        if not isinstance(sock, ssl.SSLSocket):
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def collect(socks: Iterable[socket.socket]) -> list[bytes]:
    """What turnd sends on each socket until it closes it or falls quiet for ``QUIET``."""
    socks = list(socks)
    received = {sock: bytearray() for sock in socks}
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    hard_deadline = time.monotonic() + TIMEOUT
    last = time.monotonic()
    while selector.get_map() and time.monotonic() - last < QUIET:
        assert time.monotonic() < hard_deadline, "turnd kept sending"
        for key, _ in selector.select(timeout=0.05):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            try:
                chunk = ready.recv(MAX_DATAGRAM)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue
            except OSError:  # reset, or a TLS session cut short
                chunk = b""
            if chunk:
                received[ready] += chunk
                last = time.monotonic()
            else:
                selector.unregister(ready)
    selector.close()
    return [bytes(received[sock]) for sock in socks]


def assert_decodes(frames: Iterable[bytes]) -> None:
    """Everything turnd sent is a STUN response or indication, or ChannelData."""
    for frame in frames:
        if classify(frame) is PacketKind.CHANNEL_DATA:
            parse_channel_data(frame)
        else:
            assert decode(frame).cls is not MessageClass.REQUEST


def assert_stream_decodes(data: bytes) -> None:
    assert_decodes(StreamDeframer().feed(data))


def replay_stream(daemon: Daemon, transport: str, payloads: list[bytes]) -> None:
    """Each payload on a connection of its own, ``BATCH`` connections at a time."""
    for start in range(0, len(payloads), BATCH):
        socks = [connect(daemon, transport) for _ in payloads[start : start + BATCH]]
        try:
            for sock, payload in zip(socks, payloads[start : start + BATCH], strict=True):
                send(sock, payload)
            for answer in collect(socks):
                assert_stream_decodes(answer)
        finally:
            for sock in socks:
                sock.close()


def binding_over_stream(daemon: Daemon, transport: str) -> Message:
    """A Binding request on a fresh connection; its response."""
    txid = b"after-replay"
    with connect(daemon, transport) as sock:
        sock.sendall(encode(Message(Method.BINDING, MessageClass.REQUEST, txid)))
        deframer = StreamDeframer()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = sock.recv(MAX_DATAGRAM)
            assert chunk, f"turnd closed the {transport} connection without answering"
            for frame in deframer.feed(chunk):
                reply = decode(frame)
                if reply.transaction_id == txid:
                    mapped = reply.get(at.XorMappedAddress)
                    assert mapped is not None
                    assert (mapped.address.host, mapped.address.port) == sock.getsockname()[:2]
                    return reply
    raise AssertionError(f"no Binding response over {transport}")


def assert_healthy(daemon: Daemon) -> None:
    """turnd runs and logged no internal error, no traceback and nothing at level error."""
    assert daemon.process.poll() is None, daemon.log_path.read_text()[-4000:]
    text = daemon.log_path.read_text()
    assert "internal error" not in text
    assert "Traceback" not in text
    assert [e for e in daemon.log_events() if e.get("level") == "error"] == []


# --- tests ---------------------------------------------------------------------------------------


def test_udp_replay_is_answered_or_dropped_and_a_client_still_relays(
    turnd: Daemon, corpus: list[bytes], make_client: ClientFactory, echo_peer: EchoPeer
) -> None:
    """Every seed as a datagram gets a decodable answer or none; then a client allocates,
    refreshes and relays to a peer and back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        for seed in corpus:
            sock.sendto(seed, (LOOPBACK, turnd.port))
        answers = []
        sock.settimeout(QUIET)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                answers.append(sock.recv(MAX_DATAGRAM))
            except TimeoutError:
                break
    assert answers, "no seed got an answer (the corpus holds valid Binding requests)"
    assert_decodes(answers)
    client = make_client(turnd)
    assert error_code(client.allocate()) is None
    assert error_code(client.refresh()) is None
    assert error_code(client.create_permission(echo_peer.address)) is None
    client.send_indication(echo_peer.address, b"after the replay")
    assert client.receive() == DataIndication(echo_peer.address, b"after the replay")
    assert_healthy(turnd)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_stream_replay_one_connection_per_seed_leaves_bindings_answered(
    turnd: Daemon, corpus: list[bytes], transport: str
) -> None:
    """Each seed on a connection of its own: answered (decodably), dropped or the connection
    closed; a Binding on a new connection is answered afterwards."""
    replay_stream(turnd, transport, corpus)
    assert error_code(binding_over_stream(turnd, transport)) is None
    assert_healthy(turnd)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_stream_replay_of_the_whole_corpus_on_one_connection(
    turnd: Daemon, corpus: list[bytes], transport: str
) -> None:
    """All seeds back to back on one connection, and again without those that start like
    neither STUN nor ChannelData (turnd closes a stream at the first such frame); a Binding on
    a new connection is answered afterwards."""
    framable = [seed for seed in corpus if classify(seed) is not PacketKind.OTHER]
    replay_stream(turnd, transport, [b"".join(corpus), b"".join(framable)])
    assert error_code(binding_over_stream(turnd, transport)) is None
    assert_healthy(turnd)


def test_every_transport_still_serves_after_all_replays(
    turnd: Daemon, corpus: list[bytes], make_client: ClientFactory
) -> None:
    """All replays again, interleaved on every transport, then a Binding on each: turnd is
    still running and never logged an internal error."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for seed in corpus:
            sock.sendto(seed, (LOOPBACK, turnd.port))
    for transport in ("tcp", "tls"):
        replay_stream(turnd, transport, [*corpus, b"".join(corpus)])
    assert error_code(make_client(turnd).binding()) is None
    for transport in ("tcp", "tls"):
        assert error_code(binding_over_stream(turnd, transport)) is None
    assert_healthy(turnd)
