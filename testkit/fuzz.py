"""The fuzz properties of the core, shared by its test and by bench.fuzz: seeds, mutators, the
contract every answer must meet, and storms.

Seeds: every coturn seed file, the RFC vectors, pion's ChannelData corpus and captures, and the
packets a testkit client really sends (Allocate, Refresh, CreatePermission, ChannelBind, Send,
ChannelData, RFC 6062 Connect and ConnectionBind), captured by a world that records them.
Mutations work on bytes: bit flips, truncations, insertions, deletions, splicing two inputs, a
duplicated attribute, edits of the length fields and the message type, a random magic cookie or
transaction id. Afterwards the framing may be repaired and MESSAGE-INTEGRITY(-SHA256) and
FINGERPRINT recomputed in place with the key of the USERNAME the mutant names, so mutants get
past the integrity checks and reach the handlers.

The contract (STYLE.md: garbage is dropped and counted, the decoder raises only its own error):
every input is answered with actions of :mod:`turnd.core.actions` — anything sent to a client
decodes as STUN or ChannelData — or with nothing and a drop counted in ``stats``; and after a
storm of mutants, timer jumps and adapter callbacks with random tickets and ids, the legitimate
client still refreshes and relays. A broken contract is an AssertionError.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import typing
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from stun import attributes as at
from stun.addresses import Address, AddressFamily
from stun.channeldata import PacketKind, classify, parse_channel_data
from stun.errors import StunDecodeError
from stun.framing import StreamDeframer
from stun.keys import PasswordAlgorithm, long_term_key
from stun.message import FINGERPRINT_XOR, MessageClass, Method, decode
from testkit.client import error_code
from testkit.memory import (
    CLIENT,
    PEER,
    PEER2,
    REALM,
    SERVER,
    USERS,
    CoreWorld,
    MemoryClient,
    delivered,
)
from testkit.vectors import FuzzMaterial, StunVector
from turnd.core.actions import (
    Action,
    ConnectPeer,
    FiveTuple,
    OpenRelay,
    SendToClient,
    Transport,
    as_actions,
)
from turnd.core.settings import CoreSettings
from turnd.core.tcp_relay import ConnectionState

#: Fixed seed, sized so that the whole file runs in about ten seconds.
FUZZ = settings(
    derandomize=True,
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Storms are the point of this file: more of them.
STORMS = settings(FUZZ, max_examples=250)

#: Every class an action may have (the members of the ``Action`` union).
ACTION_TYPES: tuple[type, ...] = typing.get_args(Action)
#: The world's users (testkit.memory.USERS); a mutant naming one is re-signed with its key.
#: The legitimate RFC 6062 client's address (alice uses testkit.memory.CLIENT).
BOB = Address("203.0.113.9", 50001)
#: Where mutants come from: both legitimate 5-tuples, another port of each client's host (the
#: nonces are bound to the host, so replayed requests authenticate there) and strangers.
TUPLES = (
    FiveTuple(Transport.UDP, CLIENT, SERVER),
    FiveTuple(Transport.TCP, BOB, SERVER),
    FiveTuple(Transport.UDP, Address(CLIENT.host, 50002), SERVER),
    FiveTuple(Transport.TCP, Address(BOB.host, 50003), SERVER),
    FiveTuple(Transport.UDP, Address("192.0.2.77", 1234), SERVER),
    FiveTuple(Transport.TLS, Address("192.0.2.78", 443), SERVER),
)
#: Peers datagrams and connections come from: permitted ones, the server itself, IPv6, others.
PEERS = (
    PEER,
    PEER2,
    Address(PEER.host, PEER.port + 1),
    SERVER,
    Address("2001:db8::7", 40000),
    Address("10.1.2.3", 9),
)
#: A peer no seed names, for the check after the storm.
CHECK_PEER = Address("198.51.100.99", 45000)
#: Channels the check after the storm may bind (the storm may hold or cool some of them).
CHECK_CHANNELS = range(0x4FFF, 0x4FF0, -1)
#: Time steps the storm takes: around the permission, channel, nonce and allocation lifetimes.
TIME_STEPS = (0.0, 0.5, 29.0, 31.0, 299.0, 301.0, 599.0, 601.0, 3599.0, 3601.0)

_ATTR_HEADER = struct.Struct("!HH")
_MI = at.AttributeType.MESSAGE_INTEGRITY
_MI256 = at.AttributeType.MESSAGE_INTEGRITY_SHA256
_FP = at.AttributeType.FINGERPRINT


def world_settings() -> CoreSettings:
    """Dual stack and a short port range, so random relay addresses often hit live ones."""
    return CoreSettings(
        realm=REALM,
        relay_ipv4=SERVER.host,
        relay_ipv6="2001:db8::1",
        port_min=49152,
        port_max=49407,
    )


# --- seeds ---------------------------------------------------------------------------------------


class RecordingWorld(CoreWorld):
    """A world that keeps every packet its clients send, with the 5-tuple it came from."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[FiveTuple, bytes]] = []

    def client_packet(self, five_tuple: FiveTuple, data: bytes) -> list[Action]:
        self.sent.append((five_tuple, data))
        return super().client_packet(five_tuple, data)


