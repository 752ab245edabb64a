"""An in-memory TURN world for core tests: a server core, a clock, and clients that speak TURN.

No sockets: a test sends bytes into the core and reads the actions it returns. ``OpenRelay`` is
answered at once (success unless the test says otherwise), so an Allocate completes in one call;
so is ``ConnectPeer`` (RFC 6062 Connect), unless the test leaves it hanging to answer it itself.
Peers connecting to a TCP relay are simulated with :meth:`World.peer_connects`.
The peer policy refuses the server's own listener address (``SERVER``) like the daemon's does.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from auth.credentials import Authenticator
from auth.nonce import NonceManager, SecurityFeature
from stun import attributes as at
from stun.addresses import Address, AddressFamily
from stun.channeldata import frame_channel_data, parse_channel_data
from stun.keys import PasswordAlgorithm, long_term_key, userhash
from stun.message import Integrity, Message, MessageClass, Method, decode, encode
from turnd.core.actions import (
    Action,
    ConnectPeer,
    FiveTuple,
    OpenRelay,
    SendToClient,
    SendToPeer,
    Transport,
    as_actions,
)
from turnd.core.peer_policy import PeerPolicy
from turnd.core.server import TurnServer
from turnd.core.settings import CoreSettings

REALM = "example.org"
SERVER = Address("192.0.2.1", 3478)
START = 1_800_000_000.0
CLIENT = Address("203.0.113.5", 50000)
PEER = Address("198.51.100.7", 40000)
PEER2 = Address("198.51.100.8", 40001)


def core_settings(**changes: Any) -> CoreSettings:
    """The harness's CoreSettings (realm ``REALM``, IPv4 relay on ``SERVER``) with ``changes``."""
    return CoreSettings(**{"realm": REALM, "relay_ipv4": SERVER.host, **changes})


def counter_rng(seed: int = 1) -> Any:
    """A deterministic rng(n) -> bytes (SHA-256 in counter mode)."""
    counter = itertools.count()

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(f"{seed}:{next(counter)}".encode()).digest()
        return out[:n]

    return rng


class World:
    """One core, a clock and helpers."""

    def __init__(
        self,
        settings: CoreSettings | None = None,
        *,
        users: dict[str, str] | None = None,
        secrets: Iterable[str] = (),
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        features: Iterable[SecurityFeature] = (SecurityFeature.PASSWORD_ALGORITHMS,),
        bind_ok: bool | Callable[[OpenRelay], bool] = True,
        connect_ok: bool | None = True,
    ) -> None:
        self.now = START
        self.settings = settings or core_settings()
        self.auth = Authenticator.create(
            self.settings.realm,
            users={"alice": "alice-pw", "bob": "bob-pw"} if users is None else users,
            rest_secrets=tuple(secrets),
        )
        self.nonces = NonceManager(b"k" * 32, features=features)
        self.server = TurnServer(
            self.settings,
            self.auth,
            self.nonces,
            PeerPolicy.build(allow=allow, deny=deny, own_addresses=[SERVER]),
            counter_rng(),
        )
        #: Whether the adapter manages to bind each OpenRelay (a callable decides per request).
        self.bind_ok = bind_ok
        self.opened: list[OpenRelay] = []
        #: Whether the adapter manages each ConnectPeer; None leaves it connecting (the test
        #: answers with ``server.peer_connected``).
        self.connect_ok = connect_ok
        self.connects: list[ConnectPeer] = []

    def settle(self, actions: list[Action]) -> list[Action]:
        """Answer every OpenRelay and ConnectPeer at once; return all resulting actions (those
        included)."""
        out: list[Action] = []
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            out.append(action)
            if isinstance(action, OpenRelay):
                self.opened.append(action)
                ok = self.bind_ok(action) if callable(self.bind_ok) else self.bind_ok
                queue.extend(self.server.relay_opened(action.ticket, ok, self.now))
            elif isinstance(action, ConnectPeer):
                self.connects.append(action)
                if self.connect_ok is not None:
                    answer = self.server.peer_connected
                    queue.extend(answer(action.connection_id, self.connect_ok, self.now))
        return out

    def peer_connects(self, relay: Address, peer: Address) -> tuple[int | None, list[Action]]:
        """A peer opens a TCP connection to ``relay`` (RFC 6062 §5.3), as the adapter reports."""
        connection_id, actions = self.server.peer_connection_arrived(relay, peer, self.now)
        return connection_id, self.settle(actions)

    def client_packet(self, five_tuple: FiveTuple, data: bytes) -> list[Action]:
        """``data`` from a client, through the core's one entry point as the daemon sends it."""
        out = self.server.client_message(five_tuple, data, self.now)
        return self.settle(as_actions(out, five_tuple))

    def peer_packet(self, relay: Address, peer: Address, data: bytes) -> list[Action]:
        """``data`` from ``peer`` to ``relay``, through the core's one entry point."""
        return as_actions(self.server.peer_message(relay, peer, data, self.now))

    def advance(self, seconds: float) -> list[Action]:
        """Move the clock and run every timer that fell due."""
        self.now += seconds
        return self.server.handle_timer(self.now)

    def client(self, username: str = "alice", password: str = "alice-pw", **kw: Any) -> Client:
        return Client(self, username, password, **kw)

    def revoke(self, username: str) -> None:
        """Refuse ``username`` from now on, as the control plane does (DESIGN.md)."""
        checker = self.server.auth
        checker.authenticator = checker.authenticator.revoke(username)

    def taken_ports(self, family: AddressFamily = AddressFamily.IPV4) -> set[int]:
        """Relay ports the core holds in ``family`` (allocations, binds pending, reservations)."""
        return set(self.server._pools[family].taken)

    def client_state(self) -> dict[str, Any]:
        """Everything the core keeps per client or allocation (empty before any allocation)."""
        server = self.server
        return {
            "allocations": dict(server.allocations),
            "by_relay": dict(server.by_relay),
            "pending": dict(server._pending),
            "pending_tuples": set(server._pending_tuples),
            "abandoned": set(server._abandoned),
            "reservations": dict(server._reservations),
            "per_user": +server._per_user,
            "per_ip": +server._per_ip,
            "timers": list(server._timers),
            "taken_ports": {f: set(p.taken) for f, p in server._pools.items()},
            "peer_connections": dict(server.tcp.by_id),
            "data_connections": dict(server.tcp.by_data),
            "peer_index": (dict(server.tcp._by_peer), dict(server.tcp._by_allocation)),
        }


