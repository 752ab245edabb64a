"""The testkit client every test and bench drives: its long-term credential dance (RFC 8489
§9.2), its checks of the answers (§9.2.5), and its three drivers (in memory, blocking sockets
over UDP, TCP and TLS, asyncio) against a core and a live turnd."""

from __future__ import annotations

import ast
import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from stun import attributes as at
from stun.addresses import Address
from stun.channeldata import frame_channel_data
from stun.message import Message, MessageClass, Method, decode, encode
from testkit.aio import AsyncTurnClient
from testkit.client import (
    ChannelData,
    DataIndication,
    ResponseError,
    TurnError,
    TurnSession,
    error_code,
    raise_for_error,
)
from testkit.daemon import PASSWORD, REALM, USER, Daemon, start_turnd
from testkit.memory import CLIENT, PEER, PEER2, SERVER, CoreWorld, MemoryRouteCache
from testkit.sync import EchoPeer, TurnClient
from turnd.core.actions import FiveTuple, SendToClient, SendToPeer, Transport
from turnd.core.routes import ChannelRoute, RouteTraffic

CHANNEL = 0x4000


def answer(request_txid: bytes, method: Method, cls: MessageClass, *attrs: object, key=None):  # type: ignore[no-untyped-def]
    """What a server would send, as the client decodes it."""
    return decode(encode(Message(method, cls, request_txid, tuple(attrs)), key=key))  # type: ignore[arg-type]


class CountingWorld(CoreWorld):
    """A core that counts what its clients send."""

    sends = 0

    def client_packet(self, five_tuple, data):  # type: ignore[no-untyped-def]
        self.sends += 1
        return super().client_packet(five_tuple, data)


def test_a_401_teaches_realm_and_nonce_and_the_request_goes_again_signed() -> None:
    """§9.2.3: the unsigned Allocate's 401 carries REALM and NONCE; the client signs the second
    try with them and keeps the XOR-RELAYED-ADDRESS of the success."""
    world = CountingWorld()
    alice = world.client()
    reply = alice.allocate()
    assert error_code(reply) is None and world.sends == 2
    assert alice.realm == world.settings.realm and alice.nonce is not None
    assert alice.relay == reply.get(at.XorRelayedAddress).address  # type: ignore[union-attr]


def test_a_401_to_a_signed_request_is_the_answer() -> None:
    """§9.2.3: a wrong password is refused again once signed; the client stops there."""
    world = CountingWorld()
    mallory = world.client(password="wrong")
    assert error_code(mallory.allocate()) == 401 and world.sends == 2
    with pytest.raises(TurnError) as refused:
        raise_for_error(Method.ALLOCATE, mallory.allocate())
    assert refused.value.code == 401


def test_a_438_is_retried_with_its_fresh_nonce_up_to_the_limit() -> None:
    """§9.2.4: a 438 (stale nonce) carries a new NONCE to sign the same request with."""
    session = TurnSession("alice", "alice-pw", realm="r", nonce="old", max_retries=1)
    request = session.refresh(600)
    stale = answer(
        request.txid,
        Method.REFRESH,
        MessageClass.ERROR,
        at.ErrorCode(438, "Stale Nonce"),
        at.Realm("r"),
        at.Nonce("new"),
    )
    again = session.answer(request, stale)
    assert again is not None and again.signed and again.retries == 1
    assert session.nonce == "new" and again.attributes == request.attributes
    assert session.answer(again, stale) is None


def test_a_success_whose_integrity_fails_or_is_missing_is_refused() -> None:
    """§9.2.5: the client discards a success to a signed request unless its
    MESSAGE-INTEGRITY verifies with the long-term key."""
    session = TurnSession("alice", "alice-pw", realm="r", nonce="n")
    request = session.refresh(600)
    lifetime = at.Lifetime(600)
    good = answer(request.txid, Method.REFRESH, MessageClass.SUCCESS, lifetime, key=session.key())
    assert session.answer(request, good) is None
    for key in (b"not the key", None):
        bad = answer(request.txid, Method.REFRESH, MessageClass.SUCCESS, lifetime, key=key)
        with pytest.raises(ResponseError):
            session.answer(request, bad)


def test_the_memory_driver_relays_both_ways() -> None:
    """Allocate, permission, Send and ChannelData through a core, and the peer's answer back."""
    world = CoreWorld()
    alice = world.client()
    alice.allocate()
    assert error_code(alice.channel_bind(CHANNEL, PEER)) is None
    [sent] = alice.send(PEER, b"hello")
    assert (sent.peer, sent.data) == (PEER, b"hello")
    [sent] = alice.channel_data(CHANNEL, b"on a channel")
    assert (sent.peer, sent.data) == (PEER, b"on a channel")


RELAY = Address(SERVER.host, 50000)
FLOW = FiveTuple(Transport.UDP, CLIENT, SERVER)