def prepared_world(world: CoreWorld | None = None) -> tuple[CoreWorld, MemoryClient, MemoryClient]:
    """alice (UDP) with an allocation, a permission and channel 0x4001 to PEER; bob (TCP,
    SHA-256) with a TCP allocation, a Connect to PEER2 left connecting and PEER connected in."""
    world = world or CoreWorld(world_settings(), connect_ok=None)
    alice = world.client()
    alice.allocate()
    alice.create_permission(PEER)
    alice.channel_bind(0x4001, PEER)
    bob = world.client("bob", "bob-pw", address=BOB, transport=Transport.TCP, sha256=True)
    bob.allocate(at.RequestedTransport(6))
    bob.create_permission(PEER, PEER2)
    bob.raw(bob.build(Method.CONNECT, [at.XorPeerAddress(PEER2)]))  # answered by the storm
    world.peer_connects(bob.relayed, PEER)
    return world, alice, bob


def client_packets() -> dict[str, bytes]:
    """What the testkit clients send for each request and for data, by name."""
    world = RecordingWorld(world_settings(), connect_ok=None)
    _, alice, bob = prepared_world(world)
    names = [
        "allocate-challenge",
        "allocate",
        "create-permission",
        "channel-bind",
        "tcp-allocate-challenge",
        "tcp-allocate",
        "tcp-create-permission",
        "connect",
    ]
    alice.send(PEER, b"send indication")
    alice.channel_data(0x4001, b"channel data")
    alice.refresh(900)
    alice.request(Method.BINDING)
    arrived = [c for c in world.server.tcp.by_id.values() if c.state is ConnectionState.PENDING]
    data = bob.data_connection(BOB.port + 2)
    data.connection_bind(arrived[0].connection_id)
    alice.refresh(0)
    names += ["send", "channel-data", "refresh", "binding", "bind-challenge", "connection-bind"]
    names += ["refresh-delete"]
    return dict(zip(names, (packet for _, packet in world.sent), strict=True))


@attrs.frozen
class Seeds:
    """Everything mutants start from, by where it came from."""

    by_origin: dict[str, tuple[bytes, ...]]
    dictionary: tuple[bytes, ...]

    @property
    def all(self) -> tuple[bytes, ...]:
        """Every seed, whatever its origin."""
        return tuple(data for group in self.by_origin.values() for data in group)


def load_seeds(vectors: dict[str, StunVector], material: FuzzMaterial) -> Seeds:
    """The seeds: coturn's corpora, the RFC vectors, pion's corpus and captures, client packets."""
    return Seeds(
        {
            "coturn": tuple(material.coturn_seeds().values()),
            "rfc-vectors": tuple(vector.data for vector in vectors.values()),
            "pion-channel-data": tuple(material.pion_channel_data().values()),
            "captures": (*material.capture("01_chromeallocreq"), *material.capture("02_chandata")),
            "client": tuple(client_packets().values()),
        },
        tuple(material.coturn_dictionary()),
    )


# --- mutations -----------------------------------------------------------------------------------

Draw = Callable[[st.SearchStrategy[Any]], Any]


