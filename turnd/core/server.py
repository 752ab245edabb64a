"""The sans-I/O TURN server: every client and peer packet in, a list of actions out.

Theory of operation (RFC 8489, RFC 8656):

* Inputs: :meth:`TurnServer.client_message` (a datagram or a stream frame from a client, named
  by its 5-tuple), :meth:`peer_message` (a datagram that reached a relay socket) — each the one
  entry point for its packets, relayed data coming back as plain tuples (the hot path) and all
  else as :meth:`handle_client`'s and :meth:`handle_peer`'s actions —
  :meth:`relay_opened` (the adapter bound, or failed to bind, a relay socket the core asked for),
  :meth:`connection_closed`, :meth:`handle_timer`, and for RFC 6062 TCP allocations
  :meth:`peer_connected`, :meth:`peer_connection_arrived` and :meth:`peer_connection_closed`.
  Time is always the ``now`` argument; randomness comes from the injected ``rng``. Outputs: the
  actions of :mod:`turnd.core.actions`. Timers that fell due run before any input is handled.
* Demultiplexing (RFC 7983): the first byte says STUN or ChannelData; anything else is dropped.
  Relayed data (ChannelData, Send, Data) and bare Bindings have tuple-returning hot paths here.
* Requests go through :mod:`turnd.core.dispatch` (one table ``(method, class) -> handler``, one
  place turning ``StunError`` into the error response of :mod:`turnd.core.responses`).
  Authentication (RFC 8489 §9.2.4) happens before any state is created: no allocation, pending
  allocation or counter keyed by the client exists until a request carries a valid credential.
* The server owns its state as objects with public methods, which the request modules use:
  ``quotas`` (turnd.core.quotas), ``timers`` (turnd.core.timers, handlers in ``_TIMERS``),
  ``ports`` and reservations (turnd.core.ports), ``pending`` Allocates (turnd.core.allocate),
  ``tcp`` peer connections (turnd.core.tcp_relay), ``responses``, and the fast path's
  ``routes`` (turnd.core.routes: established UDP channels a cache relays). Allocate is
  two-phase (:mod:`turnd.core.allocate`); permissions and channels are
  :mod:`turnd.core.permissions`; Refresh and every end of a relay :mod:`turnd.core.teardown`.
* Drops are counted in :attr:`TurnServer.stats` under ``drop.<reason>``; nothing a client or peer
  sends raises out of this module.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal

from auth.credentials import Authenticator
from auth.nonce import NonceManager
from stun import attributes as at
from stun.addresses import Address
from stun.channeldata import (
    CHANNEL_HEADER,
    CHANNEL_HEADER_SIZE,
    PacketKind,
    classify,
    frame_channel_data,
)
from stun.errors import StunDecodeError
from stun.hotpath import (
    BINDING_REQUEST_HEAD,
    SEND_INDICATION_HEAD,
    build_binding_success,
    build_data_indication,
    parse_binding,
    parse_send,
)
from stun.message import Message, MessageClass, Method, decode
from turnd.core import allocate, dispatch, handoff, permissions, routes, tcp_relay, teardown
from turnd.core.actions import (
    UDP,
    Action,
    ClientOutcome,
    FiveTuple,
    PeerOutcome,
    SendToClient,
    SendToPeer,
)
from turnd.core.allocate import PendingAllocations
from turnd.core.allocation import Allocation
from turnd.core.authn import RequestAuthenticator
from turnd.core.gate import UnauthenticatedGate
from turnd.core.peer_policy import PeerPolicy
from turnd.core.ports import RelayPorts
from turnd.core.quotas import AllocationQuotas
from turnd.core.ratelimit import ByteCredit, FailureThrottle, SourceLimiter
from turnd.core.request import Request, StunError
from turnd.core.responses import Responder
from turnd.core.routes import RouteCache
from turnd.core.settings import CoreSettings
from turnd.core.tcp_relay import PeerConnections
from turnd.core.timers import Schedule, TimerKind

#: Transaction ids of server-originated indications (Data, ConnectionAttempt) drawn per rng call:
#: each must be cryptographically random (RFC 8489 §6; CVE-2025-69217 was a guessable one), and
#: one rng call per relayed datagram would be one getrandom() system call each.
TXID_BATCH = 256
TXID_SIZE = 12

#: A timer's handler: (server, subject, detail, now) -> actions (turnd.core.timers).
TimerHandler = Callable[["TurnServer", Any, Any, float], list[Action]]


class TurnServer:
    """One node's TURN server state machine."""

    def __init__(
        self,
        settings: CoreSettings,
        authenticator: Authenticator,
        nonces: NonceManager,
        policy: PeerPolicy,
        rng: Callable[[int], bytes],
    ) -> None:
        self.settings = settings
        self.policy = policy
        #: The injected randomness (RFC 8489 §6: os.urandom in the daemon).
        self.rng = rng
        self.stats: Counter[str] = Counter()
        throttle = FailureThrottle(
            settings.auth_failure_rate,
            settings.auth_failure_burst,
            settings.auth_failure_user_rate,
            settings.auth_failure_user_burst,
        )
        self.auth = RequestAuthenticator(authenticator, nonces, self.stats, throttle)
        limiter = SourceLimiter(settings.unauthenticated_rate, settings.unauthenticated_burst)
        self.credit = ByteCredit(settings.unauthenticated_credit)
        self.gate = UnauthenticatedGate(limiter, self.credit, self.stats)
        #: Per-allocation traffic rates; 0 in the settings means no limit.
        self.packet_rate = settings.allocation_packet_rate or math.inf
        self.byte_rate = settings.allocation_byte_rate or math.inf
        #: A draining server answers new Allocates with 508 and keeps serving (set_draining).
        self.draining = False
        #: The fast path's route cache (turnd.core.routes; None: none), how many routes it holds
        #: and whether their read-back timer is pending.
        self.routes: RouteCache | None = None
        self.routes_installed = 0
        self.routes_timer = False
        self.allocations: dict[FiveTuple, Allocation] = {}
        self.by_relay: dict[Address, Allocation] = {}
        self.tcp = PeerConnections()
        self.pending = PendingAllocations()
        self.ports = RelayPorts(settings, rng)
        self.quotas = AllocationQuotas(settings, self.stats)
        self.responses = Responder(settings, self.auth)
        self.timers = Schedule()
        #: The schedule's heap itself (never replaced): the hot path reads it as one attribute.
        self._timers = self.timers.heap
        self._txids = b""
        self._txid_offset = 0

    # --- inputs ------------------------------------------------------------------------------

    def restrict_ports(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Pick new relay ports only from ``ranges`` (a cluster node's slices); live relays stay."""
        self.ports.restrict(ranges)

    def handle_client(self, five_tuple: FiveTuple, data: bytes, now: float) -> list[Action]:
        """A datagram (UDP) or a whole frame (TCP/TLS) from a client."""
        if self._timers and self._timers[0][0] <= now:
            # Expiries come first: an allocation past its lifetime never answers, even when the
            # adapter's timer has not fired yet (packets and timers race in an event loop).
            return self.handle_timer(now) + self.handle_client(five_tuple, data, now)
        kind = classify(data)
        if kind is PacketKind.CHANNEL_DATA:
            return self._client_channel_data(five_tuple, data, now)
        if kind is PacketKind.OTHER:
            return self.drop("not_stun")
        try:
            message = decode(data)
        except StunDecodeError as exc:
            header = exc.header
            if header is not None and header.cls is MessageClass.REQUEST:
                if not self.gate.may_answer(five_tuple, now):
                    return []
                self.stats["request.malformed"] += 1
                answer = self.responses.malformed(header, 400, exc.reason, len(data))
                return self.gate.paid(five_tuple, len(data), self.reply(five_tuple, answer), now)
            return self.drop("malformed_stun")
        if message.cls is MessageClass.REQUEST:
            return self._handle_request(five_tuple, message, len(data), now)
        if message.cls is MessageClass.INDICATION:
            if message.method == Method.SEND:
                return self._send_indication(five_tuple, message, now)
            if message.method == Method.BINDING:
                self.stats["stun.binding_indications"] += 1
                return []
            return self.drop("unexpected_indication")
        return self.drop("unexpected_response")

    def handle_peer(self, relay: Address, peer: Address, data: bytes, now: float) -> list[Action]:
        """A datagram that a peer sent to relay address ``relay`` (RFC 8656 §10.3, §12.6)."""
        if self._timers and self._timers[0][0] <= now:
            return self.handle_timer(now) + self.handle_peer(relay, peer, data, now)
        route = self.peer_route(relay, peer, data, now)
        return [] if route is None else [SendToClient(*route)]

    # --- the one entry point per datagram (DESIGN.md "Hot path exception") ------------------
    # The adapter hands every client message and peer datagram to these two and carries out
    # the outcome by its type (turnd.core.actions: ClientOutcome, PeerOutcome); timers run first.

    def client_message(self, five_tuple: FiveTuple, data: bytes, now: float) -> ClientOutcome:
        """A datagram (UDP, here or forwarded by another node) or a whole frame (TCP/TLS) from
        a client: ChannelData and plain Send indications go straight to their peer and bare UDP
        Binding requests are answered in place (stun.hotpath); the rest is handle_client's."""
        due = self._timers and self._timers[0][0] <= now  # no bool(): a builtin call
        # CHANNEL_FIRST_BYTE_MIN..MAX (stun.channeldata), written out: two global reads cost more
        if data and 0x40 <= data[0] <= 0x7F and not due:
            return self.channel_data_route(five_tuple, data, now)
        head = data[:2]
        if head == SEND_INDICATION_HEAD and not due:
            route = self.send_route(five_tuple, data, now)
            if route is not False:
                return route
        elif head == BINDING_REQUEST_HEAD and five_tuple.transport is UDP:
            answer = self.binding_route(five_tuple, data, now)
            if answer is not False:
                return None if answer is True else answer
        return self.handle_client(five_tuple, data, now)

    def peer_message(self, relay: Address, peer: Address, data: bytes, now: float) -> PeerOutcome:
        """A datagram from ``peer`` to relay address ``relay`` (received here or forwarded by
        another node): the client's 5-tuple and framed bytes, unless timers fell due."""
        if self._timers and self._timers[0][0] <= now:
            return self.handle_peer(relay, peer, data, now)
        return self.peer_route(relay, peer, data, now)

    # --- hot path: the routes the entry points take when no timer is due; the same checks and
    # counters as the action-returning paths (which are built on them), plain tuples out.

    def timers_due(self, now: float) -> bool:
        """Whether handle_timer has work at ``now`` (the entry points then run the timers
        first, through the action-returning inputs)."""
        return bool(self._timers) and self._timers[0][0] <= now

    def peer_route(
        self, relay: Address, peer: Address, data: bytes, now: float
    ) -> tuple[FiveTuple, bytes] | None:
        """Where a peer's datagram goes (5-tuple, framed bytes), or None: dropped, counted."""
        alloc = self.by_relay.get(relay)
        if alloc is None:
            self.stats["drop.peer_no_allocation"] += 1
            return None
        if not alloc.has_permission(peer.host, now):
            self.stats["drop.peer_no_permission"] += 1
            return None
        if not alloc.admit(len(data), now, self.packet_rate, self.byte_rate):
            self.stats["drop.allocation_rate"] += 1
            return None
        binding = alloc.channel_by_peer.get(peer)
        if binding is not None and binding.expires > now:
            frame = frame_channel_data(
                binding.number, data, pad=alloc.five_tuple.transport.is_stream
            )
        else:
            frame = build_data_indication(self.new_txid(), peer, data)
        part = alloc.relays[relay.family]
        part.packets_to_client += 1
        part.bytes_to_client += len(data)
        return alloc.five_tuple, frame

    def relay_opened(self, ticket: int, ok: bool, now: float) -> list[Action]:
        """The adapter's answer to ``OpenRelay(ticket)``."""
        return self._due(now) + allocate.relay_opened(self, ticket, ok, now)

    def connection_closed(self, five_tuple: FiveTuple, now: float) -> list[Action]:
        """A TCP/TLS client connection closed: its allocation goes with it (RFC 8656 §3.1), or,
        for an RFC 6062 client data connection, its peer connection (RFC 6062 §5.5)."""
        actions = self._due(now)
        alloc = self.allocations.get(five_tuple)
        if alloc is not None:
            return actions + teardown.delete(
                self, alloc, now, "connection_closed", close_connection=False
            )
        if self.pending.abandon(five_tuple):  # its relays are closed once the adapter answers
            return actions
        return actions + tcp_relay.data_connection_closed(self, five_tuple)

    def peer_connected(self, connection_id: int, ok: bool, now: float) -> list[Action]:
        """The adapter's answer to ``ConnectPeer`` (RFC 6062 §5.2)."""
        return self._due(now) + tcp_relay.peer_connected(self, connection_id, ok, now)

    def peer_connection_arrived(
        self, relay: Address, peer: Address, now: float
    ) -> tuple[int | None, list[Action]]:
        """A peer connected to a TCP allocation's relayed address ``relay`` (RFC 6062 §5.3).

        Returns None when the connection is refused (the adapter closes it at once), else the id
        under which the adapter keeps it, with the actions (the ConnectionAttempt indication).
        """
        expired = self._due(now)
        connection_id, actions = tcp_relay.peer_connection_arrived(self, relay, peer, now)
        return connection_id, expired + actions

    def peer_connection_closed(self, connection_id: int, now: float) -> list[Action]:
        """Peer connection ``connection_id`` closed or failed (RFC 6062 §5.5)."""
        return self._due(now) + tcp_relay.peer_connection_closed(self, connection_id)

    def traffic(self) -> dict[str, int]:
        """Packets and bytes relayed each way since start: ended relays plus live ones.

        Computed when asked (a metrics scrape), so the relay path only bumps its own relay's
        counters."""
        return teardown.traffic(self)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` next has work, or None."""
        return self.timers.next_deadline()

    def handle_timer(self, now: float) -> list[Action]:
        """Expire relays, permissions, channel bindings, reservations and unbound peer
        connections due by ``now``: each kind's handler in ``_TIMERS`` (turnd.core.timers)."""
        actions: list[Action] = []
        for kind, subject, detail in self.timers.pop_due(now):
            actions += _TIMERS[kind](self, subject, detail, now)
        return actions

    def _due(self, now: float) -> list[Action]:
        """Run the timers that fell due before an input is handled (packets and timers race in
        an event loop: an allocation past its lifetime must not answer)."""
        if self._timers and self._timers[0][0] <= now:
            return self.handle_timer(now)
        return []

    # --- admin -------------------------------------------------------------------------------

    def set_draining(self, on: bool, now: float) -> None:
        """Refuse new Allocates (508) or take them again; a draining server relays in userspace."""
        routes.set_draining(self, on, now)

    def attach_routes(self, cache: RouteCache, now: float) -> None:
        """Relay established UDP channels through ``cache`` (turnd.core.routes), live ones now."""
        routes.attach(self, cache, now)

    def detach_routes(self, now: float) -> None:
        """Take every route back from the cache, crediting what it relayed; use none."""
        routes.detach(self, now)

    def collect_routes(self, now: float) -> None:
        """Credit what the route cache relayed since it was last read (before a scrape)."""
        routes.collect(self, now)

    def kill(self, five_tuple: FiveTuple, now: float) -> list[Action]:
        """End an allocation now (operator action, revocation)."""
        alloc = self.allocations.get(five_tuple)
        if alloc is None:
            return []
        return teardown.delete(self, alloc, now, "killed")

    def revoke(self, username: str, now: float) -> list[Action]:
        """Refuse ``username`` from now on (401, reason revoked) and end its allocations."""
        self.auth.authenticator = self.auth.authenticator.revoke(username)
        actions: list[Action] = []
        for alloc in [a for a in self.allocations.values() if a.username == username]:
            actions += teardown.delete(self, alloc, now, "revoked")
        return actions

    def export_allocations(self, now: float) -> list[dict[str, Any]]:
        """Records of the allocations that can move to another core (turnd.core.handoff)."""
        return handoff.export_allocations(self, now)

    def import_allocations(self, records: list[dict[str, Any]], now: float) -> list[Allocation]:
        """Take over the allocations of ``records`` (ValueError: none taken)."""
        return handoff.import_allocations(self, records, now)

    def resume_exported(self, five_tuples: list[FiveTuple], now: float) -> int:
        """Keep allocations whose hand-off was called off (their kernel routes again)."""
        return handoff.resume_exported(self, five_tuples, now)

    def forget_exported(self, five_tuples: list[FiveTuple]) -> list[Address]:
        """Drop allocations another core took over, without ending them; their relays."""
        return handoff.forget_exported(self, five_tuples)

    # --- plumbing ----------------------------------------------------------------------------

    def drop(self, reason: str) -> list[Action]:
        """Count a drop under ``drop.<reason>``; no actions."""
        self.stats["drop." + reason] += 1
        return []

    def new_txid(self) -> bytes:
        """A fresh random transaction id, cut from a batch the rng gave at once (a method of
        the server, not of an owned object: peer_route calls it per Data indication)."""
        offset = self._txid_offset
        if offset == len(self._txids):
            self._txids, offset = self.rng(TXID_SIZE * TXID_BATCH), 0
        self._txid_offset = offset + TXID_SIZE
        return self._txids[offset : offset + TXID_SIZE]

    @staticmethod
    def reply(five_tuple: FiveTuple, data: bytes) -> list[Action]:
        """The action sending ``data`` to the client of ``five_tuple``."""
        return [SendToClient(five_tuple, data)]

    # --- requests ----------------------------------------------------------------------------

    def _handle_request(
        self, five_tuple: FiveTuple, message: Message, size: int, now: float
    ) -> list[Action]:
        request = Request(five_tuple, message, now, message.has(at.Fingerprint), size=size)
        actions = dispatch.answer(self, request)
        if request.credential is not None:
            self.gate.validated(five_tuple)
            return actions
        return self.gate.paid(five_tuple, size, actions, now)

    # --- Binding (RFC 8489 §6.3.1) -----------------------------------------------------------

    def binding_route(self, five_tuple: FiveTuple, data: bytes, now: float) -> bytes | bool:
        """Hot path of a bare Binding request (stun.hotpath): the response bytes; True: dropped,
        counted (source over its unauthenticated rate); False: not a bare Binding, or anonymous
        Binding is off — call :meth:`handle_client` instead."""
        if not self.settings.allow_anonymous_binding:
            return False
        parsed = parse_binding(data)
        if parsed is None:
            return False
        if not self.gate.may_answer(five_tuple, now):
            return True
        answer = build_binding_success(parsed[0], five_tuple.client, parsed[1])
        if not self.gate.pays(five_tuple, len(data), len(answer), now):
            return True
        self.stats["stun.binding_requests"] += 1
        return answer

    # --- answers given later ------------------------------------------------------------------

    def refuse(self, request: Request, err: StunError) -> list[Action]:
        """The error response to a request answered later than its handler (Allocate, Connect)."""
        self.stats[f"error.{err.code}"] += 1
        return self.reply(request.five_tuple, self.responses.error(request, err))

    # --- requests on an existing allocation --------------------------------------------------

    def own_allocation(self, request: Request) -> Allocation:
        """The allocation of the request's 5-tuple, used with the same credentials (§5)."""
        alloc = self.allocations.get(request.five_tuple)
        if alloc is None:
            raise StunError(437)
        cred = request.credential
        assert cred is not None
        if cred.username != alloc.username:
            raise StunError(441)
        return alloc

    # --- data from the client ----------------------------------------------------------------

    def _send_indication(self, five_tuple: FiveTuple, message: Message, now: float) -> list[Action]:
        """RFC 8656 §10.2: relay DATA to XOR-PEER-ADDRESS if a permission exists."""
        alloc = self.allocations.get(five_tuple)
        if alloc is None:
            return self.drop("send_no_allocation")
        if message.unknown_required():
            return self.drop("send_unknown_attribute")
        peer_attr = message.get(at.XorPeerAddress)
        data_attr = message.get(at.Data)
        if peer_attr is None or data_attr is None:
            return self.drop("send_missing_attribute")
        route = self._send_checks(alloc, peer_attr.address, data_attr.value, now)
        if isinstance(route, str):
            return self.drop(route)
        return [SendToPeer(*route)]

    def send_route(
        self, five_tuple: FiveTuple, data: bytes, now: float
    ) -> tuple[Address, Address, bytes] | Literal[False] | None:
        """Hot path of a Send indication: (relay, peer, payload); None: dropped, counted; False:
        not the plain shape (stun.hotpath) — call :meth:`handle_client` instead."""
        parsed = parse_send(data)
        if parsed is None:
            return False
        alloc = self.allocations.get(five_tuple)
        if alloc is None:
            self.stats["drop.send_no_allocation"] += 1
            return None
        route = self._send_checks(alloc, parsed[0], parsed[1], now)
        if isinstance(route, str):
            self.stats["drop." + route] += 1
            return None
        return route

    def _send_checks(
        self, alloc: Allocation, peer: Address, payload: bytes, now: float
    ) -> tuple[Address, Address, bytes] | str:
        """§10.2's checks of a Send indication's peer and data: the route, or the drop reason."""
        if alloc.tcp:
            return "send_tcp_allocation"
        relay = alloc.relays.get(peer.family)
        if relay is None:
            return "send_family_mismatch"
        if not alloc.has_permission(peer.host, now):
            return "send_no_permission"
        new = peer not in alloc.peers_seen  # a peer seen before passed every check then
        if new:
            if not self.policy.peer_allowed(peer.host, peer.port):
                return "send_denied_peer"
            settings = self.settings
            if not alloc.admit_peer(peer, now, settings.new_peer_rate, settings.new_peer_burst):
                return "send_new_peer_rate"
        if not alloc.admit(len(payload), now, self.packet_rate, self.byte_rate):
            return "send_allocation_rate"
        if new:
            alloc.remember_peer(peer)
        relay.packets_to_peer += 1
        relay.bytes_to_peer += len(payload)
        return relay.address, peer, payload

    def _client_channel_data(self, five_tuple: FiveTuple, data: bytes, now: float) -> list[Action]:
        """RFC 8656 §12.5: relay a ChannelData message to the channel's peer."""
        route = self.channel_data_route(five_tuple, data, now)
        return [] if route is None else [SendToPeer(*route)]

    def channel_data_route(
        self, five_tuple: FiveTuple, data: bytes, now: float
    ) -> tuple[Address, Address, bytes] | None:
        """Hot path of :meth:`_client_channel_data`: (relay, peer, payload), or None: dropped,
        counted. ``data`` must start with a channel byte (0x40-0x7F, see classify())."""
        if len(data) < CHANNEL_HEADER_SIZE:
            return self._channel_drop("short")
        # The first byte is 0x40-0x7F: the channel number is in range (§12).
        channel, length = CHANNEL_HEADER.unpack_from(data)
        if CHANNEL_HEADER_SIZE + length > len(data):
            return self._channel_drop("short")
        alloc = self.allocations.get(five_tuple)
        if alloc is None:
            return self._channel_drop("no_allocation")
        if alloc.tcp:
            return self._channel_drop("tcp_allocation")
        binding = alloc.channels.get(channel)
        if binding is None or binding.expires <= now:
            return self._channel_drop("unbound")
        peer = binding.peer
        if not alloc.has_permission(peer.host, now):
            return self._channel_drop("no_permission")
        if not alloc.admit(length, now, self.packet_rate, self.byte_rate):
            return self._channel_drop("allocation_rate")
        payload = data[CHANNEL_HEADER_SIZE : CHANNEL_HEADER_SIZE + length]
        relay = alloc.relays[peer.family]  # channels go with their family's relay (§8.1)
        relay.packets_to_peer += 1
        relay.bytes_to_peer += length
        return relay.address, peer, payload

    def _channel_drop(self, reason: str) -> tuple[Address, Address, bytes] | None:
        """Count a dropped ChannelData; None, for channel_data_route to return."""
        self.stats["drop.channel_data_" + reason] += 1
        return None


#: The one timer table: kind -> handler (turnd.core.timers).
_TIMERS: dict[TimerKind, TimerHandler] = {
    TimerKind.RELAY: teardown.relay_timer,
    TimerKind.PERMISSION: permissions.permission_timer,
    TimerKind.CHANNEL: permissions.channel_timer,
    TimerKind.COOLING: permissions.cooling_timer,
    TimerKind.CONNECTION: tcp_relay.bind_timer,
    TimerKind.RESERVATION: allocate.reservation_timer,
    TimerKind.ROUTES: routes.routes_timer,
}