def replies(actions: Iterable[Action], five_tuple: FiveTuple | None = None) -> list[bytes]:
    return [
        a.data
        for a in actions
        if isinstance(a, SendToClient) and (five_tuple is None or a.five_tuple == five_tuple)
    ]


def to_peer(actions: Iterable[Action]) -> list[SendToPeer]:
    return [a for a in actions if isinstance(a, SendToPeer)]


@attrs.define
class Client:
    """A TURN client driving the core: handles the 401/438 dance like a real one."""

    world: World
    username: str
    password: str
    address: Address = CLIENT
    transport: Transport = Transport.UDP
    sha256: bool = False
    #: Send USERHASH instead of USERNAME (RFC 8489 §9.2.4, §14.4).
    userhash: bool = False
    fingerprint: bool = True
    nonce: str | None = None
    realm: str | None = None
    txid_counter: int = 0
    relay: Address | None = None
    last_actions: list[Action] = attrs.field(factory=list)

    @property
    def five_tuple(self) -> FiveTuple:
        return FiveTuple(self.transport, self.address, SERVER)

    @property
    def relayed(self) -> Address:
        """The relayed transport address of this client's allocation (fails if none)."""
        assert self.relay is not None, "no allocation"
        return self.relay

    def new_txid(self) -> bytes:
        self.txid_counter += 1
        return self.txid_counter.to_bytes(12, "big")

    def key(self) -> bytes:
        algorithm = PasswordAlgorithm.SHA256 if self.sha256 else PasswordAlgorithm.MD5
        return long_term_key(self.username, self.realm or REALM, self.password, algorithm)

    def raw(self, data: bytes) -> list[Message]:
        """Send bytes; return the decoded replies to this client."""
        self.last_actions = self.world.client_packet(self.five_tuple, data)
        return [decode(r) for r in replies(self.last_actions, self.five_tuple)]

    def credential_attributes(self) -> list[Any]:
        """USERNAME (or USERHASH), REALM, NONCE and, for a SHA-256 client, the algorithms."""
        realm = self.realm or REALM
        name: Any = (
            at.Userhash(userhash(self.username, realm))
            if self.userhash
            else at.Username(self.username)
        )
        out = [name, at.Realm(realm), at.Nonce(self.nonce or "")]
        if self.sha256:
            entries = (
                at.PasswordAlgorithmEntry(PasswordAlgorithm.SHA256),
                at.PasswordAlgorithmEntry(PasswordAlgorithm.MD5),
            )
            out += [at.PasswordAlgorithms(entries), at.PasswordAlgorithm(PasswordAlgorithm.SHA256)]
        return out

    def build(
        self,
        method: Method,
        attributes: Iterable[Any],
        txid: bytes | None = None,
        *,
        credentials: Iterable[Any] | None = None,
    ) -> bytes:
        """Encode a request, signed once a NONCE is known; ``credentials`` replaces the
        attributes of :meth:`credential_attributes` (to send broken ones)."""
        attrs_ = list(attributes)
        if self.nonce is not None:
            attrs_ += self.credential_attributes() if credentials is None else list(credentials)
        message = Message(method, MessageClass.REQUEST, txid or self.new_txid(), tuple(attrs_))
        return encode(
            message,
            key=self.key() if self.nonce is not None else None,
            integrity=Integrity.SHA256 if self.sha256 else Integrity.SHA1,
            fingerprint=self.fingerprint,
        )

    def fetch_nonce(self) -> Message:
        """Send an unauthenticated Allocate and keep the REALM and NONCE of its 401."""
        self.nonce = None
        [reply] = self.raw(self.build(Method.ALLOCATE, [at.RequestedTransport(17)]))
        nonce, realm = reply.get(at.Nonce), reply.get(at.Realm)
        assert nonce is not None and realm is not None, reply
        self.nonce, self.realm = nonce.value, realm.value
        return reply

    def request(self, method: Method, *attributes: Any, retry: bool = True) -> Message:
        """Send a request; learn REALM/NONCE from a 401/438 and retry once, like a client."""
        txid = self.new_txid()
        [reply] = self.raw(self.build(method, attributes, txid))
        error = reply.get(at.ErrorCode)
        if retry and error is not None and error.code in (401, 438):
            nonce = reply.get(at.Nonce)
            realm = reply.get(at.Realm)
            if nonce is not None and realm is not None:
                first_try = self.nonce is None or error.code == 438
                self.nonce, self.realm = nonce.value, realm.value
                if first_try:
                    return self.request(method, *attributes, retry=False)
        return reply

    def allocate(self, *attributes: Any) -> Message:
        attrs_ = attributes or (at.RequestedTransport(17),)
        reply = self.request(Method.ALLOCATE, *attrs_)
        relayed = reply.get(at.XorRelayedAddress)
        if relayed is not None:
            self.relay = relayed.address
        return reply

    def create_permission(self, *peers: Address) -> Message:
        return self.request(Method.CREATE_PERMISSION, *(at.XorPeerAddress(p) for p in peers))

    def channel_bind(self, number: int, peer: Address) -> Message:
        return self.request(Method.CHANNEL_BIND, at.ChannelNumber(number), at.XorPeerAddress(peer))

    def refresh(self, lifetime: int | None = None, *extra: Any) -> Message:
        attrs_ = () if lifetime is None else (at.Lifetime(lifetime),)
        return self.request(Method.REFRESH, *attrs_, *extra)

    def connect(self, peer: Address) -> Message:
        """RFC 6062 §4.3: ask the server to connect to ``peer`` (the adapter answers at once)."""
        return self.request(Method.CONNECT, at.XorPeerAddress(peer))

    def data_connection(self, port: int) -> Client:
        """A second TCP connection of this client (RFC 6062 §4.3: one per peer connection), same
        credentials, from source port ``port``; it learns its own nonce."""
        return Client(
            self.world,
            self.username,
            self.password,
            address=Address(self.address.host, port),
            transport=self.transport,
            sha256=self.sha256,
        )

    def connection_bind(self, connection_id: int) -> Message:
        """RFC 6062 §4.3: make this connection the data connection of ``connection_id``."""
        return self.request(Method.CONNECTION_BIND, at.ConnectionId(connection_id))

    def send(self, peer: Address, data: bytes) -> list[SendToPeer]:
        message = Message(
            Method.SEND,
            MessageClass.INDICATION,
            self.new_txid(),
            (at.XorPeerAddress(peer), at.Data(data)),
        )
        self.raw(encode(message))
        return to_peer(self.last_actions)

    def channel_data(self, number: int, data: bytes) -> list[SendToPeer]:
        self.raw(frame_channel_data(number, data))
        return to_peer(self.last_actions)


def error_code(message: Message) -> int | None:
    error = message.get(at.ErrorCode)
    return None if error is None else error.code


def delivered(actions: list[Action], client: Client) -> list[tuple[str, Any]]:
    """Decode what the core sent the client: ('data', (peer, bytes)) or ('channel', (n, bytes))."""
    out: list[tuple[str, Any]] = []
    for data in replies(actions, client.five_tuple):
        if data[0] & 0xC0 == 0x40:
            out.append(("channel", parse_channel_data(data)))
        else:
            message = decode(data)
            peer = message.get(at.XorPeerAddress)
            payload = message.get(at.Data)
            assert peer is not None and payload is not None
            out.append(("data", (peer.address, payload.value)))
    return out