def test_the_memory_route_cache_relays_only_exact_channel_data_of_installed_routes() -> None:
    """Exact 4+length UDP ChannelData on an installed channel goes to its peer; a peer datagram
    on an installed route comes back framed; anything else is not the cache's (None)."""
    cache = MemoryRouteCache()
    route = ChannelRoute(FLOW, CHANNEL, RELAY, PEER)
    assert cache.install(route, math.inf, math.inf)
    frame = frame_channel_data(CHANNEL, b"abc")
    assert cache.client_datagram(FLOW, frame, 1.0) == [SendToPeer(RELAY, PEER, b"abc")]
    assert cache.client_datagram(FLOW, frame + b"\0", 1.0) is None  # padded: userspace
    assert cache.client_datagram(FLOW, frame_channel_data(CHANNEL + 1, b"x"), 1.0) is None
    assert cache.client_datagram(FLOW._replace(transport=Transport.TCP), frame, 1.0) is None
    assert cache.client_datagram(FLOW, b"\x00\x01\x00\x00", 1.0) is None  # STUN
    assert cache.peer_datagram(RELAY, PEER, b"back", 2.0) == [
        SendToClient(FLOW, frame_channel_data(CHANNEL, b"back"))
    ]
    assert cache.peer_datagram(RELAY, PEER2, b"other", 2.0) is None
    assert cache.collect() == [(route, RouteTraffic(1, 3, 1, 4, last_seen=2.0))]
    assert cache.collect() == []
    cache.client_datagram(FLOW, frame, 3.0)
    assert cache.remove(route) == RouteTraffic(1, 3, last_seen=3.0)
    assert cache.installed == set() and cache.client_datagram(FLOW, frame, 4.0) is None
    with pytest.raises(KeyError):
        cache.remove(route)


def test_the_memory_route_cache_rate_spans_an_allocations_routes_and_both_ways() -> None:
    """One allocation's routes share one bucket pair holding a second of each rate."""
    cache = MemoryRouteCache()
    first = ChannelRoute(FLOW, CHANNEL, RELAY, PEER)
    second = ChannelRoute(FLOW, CHANNEL + 1, RELAY, PEER2)
    cache.install(first, 3, 1000)
    cache.install(second, 3, 1000)
    frame = frame_channel_data(CHANNEL, b"x")
    assert cache.client_datagram(FLOW, frame, 10.0)
    assert cache.peer_datagram(RELAY, PEER2, b"y", 10.0)
    assert cache.client_datagram(FLOW, frame, 10.0)
    assert cache.client_datagram(FLOW, frame, 10.0) == []
    assert cache.peer_datagram(RELAY, PEER2, b"y", 10.0) == []
    assert (cache.total.dropped_to_peer, cache.total.dropped_to_client) == (1, 1)
    assert cache.client_datagram(FLOW, frame, 11.0)  # a second later: refilled
    assert cache.install(ChannelRoute(FLOW, 0x4100, RELAY, PEER), 3, 1000) is not False
    full = MemoryRouteCache(capacity=1)
    assert full.install(first, 3, 1000) and not full.install(second, 3, 1000)


def test_the_memory_world_relays_through_an_attached_route_cache() -> None:
    """CoreWorld(routes=True): an established channel is relayed by the cache, not the core."""
    world = CoreWorld(routes=True)
    alice = world.client()
    alice.allocate()
    alice.channel_bind(CHANNEL, PEER)
    assert world.routes is not None
    [sent] = alice.channel_data(CHANNEL, b"kernel")
    assert (sent.peer, sent.data) == (PEER, b"kernel")
    assert world.routes.total.packets_to_peer == 1
    assert world.server.allocations[alice.five_tuple].packets_to_peer == 0
    world.server.collect_routes(world.now)
    assert world.server.allocations[alice.five_tuple].packets_to_peer == 1


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    running = start_turnd(
        Path(tmp_path_factory.mktemp("testkit")), listen='["udp:0", "tcp:0", "tls:0"]'
    )
    try:
        yield running
    finally:
        assert running.stop() == 0


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_the_socket_driver_relays_over_each_transport(daemon: Daemon, transport: str) -> None:
    """The blocking driver: 401 round, Allocate, a permission to one echo peer and a channel to
    another, Send and ChannelData out, a Data indication and ChannelData back, delete."""
    server = ("127.0.0.1", daemon.ports[transport][0])
    with (
        EchoPeer() as other,
        EchoPeer() as peer,
        TurnClient(server, USER, PASSWORD, transport=transport) as client,
    ):
        assert error_code(client.allocate()) is None and client.realm == REALM
        assert error_code(client.create_permission(other.address)) is None
        assert error_code(client.channel_bind(CHANNEL, peer.address)) is None
        client.send_indication(other.address, b"by Send")
        assert client.receive() == DataIndication(other.address, b"by Send")
        client.send_channel_data(CHANNEL, b"by channel")
        assert client.receive() == ChannelData(CHANNEL, b"by channel")
        assert error_code(client.refresh(0)) is None


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_the_asyncio_driver_relays_over_each_transport(daemon: Daemon, transport: str) -> None:
    """The asyncio driver does the same on an event loop."""
    server = ("127.0.0.1", daemon.ports[transport][0])

    async def run(other: EchoPeer, peer: EchoPeer) -> list[object]:
        client = await AsyncTurnClient.open(server, USER, PASSWORD, transport=transport)
        async with client:
            await client.request_ok(Method.ALLOCATE, at.RequestedTransport(17))
            assert error_code(await client.create_permission(other.address)) is None
            assert error_code(await client.channel_bind(CHANNEL, peer.address)) is None
            client.send_indication(other.address, b"by Send")
            first = await client.receive()
            client.send_channel_data(CHANNEL, b"by channel")
            second = await client.receive()
            assert error_code(await client.refresh(0)) is None
            return [first, second]

    with EchoPeer() as other, EchoPeer() as peer:
        assert asyncio.run(run(other, peer)) == [
            DataIndication(other.address, b"by Send"),
            ChannelData(CHANNEL, b"by channel"),
        ]


def test_bench_imports_nothing_from_tests() -> None:
    """bench and testkit reach shared code through testkit, never through the test suite."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for package in ("bench", "testkit"):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                offenders += [
                    f"{path.relative_to(root)}:{node.lineno}: {name}"
                    for name in names
                    if name.split(".")[0] == "tests"
                ]
    assert offenders == []
