"""The in-memory driver of the testkit client: bytes straight into a ``TurnServer`` core.

No sockets and no clock: :class:`MemoryClient` hands each message to anything with
``client_packet(five_tuple, data) -> actions`` (a :class:`CoreWorld`, the core tests' harness,
a cluster of cores) and reads the ``SendToClient`` actions addressed to its 5-tuple.
:class:`CoreWorld` is one core whose ``OpenRelay`` and ``ConnectPeer`` are answered at once
(bench.gcpause, the fuzz properties); with ``routes=True`` (or :meth:`CoreWorld.attach_routes`)
a :class:`MemoryRouteCache` relays the established UDP channels the core installs in it, as the
kernel fast path does, before anything reaches the core.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from auth.credentials import Authenticator
from auth.nonce import NonceManager, SecurityFeature
from stun import attributes as at
from stun.addresses import Address
from stun.channeldata import (
    CHANNEL_FIRST_BYTE_MAX,
    CHANNEL_FIRST_BYTE_MIN,
    CHANNEL_HEADER,
    CHANNEL_HEADER_SIZE,
    frame_channel_data,
    parse_channel_data,
)
from stun.message import Message, Method, decode
from testkit.client import MAX_RETRIES, Request, SessionState, TurnSession, counter_txids
from turnd.core.actions import (
    UDP,
    Action,
    ConnectPeer,
    FiveTuple,
    OpenRelay,
    SendToClient,
    SendToPeer,
    Transport,
    as_actions,
)
from turnd.core.bucket import TokenBucket
from turnd.core.peer_policy import PeerPolicy
from turnd.core.routes import ChannelRoute, RouteTraffic
from turnd.core.server import TurnServer
from turnd.core.settings import CoreSettings

#: A fixed start of the in-memory clock (2027-01-15), so runs are repeatable.
START = 1_800_000_000.0
REALM = "example.org"
#: The server's listener (TEST-NET-1), its clients (TEST-NET-3) and peers (TEST-NET-2).
SERVER = Address("192.0.2.1", 3478)
CLIENT = Address("203.0.113.5", 50000)
PEER = Address("198.51.100.7", 40000)
PEER2 = Address("198.51.100.8", 40001)
#: Static users of a core made without ``users``.
USERS = {"alice": "alice-pw", "bob": "bob-pw"}
#: The nonce key of an in-memory core: fixed, so runs are repeatable.
NONCE_KEY = b"k" * 32


class PacketSink(Protocol):
    """Where a :class:`MemoryClient` sends: a core, or a world of them."""

    def client_packet(self, five_tuple: FiveTuple, data: bytes) -> list[Action]: ...


def replies(actions: Iterable[Action], five_tuple: FiveTuple | None = None) -> list[bytes]:
    """The bytes of the ``SendToClient`` actions (to ``five_tuple`` when given)."""
    return [
        a.data
        for a in actions
        if isinstance(a, SendToClient) and (five_tuple is None or a.five_tuple == five_tuple)
    ]


def to_peer(actions: Iterable[Action]) -> list[SendToPeer]:
    """The ``SendToPeer`` actions."""
    return [a for a in actions if isinstance(a, SendToPeer)]


class MemoryClient(SessionState):
    """A TURN client whose every message goes straight into ``world`` (see the module doc)."""

    def __init__(
        self,
        world: PacketSink,
        username: str,
        password: str,
        *,
        address: Address,
        server: Address,
        transport: Transport = Transport.UDP,
        default_realm: str = "",
        max_retries: int = MAX_RETRIES,
        **session: Any,
    ) -> None:
        self.world = world
        self.address = address
        self.server = server
        self.transport = transport
        self.session = TurnSession(
            username,
            password,
            default_realm=default_realm,
            max_retries=max_retries,
            new_txid=counter_txids(),
            **session,
        )
        self.last_actions: list[Action] = []

    @property
    def five_tuple(self) -> FiveTuple:
        return FiveTuple(self.transport, self.address, self.server)

    @property
    def relayed(self) -> Address:
        """The relayed transport address of this client's allocation (fails if none)."""
        if self.session.relay is None:
            raise LookupError("no allocation")
        return self.session.relay

    def new_txid(self) -> bytes:
        return self.session.new_txid()

    def key(self) -> bytes:
        return self.session.key()

    def credential_attributes(self) -> list[Any]:
        return self.session.credential_attributes()

    def data_connection(self, port: int) -> MemoryClient:
        """A second TCP connection of this client (RFC 6062 §4.3: one per peer connection), same
        credentials, from source port ``port``; it learns its own nonce."""
        return MemoryClient(
            self.world,
            self.username,
            self.password,
            address=Address(self.address.host, port),
            server=self.server,
            transport=self.transport,
            default_realm=self.session.default_realm,
            max_retries=self.session.max_retries,
            sha256=self.sha256,
        )

    # --- raw I/O -------------------------------------------------------------------------------

    def raw(self, data: bytes) -> list[Message]:
        """Send bytes; return the decoded replies to this client."""
        self.last_actions = self.world.client_packet(self.five_tuple, data)
        return [decode(r) for r in replies(self.last_actions, self.five_tuple)]

    def build(
        self,
        method: Method,
        attributes: Iterable[Any],
        txid: bytes | None = None,
        *,
        credentials: Iterable[Any] | None = None,
    ) -> bytes:
        """Encode a request, signed once a NONCE is known; ``credentials`` replaces the
        credential attributes (to send broken ones)."""
        txid = txid or self.new_txid()
        return self.session.encode_request(method, attributes, txid, credentials=credentials)

    # --- requests ------------------------------------------------------------------------------

    def run(self, request: Request) -> Message:
        """The whole exchange of ``request``: exactly one answer to each send."""
        while True:
            [reply] = self.raw(request.data)
            again = self.session.answer(request, reply)
            if again is None:
                return reply
            request = again

    def fetch_nonce(self) -> Message:
        """Send an unauthenticated Allocate and keep the REALM and NONCE of its 401."""
        self.session.nonce = None
        [reply] = self.raw(self.session.allocate().data)
        if not self.session.learn(reply):
            raise LookupError(f"no NONCE in {reply}")
        return reply

    def request(self, method: Method, *attributes: Any, retry: bool = True) -> Message:
        """Send a request; learn REALM/NONCE from a 401/438 and retry, like a client."""
        request = self.session.request(method, *attributes)
        if retry:
            return self.run(request)
        [reply] = self.raw(request.data)
        self.session.check(request, reply)
        return reply

    def allocate(self, *attributes: Any) -> Message:
        return self.run(self.session.allocate(*attributes))

    def create_permission(self, *peers: Address) -> Message:
        return self.run(self.session.create_permission(*peers))

    def channel_bind(self, number: int, peer: Address) -> Message:
        return self.run(self.session.channel_bind(number, peer))

    def refresh(self, lifetime: int | None = None, *extra: Any) -> Message:
        return self.run(self.session.refresh(lifetime, *extra))

    def connect(self, peer: Address) -> Message:
        """RFC 6062 §4.3: ask the server to connect to ``peer``."""
        return self.run(self.session.connect(peer))

    def connection_bind(self, connection_id: int) -> Message:
        """RFC 6062 §4.3: make this connection the data connection of ``connection_id``."""
        return self.run(self.session.connection_bind(connection_id))

    def send(self, peer: Address, data: bytes) -> list[SendToPeer]:
        """A Send indication; what the core relays to peers."""
        self.raw(self.session.send_indication(peer, data))
        return to_peer(self.last_actions)

    def channel_data(self, number: int, data: bytes) -> list[SendToPeer]:
        """ChannelData; what the core relays to peers (the core gets one whole frame, so a
        stream's padding is left out)."""
        self.raw(self.session.channel_data(number, data))
        return to_peer(self.last_actions)