def attribute_spans(data: bytes | bytearray) -> list[tuple[int, int, int]]:
    """(offset, type, value length) of each attribute that fits, read leniently after a header."""
    spans = []
    offset = 20
    while offset + 4 <= len(data):
        attr_type, length = _ATTR_HEADER.unpack_from(data, offset)
        if offset + 4 + length > len(data):
            break
        spans.append((offset, attr_type, length))
        offset += 4 + length + (-length % 4)
    return spans


def _value(data: bytearray, spans: list[tuple[int, int, int]], attr_type: int) -> bytes | None:
    for offset, kind, length in spans:
        if kind == attr_type:
            return bytes(data[offset + 4 : offset + 4 + length])
    return None


def sender_key(data: bytearray, spans: list[tuple[int, int, int]]) -> bytes:
    """The long-term key of the user the message names (the server derives the same one), or a
    key no user has."""
    name = _value(data, spans, at.AttributeType.USERNAME)
    realm = _value(data, spans, at.AttributeType.REALM) or REALM.encode()
    chosen = _value(data, spans, at.AttributeType.PASSWORD_ALGORITHM) or b""
    algorithm = PasswordAlgorithm.SHA256 if chosen[:2] == b"\x00\x02" else PasswordAlgorithm.MD5
    try:
        username = (name or b"").decode()
        return long_term_key(username, realm.decode(), USERS[username], algorithm)
    except (UnicodeDecodeError, KeyError, ValueError):
        return b"no such user"


