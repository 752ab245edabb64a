"""Hostile and broken input never stops the daemon; a bug met on one packet costs that packet."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stun import attributes as at
from stun.channeldata import frame_channel_data
from stun.message import Message, MessageClass, Method, decode, encode
from testkit.daemon import Daemon
from testkit.sync import (
    LOOPBACK,
    MAX_DATAGRAM,
    TIMEOUT,
    DataIndication,
    EchoPeer,
    error_code,
)
from tests.service.conftest import ClientFactory
from turnd.assembly import resolve_secrets
from turnd.config import parse_config
from turnd.service import TurnService


def binding_request(txid: bytes = b"robustness!!") -> bytes:
    return encode(Message(Method.BINDING, MessageClass.REQUEST, txid))


def garbage() -> list[bytes]:
    """Datagrams no client should send: noise, cut STUN, other protocols, empty."""
    rng = random.Random(8656)
    request = binding_request()
    return [
        *(rng.randbytes(size) for size in (1, 3, 4, 19, 20, 21, 64, 548, 1500)),
        *(request[:cut] for cut in (1, 2, 4, 19, 20, len(request) - 1)),
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello's first bytes
        b"",
        request[:4] + b"\x00\x00\x00\x00" + request[8:],  # wrong magic cookie
        frame_channel_data(0x4000, b"no such channel"),
        b"\x40\x00\xff\xff",  # ChannelData claiming more than it carries
        b"\x00" * 20,
        b"\xff" * 1200,
    ]


def test_garbage_datagrams_do_not_stop_the_daemon(
    daemon: Daemon, make_client: ClientFactory
) -> None:
    """Random bytes, truncated STUN, HTTP and TLS text, empty and oversized-claim datagrams are
    dropped (or answered 400) without an internal error, and a Binding request sent afterwards
    is answered."""
    client = make_client(daemon)
    for datagram in garbage():
        client.send_raw(datagram)
    reply = client.binding()
    assert error_code(reply) is None
    mapped = reply.get(at.XorMappedAddress)
    assert mapped is not None and mapped.address == client.address
    assert daemon.process.poll() is None
    levels = {e.get("level") for e in daemon.log_events()}
    assert "error" not in levels, "a garbage datagram reached an internal error"


CONFIG = """
[server]
realm = "turnd.test"
listen = ["udp:0"]
addresses = ["127.0.0.1"]
state_dir = "{state_dir}"

[auth]
users = {{ alice = "s3cret" }}
"""


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def turnd_records() -> Iterator[list[logging.LogRecord]]:
    """What the ``turnd`` logger emits during the test."""
    handler = _Records()
    logger = logging.getLogger("turnd")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


def test_core_exception_on_a_datagram_is_logged_counted_and_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, turnd_records: list[logging.LogRecord]
) -> None:
    """When the core raises while handling a datagram, the service logs the traceback, counts
    ``internal_errors`` and answers the next datagram normally."""
    config, _ = resolve_secrets(parse_config(CONFIG.format(state_dir=tmp_path), {}))

    async def scenario() -> tuple[int, Message]:
        loop = asyncio.get_running_loop()
        service = TurnService(config, relay_ipv4=LOOPBACK)
        await service.start()
        calls = 0

        def fails_once(method: Any) -> Any:
            def wrapper(*args: Any) -> Any:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise RuntimeError("injected fault")
                return method(*args)

            return wrapper

        # A bare Binding takes the hot path (binding_route); anything else, handle_client.
        for name in ("handle_client", "binding_route"):
            monkeypatch.setattr(service.core, name, fails_once(getattr(service.core, name)))
        [server] = service.udp_addresses
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
        sock.setblocking(False)
        try:
            await loop.sock_sendto(sock, binding_request(b"first-packet"), server)
            async with asyncio.timeout(TIMEOUT):
                while calls < 1:
                    await asyncio.sleep(0.01)
            errors = service.core.stats["internal_errors"]
            await loop.sock_sendto(sock, binding_request(b"secondpacket"), server)
            async with asyncio.timeout(TIMEOUT):
                data, _ = await loop.sock_recvfrom(sock, MAX_DATAGRAM)
            return errors, decode(data)
        finally:
            sock.close()
            await service.stop()

    errors, reply = asyncio.run(scenario())
    assert errors == 1
    assert reply.transaction_id == b"secondpacket" and error_code(reply) is None
    mapped = reply.get(at.XorMappedAddress)
    assert mapped is not None and mapped.address.host == LOOPBACK
    [logged] = [r for r in turnd_records if r.exc_info]
    assert logged.levelno == logging.ERROR
    assert logged.exc_info and "injected fault" in str(logged.exc_info[1])


def test_datagram_from_peer_without_permission_is_dropped(
    daemon: Daemon, make_client: ClientFactory, echo_peer: EchoPeer
) -> None:
    """A datagram to the relayed address from a peer with no permission is dropped (RFC 8656
    §10.3); the permitted peer's answer, read later from the same relay socket, is the first
    thing the client receives."""
    client = make_client(daemon)
    assert error_code(client.allocate()) is None
    assert client.relay is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind((LOOPBACK, 0))
        stranger.sendto(b"from a stranger", client.relay)
        assert error_code(client.create_permission(echo_peer.address)) is None
        client.send_indication(echo_peer.address, b"from the peer")
        assert client.receive() == DataIndication(echo_peer.address, b"from the peer")
