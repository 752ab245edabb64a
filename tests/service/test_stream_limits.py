"""TCP/TLS limits: silent, slow and oversized clients are cut off; caps hold; work is kept.

The daemon runs with short limits (1 s idle and handshake timeouts, 3 connections per IP, 1500-byte
frames). Tests wait for the server to close a connection with a deadline (the server's own timer
decides when); nothing here asserts a duration.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stun import attributes as at
from stun.keys import long_term_key
from stun.message import Message, MessageClass, Method, decode, encode
from testkit.daemon import PASSWORD, REALM, USER, Daemon, start_turnd, wait_for_event
from testkit.sync import read_stun_frame, wait_until

LIMITS = """
[limits]
idle_timeout = 1
tls_handshake_timeout = 1
max_connections_per_ip = 3
max_message_size = 1500
"""
#: Upper bound on how long a test waits for the server to act (its timers fire after ~1 s).
DEADLINE = 15.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    running = start_turnd(
        tmp_path_factory.mktemp("turnd"), LIMITS, listen='["udp:0", "tcp:0", "tls:0"]'
    )
    yield running
    assert running.stop() == 0


def connect(daemon: Daemon, kind: str = "tcp") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", daemon.ports[kind][0]), timeout=DEADLINE)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes the connection (EOF or reset) or the deadline passes."""
    sock.settimeout(DEADLINE)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_silent_connection_is_closed_after_the_idle_timeout(daemon: Daemon) -> None:
    """A client that connects and sends nothing is cut off (limits.idle_timeout)."""
    with connect(daemon) as sock:
        assert closed_by_server(sock)
    wait_for_event(daemon, "connection.idle_timeout")


def test_half_a_frame_does_not_keep_a_connection_open(daemon: Daemon) -> None:
    """Only whole frames count as activity: a client stuck mid-frame is cut off too."""
    with connect(daemon) as sock:
        sock.sendall(b"\x00\x01\x00\x08\x21\x12")  # a STUN header cut short
        assert closed_by_server(sock)


def test_frame_over_the_size_limit_closes_the_connection_with_a_log_line(daemon: Daemon) -> None:
    """A frame announcing more than limits.max_message_size is a framing error: closed."""
    with connect(daemon) as sock:
        sock.sendall(struct.pack("!HHI", 0x0001, 4000, 0x2112A442) + bytes(12))
        assert closed_by_server(sock)
    events = wait_for_event(daemon, "connection.framing_error")
    assert "exceeds the limit of 1500" in events[-1]["reason"]


def test_connections_beyond_the_per_ip_limit_are_refused(daemon: Daemon) -> None:
    """limits.max_connections_per_ip: the 4th connection from one IP is closed at once."""
    held = [connect(daemon) for _ in range(3)]
    try:
        for sock in held:  # make sure all three were accepted before the fourth
            sock.sendall(_binding())
            assert decode(read_stun_frame(sock)).cls is MessageClass.SUCCESS
        with connect(daemon) as extra:
            assert closed_by_server(extra)
    finally:
        for sock in held:
            sock.close()


def test_tls_handshake_that_never_starts_times_out(daemon: Daemon) -> None:
    """A TLS client that connects and never says hello is dropped (limits.tls_handshake_timeout)."""
    with connect(daemon, "tls") as sock:
        assert closed_by_server(sock)


def test_tls_client_is_served_with_alpn_stun_turn(daemon: Daemon) -> None:
    """TLS 1.2+ with ALPN "stun.turn" (RFC 7443): a Binding request over TLS is answered."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["stun.turn"])
    with context.wrap_socket(connect(daemon, "tls")) as sock:
        assert sock.selected_alpn_protocol() == "stun.turn"
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        sock.sendall(_binding())
        assert decode(read_stun_frame(sock)).cls is MessageClass.SUCCESS


def test_connection_holding_an_allocation_outlives_the_idle_timeout(daemon: Daemon) -> None:
    """An allocation keeps its TCP connection: after the idle timeout a Refresh still works."""
    with connect(daemon) as sock:
        key = long_term_key(USER, REALM, PASSWORD)
        sock.sendall(_request(Method.ALLOCATE, [at.RequestedTransport(17)]))
        challenge = decode(read_stun_frame(sock))
        nonce = challenge.get(at.Nonce)
        assert nonce is not None
        creds = [at.Username(USER), at.Realm(REALM), at.Nonce(nonce.value)]
        sock.sendall(_request(Method.ALLOCATE, [at.RequestedTransport(17), *creds], key))
        assert decode(read_stun_frame(sock)).cls is MessageClass.SUCCESS
        time.sleep(2.5)  # past limits.idle_timeout, while holding the allocation
        sock.sendall(_request(Method.REFRESH, creds, key))
        assert decode(read_stun_frame(sock)).cls is MessageClass.SUCCESS


_txid = iter(range(1, 1 << 30))


def _request(method: Method, attributes: list[object], key: bytes | None = None) -> bytes:
    txid = next(_txid).to_bytes(12, "big")
    message = Message(method, MessageClass.REQUEST, txid, tuple(attributes))  # type: ignore[arg-type]
    return encode(message, key=key)


def _binding() -> bytes:
    return _request(Method.BINDING, [])


#: Handshake timeout of the daemons below: far longer than any wait of the tests, so that a
#: connection closed within DEADLINE was closed by a connection limit, not by the timeout.
LONG_HANDSHAKE = 120


@pytest.fixture(params=["max_connections_per_ip", "max_connections"])
def handshake_daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    """A TLS daemon whose only connection limit is 3 (per IP, or for the node)."""
    limits = f"[limits]\n{request.param} = 3\ntls_handshake_timeout = {LONG_HANDSHAKE}\n"
    running = start_turnd(tmp_path, limits, listen='["udp:0", "tls:0"]')
    yield running
    assert running.stop() == 0


def _scrape(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _refused(daemon: Daemon) -> float:
    return _scrape(daemon).get(("turnd_drops_total", (("reason", "connection_limit"),)), 0.0)


def _tls_connections(daemon: Daemon) -> float:
    samples = _scrape(daemon)
    return samples.get(("turnd_client_connections", (("transport", "tls"),)), 0.0)


def _still_open(sock: socket.socket) -> bool:
    """True while the server has neither closed nor reset ``sock`` (nothing was ever sent)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


def test_stalled_tls_handshakes_count_against_the_connection_limits(
    handshake_daemon: Daemon,
) -> None:
    """A TLS connection takes its slot at TCP accept: with 3 connections that never send a
    ClientHello, a 4th is closed at once and counted (drop.connection_limit), the 3 stay open;
    once they are closed their slots come back and a real TLS client is served."""
    daemon = handshake_daemon
    held = [connect(daemon, "tls") for _ in range(3)]
    try:
        assert wait_until(lambda: _tls_connections(daemon) == 3, DEADLINE)
        before = _refused(daemon)
        with connect(daemon, "tls") as extra:
            assert closed_by_server(extra)
        assert _refused(daemon) == before + 1
        assert all(_still_open(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()
    assert wait_until(lambda: _tls_connections(daemon) == 0, DEADLINE)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(connect(daemon, "tls")) as sock:
        sock.sendall(_binding())
        assert decode(read_stun_frame(sock)).cls is MessageClass.SUCCESS
    log = daemon.log_path.read_text()
    assert "Traceback" not in log and "Unhandled exception" not in log