def reseal(data: bytearray) -> bytearray:
    """Recompute MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT in place, as the sender would."""
    spans = attribute_spans(data)
    key = sender_key(data, spans)
    for offset, attr_type, length in spans:
        if attr_type in (_MI, _MI256):
            covered = data[:2] + (offset - 16 + length).to_bytes(2, "big") + data[4:offset]
            digest = hashlib.sha1 if attr_type == _MI else hashlib.sha256
            mac = hmac.new(key, covered, digest).digest()[:length]
            data[offset + 4 : offset + 4 + len(mac)] = mac
        elif attr_type == _FP and length == 4:
            crc = (zlib.crc32(data[:offset]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            data[offset + 4 : offset + 8] = crc.to_bytes(4, "big")
    return data


def _position(draw: Draw, data: bytearray) -> int:
    return int(draw(st.integers(0, len(data))))


def flip_bit(draw: Draw, data: bytearray, seeds: Seeds) -> bytearray:
    if data:
        position = draw(st.integers(0, len(data) - 1))
        data[position] ^= 1 << draw(st.integers(0, 7))
    return data


def truncate(draw: Draw, data: bytearray, seeds: Seeds) -> bytearray:
    return data[: _position(draw, data)]


def insert(draw: Draw, data: bytearray, seeds: Seeds) -> bytearray:
    chunk: bytes = draw(st.binary(min_size=1, max_size=16) | st.sampled_from(seeds.dictionary))
    position = _position(draw, data)
    return data[:position] + chunk + data[position:]


def delete(draw: Draw, data: bytearray, seeds: Seeds) -> bytearray:
    start = _position(draw, data)
    end: int = start + draw(st.integers(1, 8))
    return data[:start] + data[end:]


def splice(draw: Draw, data: bytearray, seeds: Seeds) -> bytearray:
    """The head of this input and the tail of another (or the two one after the other)."""
    other: bytes = draw(st.sampled_from(seeds.all))
    if draw(st.booleans()):
        return data + other
    cut: int = draw(st.integers(0, len(other)))
    return data[: _position(draw, data)] + other[cut:]


def duplicate_attribute(draw: Draw, data: bytearray, seeds: Seeds) -> bytearray:
    """One attribute again, at another attribute boundary; the header length follows."""
    spans = attribute_spans(data)
    if not spans:
        return data
    offset, _, length = draw(st.sampled_from(spans))
    copy = data[offset : offset + 4 + length + (-length % 4)]
    where = draw(st.sampled_from([*(s[0] for s in spans), len(data)]))
    data = data[:where] + copy + data[where:]
    data[2:4] = (len(data) - 20 & 0xFFFF).to_bytes(2, "big")
    return data


def edit_length(draw: Draw, data: bytearray, seeds: Seeds) -> bytearray:
    """The header (or ChannelData) length field, or one attribute's, set to a telling value."""
    spans = attribute_spans(data)
    where = 2 if not spans or draw(st.booleans()) else draw(st.sampled_from(spans))[0] + 2
    if len(data) < where + 2:
        return data
    current = int.from_bytes(data[where : where + 2], "big")
    value = draw(
        st.sampled_from([0, 1, 3, 4, current - 4, current + 4, len(data) - 20, 0x7FFF, 0xFFFF])
        | st.integers(0, 0xFFFF)
    )
    data[where : where + 2] = (value & 0xFFFF).to_bytes(2, "big")
    return data


def edit_header(draw: Draw, data: bytearray, seeds: Seeds) -> bytearray:
    """A random magic cookie, transaction id or message type (method and class)."""
    if len(data) < 20:
        return data
    field = draw(st.sampled_from(["cookie", "txid", "type"]))
    if field == "cookie":
        data[4:8] = draw(
            st.sampled_from([b"ABCD", b"\x00" * 4]) | st.binary(min_size=4, max_size=4)
        )
    elif field == "txid":
        data[8:20] = draw(st.binary(min_size=12, max_size=12))
    else:
        data[0:2] = draw(st.integers(0, 0x3FFF) | st.integers(0, 0xFFFF)).to_bytes(2, "big")
    return data


def overwrite_value(draw: Draw, data: bytearray, seeds: Seeds) -> bytearray:
    """One attribute's value replaced by bytes of the same size: random, all 0 or all 1."""
    spans = attribute_spans(data)
    if spans:
        offset, _, length = draw(st.sampled_from(spans))
        value = draw(
            st.binary(min_size=length, max_size=length)
            | st.sampled_from([bytes(length), b"\xff" * length])
        )
        data[offset + 4 : offset + 4 + length] = value
    return data


def drop_attribute(draw: Draw, data: bytearray, seeds: Seeds) -> bytearray:
    """One attribute removed; the header length follows."""
    spans = attribute_spans(data)
    if spans:
        offset, _, length = draw(st.sampled_from(spans))
        del data[offset : offset + 4 + length + (-length % 4)]
        data[2:4] = (len(data) - 20 & 0xFFFF).to_bytes(2, "big")
    return data


#: Attribute types a retyped attribute takes: every known one, unknown comprehension-required
#: and optional ones, and the integrity attributes (in the wrong place, with the wrong size).
_RETYPES = (*sorted(at.ATTRIBUTE_CLASSES), 0x0000, 0x00AA, 0x7FFF, 0x802F, 0xFFFF)


def retype_attribute(draw: Draw, data: bytearray, seeds: Seeds) -> bytearray:
    """One attribute's type changed, its value kept."""
    spans = attribute_spans(data)
    if spans:
        offset = draw(st.sampled_from(spans))[0]
        new_type = draw(st.sampled_from(_RETYPES) | st.integers(0, 0xFFFF))
        data[offset : offset + 2] = new_type.to_bytes(2, "big")
    return data


#: Byte-level mutators, then attribute-level ones (which keep the framing intact).
MUTATORS = (
    flip_bit,
    truncate,
    insert,
    delete,
    splice,
    edit_length,
    edit_header,
    duplicate_attribute,
    overwrite_value,
    drop_attribute,
    retype_attribute,
)


@st.composite
def mutants(draw: Draw, seeds: Seeds) -> bytes:
    """A seed (half the time one a real client sent) put through a few mutators, its framing
    maybe repaired, then mostly re-sealed."""
    data = bytearray(draw(st.sampled_from(seeds.by_origin["client"]) | st.sampled_from(seeds.all)))
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.sampled_from(MUTATORS))(draw, data, seeds)
    repair = draw(st.sampled_from(["length", "pad", "none"]))
    if repair == "pad":
        data += bytes(-len(data) % 4)
    if repair != "none" and len(data) >= 20:
        data[2:4] = (len(data) - 20 & 0xFFFF).to_bytes(2, "big")
    if draw(st.integers(0, 3)):
        data = reseal(data)
    return bytes(data)


# --- the contract --------------------------------------------------------------------------------


def decode_or_reject(data: bytes) -> None:
    """The codecs on any bytes: a value, or their own StunDecodeError and nothing else."""
    try:
        decode(data)
    except StunDecodeError as exc:
        assert exc.reason
    try:
        parse_channel_data(data)
    except StunDecodeError as exc:
        assert exc.reason
    deframer = StreamDeframer()
    try:
        deframer.feed(data)
    except StunDecodeError as exc:
        assert exc.reason


def check_to_client(action: SendToClient) -> None:
    """What the core sends a client decodes: a STUN response or indication, or ChannelData
    (padded to 4 bytes on a stream, RFC 8656 §12.5)."""
    data = action.data
    kind = classify(data)
    if kind is PacketKind.STUN:
        message = decode(data)
        assert message.cls is not MessageClass.REQUEST, message
    else:
        assert kind is PacketKind.CHANNEL_DATA, data[:8].hex()
        parse_channel_data(data)
        if action.five_tuple.transport.is_stream:
            assert len(data) % 4 == 0


def check_actions(actions: object) -> list[Action]:
    """Every output is a list of action objects; whatever goes to a client decodes."""
    assert isinstance(actions, list), actions
    for action in actions:
        assert isinstance(action, ACTION_TYPES), action
        if isinstance(action, SendToClient):
            check_to_client(action)
    return actions


class Event(NamedTuple):
    """One input of a storm. ``choice`` picks a 5-tuple, a relay, a ticket or a connection id
    (see :meth:`Storm.pick`); ``other`` picks a peer or says ok (odd) or not."""

    kind: str
    choice: int = 0
    other: int = 0
    data: bytes = b""
    seconds: float = 0.0


class Storm:
    """Drives a prepared world with events, checking every answer against the contract."""

    def __init__(self) -> None:
        self.world, self.alice, self.bob = prepared_world()
        self.server = self.world.server
        self.tickets: list[int] = [opened.ticket for opened in self.world.opened]
        self.answered: set[int] = set(self.tickets)
        self.connections: list[int] = [c.connection_id for c in self.world.connects]
        self.inputs = 0

    @staticmethod
    def pick(known: list[Any], choice: int, fallback: Any) -> Any:
        """Mostly one of the live values, sometimes one nobody holds."""
        if known and choice % 4 != 3:
            return known[choice % len(known)]
        return fallback

    def relay(self, choice: int) -> Address:
        live = list(self.server.by_relay)
        host = SERVER.host if choice % 2 else "2001:db8::1"
        relay: Address = self.pick(live, choice, Address(host, 49152 + choice % 300))
        return relay

    def _track(self, actions: list[Action]) -> None:
        for action in check_actions(actions):
            if isinstance(action, OpenRelay):
                self.tickets.append(action.ticket)
            elif isinstance(action, ConnectPeer):
                self.connections.append(action.connection_id)

    def apply(self, event: Event) -> None:
        self.inputs += 1
        server, now = self.server, self.world.now
        before = dict(server.stats)
        counted: list[Action] | None = None
        if event.kind == "client":
            five_tuple = TUPLES[event.choice % len(TUPLES)]
            counted = as_actions(server.client_message(five_tuple, event.data, now), five_tuple)
        elif event.kind == "peer":
            peer = PEERS[event.other % len(PEERS)]
            relay = self.relay(event.choice)
            counted = as_actions(server.peer_message(relay, peer, event.data, now))
        elif event.kind == "relay_opened":
            ticket = self.pick(self.tickets, event.choice, event.choice)
            self.answered.add(ticket)
            self._track(server.relay_opened(ticket, bool(event.other % 2), now))
        elif event.kind == "connection_closed":
            self._track(server.connection_closed(TUPLES[event.choice % len(TUPLES)], now))
        elif event.kind == "peer_connected":
            connection = self.pick(self.connections, event.choice, event.choice)
            self._track(server.peer_connected(connection, bool(event.other % 2), now))
        elif event.kind == "peer_connection_arrived":
            peer = PEERS[event.other % len(PEERS)]
            connection, actions = server.peer_connection_arrived(
                self.relay(event.choice), peer, now
            )
            assert connection is None or isinstance(connection, int)
            if connection is not None:
                self.connections.append(connection)
            self._track(actions)
        elif event.kind == "peer_connection_closed":
            connection = self.pick(self.connections, event.choice, event.choice)
            self._track(server.peer_connection_closed(connection, now))
        else:
            self.world.now += event.seconds
            self._track(server.handle_timer(self.world.now))
        if counted is not None:
            self._track(counted)
            assert counted or server.stats != before, f"silently dropped: {event}"

    def drain(self) -> None:
        """Answer the relays never answered, as the adapter always does in the end."""
        for ticket in self.tickets:
            if ticket not in self.answered:
                self.answered.add(ticket)
                self._track(self.server.relay_opened(ticket, True, self.world.now))

    def check_still_serving(self) -> None:
        """The legitimate UDP client refreshes (or, its allocation gone, allocates again; or,
        its 5-tuple taken by another user, moves to a new port) and relays both ways."""
        world, alice = self.world, self.alice
        reply = alice.refresh()
        if error_code(reply) == 441:
            alice = world.client(address=Address(CLIENT.host, CLIENT.port + 7))
            reply = alice.allocate()
        elif error_code(reply) == 437:
            reply = alice.allocate()
        assert error_code(reply) is None, reply
        alice.relay = world.server.allocations[alice.five_tuple].relays[AddressFamily.IPV4].address
        assert error_code(alice.create_permission(CHECK_PEER)) is None
        [out] = alice.send(CHECK_PEER, b"after the storm")
        assert (out.relay, out.peer, out.data) == (alice.relay, CHECK_PEER, b"after the storm")
        back = world.peer_packet(alice.relayed, CHECK_PEER, b"answer")
        assert delivered(back, alice) == [("data", (CHECK_PEER, b"answer"))]
        channel = next(
            (n for n in CHECK_CHANNELS if error_code(alice.channel_bind(n, CHECK_PEER)) is None),
            None,
        )
        assert channel is not None, "no channel could be bound after the storm"
        [out] = alice.channel_data(channel, b"on a channel")
        assert (out.peer, out.data) == (CHECK_PEER, b"on a channel")
        back = world.peer_packet(alice.relayed, CHECK_PEER, b"channel answer")
        assert delivered(back, alice) == [("channel", (channel, b"channel answer"))]


def run_storm(events: list[Event]) -> int:
    """Apply ``events`` to a prepared world, then check it still serves; the inputs applied."""
    storm = Storm()
    for event in events:
        storm.apply(event)
    storm.drain()
    storm.check_still_serving()
    return storm.inputs


def run_packet(five_tuple_index: int, data: bytes, peer_index: int, peer_data: bytes) -> None:
    """One mutant from a client and one peer datagram into a prepared world."""
    storm = Storm()
    storm.apply(Event("client", five_tuple_index, data=data))
    storm.apply(Event("peer", five_tuple_index, peer_index, data=peer_data))


def storm_events(seeds: Seeds, max_size: int = 25) -> st.SearchStrategy[list[Event]]:
    """Sequences of mutated client packets and peer datagrams, adapter callbacks with live or
    random tickets and ids, and clock jumps."""
    choice = st.integers(0, 2**32 - 1)
    packet = mutants(seeds)
    client = st.builds(Event, st.just("client"), choice, st.just(0), packet)
    peer = st.builds(Event, st.just("peer"), choice, choice, packet | st.binary(max_size=64))
    callbacks = st.builds(
        Event,
        st.sampled_from(
            [
                "relay_opened",
                "connection_closed",
                "peer_connected",
                "peer_connection_arrived",
                "peer_connection_closed",
            ]
        ),
        choice,
        choice,
    )
    timer = st.builds(
        Event,
        st.just("timer"),
        seconds=st.sampled_from(TIME_STEPS) | st.floats(0, 700, allow_nan=False),
    )
    return st.lists(st.one_of(client, client, client, peer, callbacks, timer), max_size=max_size)