def counter_rng(seed: int = 1) -> Callable[[int], bytes]:
    """A deterministic rng(n) -> bytes (SHA-256 in counter mode)."""
    counter = itertools.count()

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(f"{seed}:{next(counter)}".encode()).digest()
        return out[:n]

    return rng


class _AllocationRate:
    """One allocation's rates in a :class:`MemoryRouteCache`: token buckets holding one second of
    each, both directions together (like ``Allocation.admit``), over all its routes."""

    def __init__(self, packet_rate: float, byte_rate: float) -> None:
        self.packet_rate = packet_rate
        self.byte_rate = byte_rate
        # Last refilled at 0: the first packet finds them full, like Allocation's budget.
        self.packets = TokenBucket(0.0, 0.0)
        self.octets = TokenBucket(0.0, 0.0)
        self.routes = 0

    def admit(self, size: int, now: float) -> bool:
        """Spend one packet and ``size`` bytes; False: over a rate (nothing spent)."""
        packets = self.packets.refill(now, self.packet_rate, self.packet_rate)
        octets = self.octets.refill(now, self.byte_rate, self.byte_rate)
        if packets < 1 or octets < size:
            return False
        self.packets.tokens = packets - 1
        self.octets.tokens = octets - size
        return True


class MemoryRouteCache:
    """A real in-memory ``turnd.core.routes.RouteCache``: what the kernel program does, for a
    :class:`CoreWorld`. It relays exact-length UDP ChannelData on an installed (5-tuple, channel)
    to the peer and a peer's datagram to an installed (relay, peer) to the client, enforcing each
    allocation's rates; anything else is not its (None: the world hands it to the core).

    ``capacity`` bounds the routes held (a full map refuses); ``refuse(route)`` refuses chosen
    ones. :attr:`total` counts everything it ever relayed or dropped."""

    def __init__(
        self,
        capacity: int | None = None,
        refuse: Callable[[ChannelRoute], bool] | None = None,
    ) -> None:
        self.capacity = capacity
        self.refuse = refuse
        #: Installed routes and what each did since it was last read.
        self.unread: dict[ChannelRoute, RouteTraffic] = {}
        self.by_channel: dict[tuple[FiveTuple, int], ChannelRoute] = {}
        self.by_peer: dict[tuple[Address, Address], ChannelRoute] = {}
        self.rates: dict[FiveTuple, _AllocationRate] = {}
        self.total = RouteTraffic()
        #: Every refresh the core asked for, in order.
        self.refreshed: list[ChannelRoute] = []

    @property
    def installed(self) -> set[ChannelRoute]:
        """The routes held now."""
        return set(self.unread)

    def install(self, route: ChannelRoute, packet_rate: float, byte_rate: float) -> bool:
        if route in self.unread:
            return True
        full = self.capacity is not None and len(self.unread) >= self.capacity
        if full or (self.refuse is not None and self.refuse(route)):
            return False
        self.unread[route] = RouteTraffic()
        self.by_channel[route.five_tuple, route.number] = route
        self.by_peer[route.relay, route.peer] = route
        rate = self.rates.get(route.five_tuple)
        if rate is None:
            rate = self.rates[route.five_tuple] = _AllocationRate(packet_rate, byte_rate)
        rate.packet_rate, rate.byte_rate = packet_rate, byte_rate
        rate.routes += 1
        return True

    def remove(self, route: ChannelRoute) -> RouteTraffic:
        traffic = self.unread.pop(route)  # KeyError: the core removed what it never installed
        del self.by_channel[route.five_tuple, route.number]
        del self.by_peer[route.relay, route.peer]
        rate = self.rates[route.five_tuple]
        rate.routes -= 1
        if not rate.routes:
            del self.rates[route.five_tuple]
        return traffic

    def refresh(self, route: ChannelRoute) -> None:
        if route not in self.unread:
            raise KeyError(route)  # the core refreshed what it never installed
        self.refreshed.append(route)

    def collect(self) -> list[tuple[ChannelRoute, RouteTraffic]]:
        out = []
        for route, traffic in self.unread.items():
            if traffic != RouteTraffic():
                out.append((route, traffic))
                self.unread[route] = RouteTraffic()
        return out

    def client_datagram(
        self, five_tuple: FiveTuple, data: bytes, now: float
    ) -> list[Action] | None:
        """A client's datagram: relayed to the peer ([SendToPeer]), dropped over the rate ([]),
        or None: not an installed route's exact-length UDP ChannelData."""
        if five_tuple.transport is not UDP or len(data) < CHANNEL_HEADER_SIZE:
            return None
        if not CHANNEL_FIRST_BYTE_MIN <= data[0] <= CHANNEL_FIRST_BYTE_MAX:
            return None
        number, length = CHANNEL_HEADER.unpack_from(data)
        route = self.by_channel.get((five_tuple, number))
        if route is None or len(data) != CHANNEL_HEADER_SIZE + length:
            return None
        traffic = self.unread[route]
        traffic.last_seen = now
        if not self.rates[five_tuple].admit(length, now):
            traffic.dropped_to_peer += 1
            self.total.dropped_to_peer += 1
            return []
        for counts in (traffic, self.total):
            counts.packets_to_peer += 1
            counts.bytes_to_peer += length
        return [SendToPeer(route.relay, route.peer, data[CHANNEL_HEADER_SIZE:])]

    def peer_datagram(
        self, relay: Address, peer: Address, data: bytes, now: float
    ) -> list[Action] | None:
        """A peer's datagram to ``relay``: relayed to the client as ChannelData ([SendToClient]),
        dropped over the rate ([]), or None: no installed route."""
        route = self.by_peer.get((relay, peer))
        if route is None:
            return None
        traffic = self.unread[route]
        traffic.last_seen = now
        if not self.rates[route.five_tuple].admit(len(data), now):
            traffic.dropped_to_client += 1
            self.total.dropped_to_client += 1
            return []
        for counts in (traffic, self.total):
            counts.packets_to_client += 1
            counts.bytes_to_client += len(data)
        return [SendToClient(route.five_tuple, frame_channel_data(route.number, data))]


class CoreWorld:
    """One in-memory core, a clock, and an adapter that answers at once.

    ``OpenRelay`` succeeds unless ``bind_ok`` says otherwise (a callable decides per request);
    ``ConnectPeer`` (RFC 6062 Connect) succeeds unless ``connect_ok`` says otherwise, or is left
    connecting when it is None. The peer policy refuses the server's own listener address
    (``SERVER``) like the daemon's does. ``routes`` attaches a :class:`MemoryRouteCache` at once.
    """

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
        routes: bool = False,
    ) -> None:
        self.now = START
        self.settings = settings or CoreSettings(realm=REALM, relay_ipv4=SERVER.host)
        self.auth = Authenticator.create(
            self.settings.realm,
            users=dict(USERS) if users is None else users,
            rest_secrets=tuple(secrets),
        )
        self.nonces = NonceManager(NONCE_KEY, features=features)
        self.server = TurnServer(
            self.settings,
            self.auth,
            self.nonces,
            PeerPolicy.build(allow=allow, deny=deny, own_addresses=[SERVER]),
            counter_rng(),
        )
        self.bind_ok = bind_ok
        self.opened: list[OpenRelay] = []
        self.connect_ok = connect_ok
        self.connects: list[ConnectPeer] = []
        #: The attached route cache, if any (it sees every datagram before the core).
        self.routes: MemoryRouteCache | None = None
        if routes:
            self.attach_routes()

    def attach_routes(self, cache: MemoryRouteCache | None = None) -> MemoryRouteCache:
        """Attach ``cache`` (a new :class:`MemoryRouteCache` by default) to the core."""
        self.routes = MemoryRouteCache() if cache is None else cache
        self.server.attach_routes(self.routes, self.now)
        return self.routes

    def detach_routes(self) -> None:
        """Detach the route cache (the adapter's shutdown): every packet goes to the core."""
        self.server.detach_routes(self.now)
        self.routes = None

    def settle(self, actions: list[Action]) -> list[Action]:
        """Answer every OpenRelay and ConnectPeer; all resulting actions (those included)."""
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
        """``data`` from a client, through the route cache (if attached and it holds the route)
        or the core's one entry point as the daemon sends it."""
        if self.routes is not None:
            relayed = self.routes.client_datagram(five_tuple, data, self.now)
            if relayed is not None:
                return relayed
        out = self.server.client_message(five_tuple, data, self.now)
        return self.settle(as_actions(out, five_tuple))

    def peer_packet(self, relay: Address, peer: Address, data: bytes) -> list[Action]:
        """``data`` from ``peer`` to ``relay``, through the route cache (if it holds the route)
        or the core's one entry point."""
        if self.routes is not None:
            relayed = self.routes.peer_datagram(relay, peer, data, self.now)
            if relayed is not None:
                return relayed
        return as_actions(self.server.peer_message(relay, peer, data, self.now))

    def advance(self, seconds: float) -> list[Action]:
        """Move the clock and run every timer that fell due."""
        self.now += seconds
        return self.server.handle_timer(self.now)

    def client(
        self,
        username: str = "alice",
        password: str = "alice-pw",
        address: Address = CLIENT,
        transport: Transport = Transport.UDP,
        **session: Any,
    ) -> MemoryClient:
        """A client of this core (alice at ``CLIENT`` unless told), retrying a 401/438 once."""
        return MemoryClient(
            self,
            username,
            password,
            address=address,
            server=SERVER,
            transport=transport,
            default_realm=self.settings.realm,
            max_retries=1,
            **session,
        )


def delivered(actions: list[Action], client: MemoryClient) -> list[tuple[str, Any]]:
    """Decode what the core sent the client: ('data', (peer, bytes)) or ('channel', (n, bytes))."""
    out: list[tuple[str, Any]] = []
    for data in replies(actions, client.five_tuple):
        if data[0] & 0xC0 == 0x40:
            out.append(("channel", parse_channel_data(data)))
        else:
            message = decode(data)
            peer = message.get(at.XorPeerAddress)
            payload = message.get(at.Data)
            if peer is None or payload is None:
                raise LookupError(f"not a Data indication: {message}")
            out.append(("data", (peer.address, payload.value)))
    return out
