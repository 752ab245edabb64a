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
* Requests go through one dispatch table ``(method, class) -> handler``. Handlers raise
  :class:`StunError`; exactly one place (:meth:`_error_response`) turns it into the error
  response, adding REALM and NONCE (401, 438), UNKNOWN-ATTRIBUTES (420), and MESSAGE-INTEGRITY
  once the request was authenticated.
* Authentication (RFC 8489 §9.2.4) happens before any state is created: no allocation, pending
  allocation or counter keyed by the client exists until a request carries a valid credential.
* Allocate (:mod:`turnd.core.allocate`) is two-phase: the core picks relay ports and asks
  ``OpenRelay``; the answer comes when the adapter calls :meth:`relay_opened`. TCP allocations'
  connections live in :mod:`turnd.core.tcp_relay`.
* An allocation has one relay per address family (two for a dual allocation, §7.2); data to or
  from a peer goes through the relay of the peer's family, and each relay expires, is refreshed
  and is deleted on its own (§8), the allocation ending with its last one.
* Drops are counted in :attr:`TurnServer.stats` under ``drop.<reason>``; nothing a client or peer
  sends raises out of this module.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs

from auth.credentials import Authenticator
from auth.nonce import NonceManager
from stun import attributes as at
from stun.addresses import Address, AddressFamily
from stun.channeldata import (
    CHANNEL_HEADER,
    CHANNEL_HEADER_SIZE,
    PacketKind,
    classify,
    frame_channel_data,
    is_valid_channel,
)
from stun.errors import REASON_PHRASES, StunDecodeError
from stun.hotpath import (
    BINDING_REQUEST_HEAD,
    SEND_INDICATION_HEAD,
    build_binding_success,
    build_data_indication,
    parse_binding,
    parse_send,
)
from stun.message import (
    Header,
    Integrity,
    Message,
    MessageClass,
    Method,
    decode,
    encode,
)
from turnd.core import allocate, tcp_relay
from turnd.core.actions import (
    Action,
    AllocationEnded,
    ClientOutcome,
    CloseConnection,
    CloseRelay,
    FiveTuple,
    PeerOutcome,
    SendToClient,
    SendToPeer,
    Transport,
)
from turnd.core.allocate import PendingAllocate, Reservation
from turnd.core.allocation import Allocation, ChannelBinding, Relay
from turnd.core.authn import RequestAuthenticator
from turnd.core.peer_policy import PeerPolicy
from turnd.core.ports import PortPool
from turnd.core.ratelimit import AMPLIFICATION_FACTOR, ByteCredit, FailureThrottle, SourceLimiter
from turnd.core.request import Request, StunError
from turnd.core.settings import CoreSettings
from turnd.core.tcp_relay import PeerConnections

Handler = Callable[["TurnServer", Request], list[Action]]
_UDP = Transport.UDP  # a module constant: Enum member reads cost a descriptor call on 3.11


#: The most an unauthenticated answer exceeds its request by, besides the padded REALM: a 401 to
#: a bare 20-byte request adds ERROR-CODE (8: an empty reason), REALM's header (4), NONCE (48) and
#: PASSWORD-ALGORITHMS (12). Binding answers, 400s and 420s stay well under it.
UNAUTHENTICATED_OVERHEAD = 72


def amplification_bound(realm: str) -> int:
    """Bytes an unauthenticated answer may exceed its request by, for ``realm``."""
    size = len(realm.encode())
    return UNAUTHENTICATED_OVERHEAD + size + (-size % 4)


#: Characters of the reason in a 400 to an undecodable request: enough to name the problem,
#: short enough that the answer stays close to the request's size (amplification).
MALFORMED_REASON_CHARS = 48

#: Transaction ids of server-originated indications (Data, ConnectionAttempt) drawn per rng call:
#: each must be cryptographically random (RFC 8489 §6; CVE-2025-69217 was a guessable one), and
#: one rng call per relayed datagram would be one getrandom() system call each.
TXID_BATCH = 256
TXID_SIZE = 12

#: The per-relay traffic counters (allocation.Relay) that TurnServer.traffic() sums.
TRAFFIC_COUNTERS = ("packets_to_peer", "bytes_to_peer", "packets_to_client", "bytes_to_client")


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
        self._rng = rng
        self.stats: Counter[str] = Counter()
        throttle = FailureThrottle(
            settings.auth_failure_rate,
            settings.auth_failure_burst,
            settings.auth_failure_user_rate,
            settings.auth_failure_user_burst,
        )
        self.auth = RequestAuthenticator(authenticator, nonces, self.stats, throttle)
        self.limiter = SourceLimiter(settings.unauthenticated_rate, settings.unauthenticated_burst)
        self.credit = ByteCredit(settings.unauthenticated_credit)
        #: Per-allocation traffic rates; 0 in the settings means no limit.
        self.packet_rate = settings.allocation_packet_rate or math.inf
        self.byte_rate = settings.allocation_byte_rate or math.inf
        #: A draining server answers new Allocates with 508 and keeps serving its allocations.
        self.draining = False
        self.allocations: dict[FiveTuple, Allocation] = {}
        self.by_relay: dict[Address, Allocation] = {}
        self.tcp = PeerConnections()
        self._pending: dict[int, tuple[PendingAllocate, AddressFamily]] = {}
        self._pending_tuples: set[FiveTuple] = set()
        #: Stream connections that closed while their Allocate was being opened.
        self._abandoned: set[FiveTuple] = set()
        self._reservations: dict[bytes, Reservation] = {}
        self._per_user: Counter[str] = Counter()
        self._per_ip: Counter[str] = Counter()
        self._pools: dict[AddressFamily, PortPool] = {}
        for family, host in (
            (AddressFamily.IPV4, settings.relay_ipv4),
            (AddressFamily.IPV6, settings.relay_ipv6),
        ):
            if host is not None:
                self._pools[family] = PortPool(settings.port_min, settings.port_max, rng)
        if settings.port_ranges is not None:
            self.restrict_ports(settings.port_ranges)
        self._relay_hosts = {
            AddressFamily.IPV4: settings.relay_ipv4,
            AddressFamily.IPV6: settings.relay_ipv6,
        }
        self._timers: list[tuple[float, int, str, Any, Any]] = []
        self._timer_seq = 0
        #: Heap entries whose allocation has ended (they would keep it alive until they fall
        #: due: up to channel_lifetime + CHANNEL_REUSE_DELAY); compacted away in _delete.
        self._stale_timers = 0
        self._next_ticket = 1
        self._txids = b""
        self._txid_offset = 0

    # --- inputs ------------------------------------------------------------------------------

    def restrict_ports(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Pick new relay ports only from ``ranges`` (a cluster node's slices); live relays stay."""
        for pool in self._pools.values():
            pool.restrict(ranges)

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
            return self._drop("not_stun")
        try:
            message = decode(data)
        except StunDecodeError as exc:
            header = exc.header
            if header is not None and header.cls is MessageClass.REQUEST:
                if not self._may_answer_unauthenticated(five_tuple, now):
                    return []
                self.stats["request.malformed"] += 1
                answer = self._error_bytes(header, 400, exc.reason, len(data))
                return self._paid(five_tuple, len(data), self._reply(five_tuple, answer), now)
            return self._drop("malformed_stun")
        if message.cls is MessageClass.REQUEST:
            return self._handle_request(five_tuple, message, len(data), now)
        if message.cls is MessageClass.INDICATION:
            if message.method == Method.SEND:
                return self._send_indication(five_tuple, message, now)
            if message.method == Method.BINDING:
                self.stats["stun.binding_indications"] += 1
                return []
            return self._drop("unexpected_indication")
        return self._drop("unexpected_response")

    def handle_peer(self, relay: Address, peer: Address, data: bytes, now: float) -> list[Action]:
        """A datagram that a peer sent to relay address ``relay`` (RFC 8656 §10.3, §12.6)."""
        if self._timers and self._timers[0][0] <= now:
            return self.handle_timer(now) + self.handle_peer(relay, peer, data, now)
        route = self.peer_route(relay, peer, data, now)
        return [] if route is None else [SendToClient(*route)]

    # --- the one entry point per datagram (DESIGN.md "Hot path exception") ------------------
    # The adapter hands every client message and every peer datagram to these two, and carries
    # out what comes back by its type, without building action objects for relayed data:
    #   tuple (relay, peer, payload)  -- send payload from relay socket ``relay`` to ``peer``;
    #   tuple (five_tuple, frame)     -- (peer_message) send frame to that client;
    #   bytes                         -- (client_message) the answer to this message's sender;
    #   list of actions               -- everything else, in order (timers ran first);
    #   None                          -- dropped and counted.

    def client_message(self, five_tuple: FiveTuple, data: bytes, now: float) -> ClientOutcome:
        """A datagram (UDP, here or forwarded by another node) or a whole frame (TCP/TLS) from
        a client: ChannelData and plain Send indications go straight to their peer and bare UDP
        Binding requests are answered in place (stun.hotpath); the rest is handle_client's."""
        due = self._timers and self._timers[0][0] <= now  # no bool(): a builtin call
        if data and 0x40 <= data[0] <= 0x7F and not due:
            return self.channel_data_route(five_tuple, data, now)
        head = data[:2]
        if head == SEND_INDICATION_HEAD and not due:
            route = self.send_route(five_tuple, data, now)
            if route is not False:
                return route
        elif head == BINDING_REQUEST_HEAD and five_tuple.transport is _UDP:
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

    # --- hot path (DESIGN.md "Hot path exception") -------------------------------------------
    # The adapter calls these two directly for relayed data when timers_due() is False: the same
    # checks and counters as the action-returning paths (which are built on them), but plain
    # tuples out, so relaying a packet builds no action object and re-arms no timer.

    def timers_due(self, now: float) -> bool:
        """Whether handle_timer has work at ``now`` (then use the action-returning inputs)."""
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
            frame = build_data_indication(self._new_txid(), peer, data)
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
            return actions + self._delete(alloc, now, "connection_closed", close_connection=False)
        if five_tuple in self._pending_tuples:
            self._abandoned.add(five_tuple)  # its relays are closed once the adapter answers
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
        totals = {counter: self.stats["relayed." + counter] for counter in TRAFFIC_COUNTERS}
        for alloc in self.allocations.values():
            for relay in alloc.relays.values():
                for counter in TRAFFIC_COUNTERS:
                    totals[counter] += getattr(relay, counter)
        return totals

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` next has work, or None."""
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> list[Action]:
        """Expire relays, permissions, channel bindings, reservations and unbound peer
        connections due by ``now``.

        Each live object has one timer: a refresh only moves its expiry, and a timer that finds
        its object refreshed re-arms itself at the new expiry (so clients refreshing often, or
        naming one peer many times, cannot grow the queue beyond the quotas). The timers of an
        ended allocation are dropped by :meth:`_forget_timers` (at most half the queue is ever
        stale), so allocating and deleting in a loop cannot grow it either.
        """
        actions: list[Action] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, subject, detail = heapq.heappop(timers)
            if kind == "alloc":
                actions += self._relay_timer(subject, detail, now)
            elif kind == "perm":
                expiry = subject.permissions.get(detail, now)
                if expiry > now:
                    self._schedule(expiry, "perm", subject, detail)
                else:
                    subject.permissions.pop(detail, None)
            elif kind == "chan":
                binding: ChannelBinding = detail
                if subject.channels.get(binding.number) is not binding:
                    continue  # its allocation or family ended
                if binding.expires > now:
                    self._schedule(binding.expires, "chan", subject, binding)
                else:
                    until = subject.expire_channel(binding.number)
                    self._schedule(until, "cool", subject, binding.number)
            elif kind == "cool":
                cool = subject.cooling.get(detail)
                if cool is not None and cool[1] <= now:
                    del subject.cooling[detail]
            elif kind == "conn":
                actions += tcp_relay.bind_timer(self, subject)
            else:  # "resv"
                resv = self._reservations.get(detail)
                if resv is not None and resv.expires <= now:
                    del self._reservations[detail]
                    self._pools[resv.relay.family].release(resv.relay.port)
                    actions.append(CloseRelay(resv.relay))
        return actions

    def _relay_timer(self, alloc: Allocation, relay: Relay, now: float) -> list[Action]:
        """One relay's expiry: it ends (and the allocation with its last relay) or re-arms."""
        if alloc.relays.get(relay.address.family) is not relay:
            return []  # deleted already
        if relay.expires > now:
            self._schedule(relay.expires, "alloc", alloc, relay)
            return []
        return self._delete(alloc, now, "expired", families=[relay.address.family])

    def _due(self, now: float) -> list[Action]:
        """Run the timers that fell due before an input is handled (packets and timers race in
        an event loop: an allocation past its lifetime must not answer)."""
        if self._timers and self._timers[0][0] <= now:
            return self.handle_timer(now)
        return []

    # --- admin -------------------------------------------------------------------------------

    def kill(self, five_tuple: FiveTuple, now: float) -> list[Action]:
        """End an allocation now (operator action, revocation)."""
        alloc = self.allocations.get(five_tuple)
        if alloc is None:
            return []
        return self._delete(alloc, now, "killed")

    def revoke(self, username: str, now: float) -> list[Action]:
        """Refuse ``username`` from now on (401, reason revoked) and end its allocations."""
        self.auth.authenticator = self.auth.authenticator.revoke(username)
        actions: list[Action] = []
        for alloc in [a for a in self.allocations.values() if a.username == username]:
            actions += self._delete(alloc, now, "revoked")
        return actions

    # --- plumbing ----------------------------------------------------------------------------

    def _drop(self, reason: str) -> list[Action]:
        self.stats["drop." + reason] += 1
        return []

    @staticmethod
    def _reply(five_tuple: FiveTuple, data: bytes) -> list[Action]:
        return [SendToClient(five_tuple, data)]

    def _new_txid(self) -> bytes:
        """A fresh random transaction id, cut from a batch the rng gave at once."""
        offset = self._txid_offset
        if offset == len(self._txids):
            self._txids, offset = self._rng(TXID_SIZE * TXID_BATCH), 0
        self._txid_offset = offset + TXID_SIZE
        return self._txids[offset : offset + TXID_SIZE]

    def _schedule(self, when: float, kind: str, subject: Any, detail: Any = None) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, subject, detail))

    # --- requests ----------------------------------------------------------------------------

    def _may_answer_unauthenticated(self, five_tuple: FiveTuple, now: float) -> bool:
        """The per-source limit on unauthenticated answers (turnd.core.ratelimit)."""
        if self.limiter.allow(five_tuple.client.host, now):
            return True
        self.stats["drop.unauthenticated_rate"] += 1
        return False

    def _paid(
        self, five_tuple: FiveTuple, received: int, actions: list[Action], now: float
    ) -> list[Action]:
        """``actions`` answer an unauthenticated request of ``received`` bytes: sent only if the
        source's byte credit pays for them (turnd.core.ratelimit.ByteCredit), else dropped.
        TCP and TLS are exempt: their handshake proved the source address (RFC 9000 §8.1), so
        nothing is reflected to a forged one."""
        answered = sum(len(a.data) for a in actions if type(a) is SendToClient)
        return actions if self._credit_pays(five_tuple, received, answered, now) else []

    def _credit_pays(self, five_tuple: FiveTuple, received: int, answered: int, now: float) -> bool:
        """Whether the source's byte credit pays ``answered`` bytes for ``received`` (streams
        always: see :meth:`_paid`); a refusal is counted."""
        if five_tuple.transport.is_stream or self.credit.pay(
            five_tuple.client.host, received, answered, now
        ):
            return True
        self.stats["drop.unauthenticated_credit"] += 1
        return False

    def _allocation_owner(self, request: Request) -> bool:
        """Whether the request names the user whose allocation its 5-tuple holds: a guesser
        sharing a client's NAT address cannot starve that client's Refresh, CreatePermission
        and ChannelBind (guessing the password of one's own allocation gains nothing)."""
        alloc = self.allocations.get(request.five_tuple)
        if alloc is None:
            return False
        username = request.message.get(at.Username)
        return username is not None and username.value == alloc.username

    def _handle_request(
        self, five_tuple: FiveTuple, message: Message, size: int, now: float
    ) -> list[Action]:
        request = Request(five_tuple, message, now, message.has(at.Fingerprint), size=size)
        actions = self._answer_request(request)
        if request.credential is not None:
            self.credit.validated(five_tuple.client.host)
            return actions
        return self._paid(five_tuple, size, actions, now)

    def _answer_request(self, request: Request) -> list[Action]:
        """Authenticate and dispatch ``request``; its answer (or nothing: dropped, counted)."""
        message, five_tuple, now = request.message, request.five_tuple, request.now
        handler = _DISPATCH.get((message.method, message.cls))
        unsigned = message.mi_offset is None and message.mi256_offset is None
        if unsigned and not self._may_answer_unauthenticated(five_tuple, now):
            return []  # no credential can come of it: the answer would be unauthenticated
        if not unsigned and not self._allocation_owner(request) and self.auth.throttled(request):
            return []  # too many failed authentications from this source: guessing is slowed
        try:
            if handler is None:
                self.stats["request.unknown_method"] += 1
                raise StunError(400, "unknown or unsupported method")
            if handler is not TurnServer._binding or not self.settings.allow_anonymous_binding:
                request.credential = self.auth.authenticate(request)
            unknown = message.unknown_required()
            if unknown:
                raise StunError(420, None, at.UnknownAttributes(unknown))
            return handler(self, request)
        except StunError as err:
            refused = request.credential is None and not unsigned
            if refused and not self._may_answer_unauthenticated(five_tuple, now):
                return []  # credentials were offered and refused: unauthenticated answer too
            self.stats[f"error.{err.code}"] += 1
            return self._reply(five_tuple, self._error_response(request, err))

    def _response(self, request: Request, *attributes: Any) -> bytes:
        """Encode a success response to ``request``, signed if it was authenticated."""
        message = request.message
        attrs_ = list(attributes)
        cred = request.credential
        if self.settings.software and cred is not None:
            # Only to authenticated clients: in an unauthenticated answer it is amplification
            # (and tells a scanner what runs here).
            attrs_.append(at.Software(self.settings.software))
        response = Message(
            message.method, MessageClass.SUCCESS, message.transaction_id, tuple(attrs_)
        )
        return encode(
            response,
            key=cred.key if cred else None,
            integrity=Integrity.SHA256 if cred and cred.sha256 else Integrity.SHA1,
            fingerprint=request.fingerprint,
        )

    def _error_response(self, request: Request, err: StunError) -> bytes:
        """The one place a refusal becomes bytes (RFC 8489 §6.3.4, §9.2.4)."""
        message = request.message
        attrs_: list[Any] = [at.ErrorCode(err.code, err.reason), *err.extra]
        cred = request.credential
        if err.code in (401, 438):
            cred = None  # §9.2.4: challenges carry no MESSAGE-INTEGRITY
            # §14.8: the reason phrase is for a human and may be empty; a challenge goes to
            # sources not yet authenticated, so every byte of it is amplification.
            attrs_[0] = at.ErrorCode(err.code, "")
            attrs_ += self.auth.challenge(self.settings.realm, request.five_tuple, request.now)
        elif cred is not None and self.settings.software:
            attrs_.append(at.Software(self.settings.software))
        response = Message(
            message.method, MessageClass.ERROR, message.transaction_id, tuple(attrs_)
        )
        if cred is None and request.size and attrs_[0].reason:
            response = _trim_reason(response, request.size, request.fingerprint)
        return encode(
            response,
            key=cred.key if cred else None,
            integrity=Integrity.SHA256 if cred and cred.sha256 else Integrity.SHA1,
            fingerprint=request.fingerprint,
        )

    def _error_bytes(self, header: Header, code: int, reason: str, size: int) -> bytes:
        """An error response to a ``size``-byte request too malformed to decode (no integrity
        possible)."""
        reply = Message(
            header.method,
            MessageClass.ERROR,
            header.transaction_id,
            (at.ErrorCode(code, f"{REASON_PHRASES[code]}: {reason}"[:MALFORMED_REASON_CHARS]),),
        )
        return encode(_trim_reason(reply, size, fingerprint=False))

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
        if not self._may_answer_unauthenticated(five_tuple, now):
            return True
        answer = build_binding_success(parsed[0], five_tuple.client, parsed[1])
        if not self._credit_pays(five_tuple, len(data), len(answer), now):
            return True
        self.stats["stun.binding_requests"] += 1
        return answer

    def _binding(self, request: Request) -> list[Action]:
        self.stats["stun.binding_requests"] += 1
        client = request.five_tuple.client
        return self._reply(request.five_tuple, self._response(request, at.XorMappedAddress(client)))

    # --- allocations: lifetimes and deletion ------------------------------------------------

    def _lifetime(self, message: Message) -> float:
        """RFC 8656 §7.2/§8.2: the requested lifetime, at least the default, at most the max."""
        requested = message.get(at.Lifetime)
        settings = self.settings
        if requested is None:
            return settings.allocation_lifetime
        return float(
            min(
                max(requested.seconds, settings.allocation_lifetime),
                settings.max_allocation_lifetime,
            )
        )

    def _refuse(self, request: Request, err: StunError) -> list[Action]:
        """The error response to a request answered later than its handler (Allocate, Connect)."""
        self.stats[f"error.{err.code}"] += 1
        return self._reply(request.five_tuple, self._error_response(request, err))

    def _forget_user(self, username: str, client_host: str) -> None:
        """One allocation less for the quotas of ``username`` and ``client_host``."""
        for counter, key in ((self._per_user, username), (self._per_ip, client_host)):
            counter[key] -= 1
            if not counter[key]:
                del counter[key]

    def _forget_timers(self, alloc: Allocation, relays: int) -> None:
        """``alloc`` ended: empty what its timers look at (so a late one does nothing, and a
        channel timer schedules no reuse delay), count its heap entries as stale (one per relay,
        permission, channel and cooling number), and drop stale entries once they are half the
        heap, so an ended allocation is freed now rather than when its last timer falls due."""
        self._stale_timers += (
            relays + len(alloc.permissions) + len(alloc.channels) + len(alloc.cooling)
        )
        alloc.permissions.clear()
        alloc.channels.clear()
        alloc.channel_by_peer.clear()
        alloc.cooling.clear()
        alloc.peers_seen.clear()
        if self._stale_timers * 2 > len(self._timers):
            live = self.allocations
            self._timers[:] = [
                t
                for t in self._timers
                if not (type(t[3]) is Allocation and live.get(t[3].five_tuple) is not t[3])
            ]
            heapq.heapify(self._timers)
            self._stale_timers = 0

    def _delete(
        self,
        alloc: Allocation,
        now: float,
        reason: str,
        *,
        families: list[AddressFamily] | None = None,
        close_connection: bool = True,
    ) -> list[Action]:
        """End the relays of ``families`` (all by default); the allocation ends with its last.

        Each relay closes with its usage (AllocationEnded), and its peer connections with it
        (RFC 6062 §5.5). A family ending alone takes its permissions and channels (§8.1)."""
        gone = list(alloc.relays) if families is None else families
        actions: list[Action] = []
        for family in gone:
            relay = alloc.relays.pop(family)
            for counter in TRAFFIC_COUNTERS:
                self.stats["relayed." + counter] += getattr(relay, counter)
            del self.by_relay[relay.address]
            self._pools[family].release(relay.address.port)
            actions.append(CloseRelay(relay.address))
            actions.append(
                AllocationEnded(
                    alloc.five_tuple,
                    relay.address,
                    alloc.username,
                    alloc.rest_id,
                    alloc.started,
                    now,
                    reason,
                    relay.packets_to_peer,
                    relay.bytes_to_peer,
                    relay.packets_to_client,
                    relay.bytes_to_client,
                )
            )
        if alloc.tcp:
            actions += tcp_relay.close_all(self, alloc, gone)
        if alloc.relays:
            self.stats["relays.ended." + reason] += 1
            for family in gone:
                for number, until in alloc.forget_family(family, now):
                    self._schedule(until, "cool", alloc, number)
            return actions
        five_tuple = alloc.five_tuple
        del self.allocations[five_tuple]
        self._forget_user(alloc.username, five_tuple.client.host)
        self._forget_timers(alloc, len(gone))
        self.stats["allocations.ended." + reason] += 1
        if close_connection and five_tuple.transport.is_stream and reason != "deleted":
            actions.append(CloseConnection(five_tuple))
        return actions

    # --- requests on an existing allocation --------------------------------------------------

    def _own_allocation(self, request: Request) -> Allocation:
        """The allocation of the request's 5-tuple, used with the same credentials (§5)."""
        alloc = self.allocations.get(request.five_tuple)
        if alloc is None:
            raise StunError(437)
        cred = request.credential
        assert cred is not None
        if cred.username != alloc.username:
            raise StunError(441)
        return alloc

    def _refresh(self, request: Request) -> list[Action]:
        """RFC 8656 §8.2: extend the allocation, or delete it with LIFETIME 0. With
        REQUESTED-ADDRESS-FAMILY only that family's relay (§8.1: one half of a dual allocation);
        a family the allocation has no relay of is 443."""
        alloc = self._own_allocation(request)
        families = list(alloc.relays)
        family = request.message.get(at.RequestedAddressFamily)
        if family is not None:
            if family.family not in alloc.relays:
                raise StunError(443)
            families = [AddressFamily(family.family)]
        requested = request.message.get(at.Lifetime)
        if requested is not None and requested.seconds == 0:
            actions = self._delete(alloc, request.now, "deleted", families=families)
            reply = self._response(request, at.Lifetime(0))
            return [SendToClient(request.five_tuple, reply), *actions]
        lifetime = self._lifetime(request.message)
        for refreshed in families:  # their timers re-arm themselves (handle_timer)
            alloc.relays[refreshed].expires = request.now + lifetime
        return self._reply(request.five_tuple, self._response(request, at.Lifetime(int(lifetime))))

    def _peer_addresses(self, request: Request, alloc: Allocation) -> list[Address]:
        """The request's XOR-PEER-ADDRESSes, each checked against the policy and the new-peer
        budget. Nothing is remembered yet: the handler calls ``alloc.remember_peer`` for each
        key of :meth:`_peer_keys` once the whole request has succeeded."""
        peers = [a.address for a in request.message.attributes if type(a) is at.XorPeerAddress]
        if not peers:
            raise StunError(400, "XOR-PEER-ADDRESS is required")
        # A permission is per IP (§9): CreatePermission's ports mean nothing, so it is checked
        # and counted per IP; a channel's peer is a transport address, checked with its port.
        per_ip = request.message.method == Method.CREATE_PERMISSION
        for peer in peers:
            if peer.family not in alloc.relays:
                raise StunError(443)  # §10.2, §12.2: no relay of the peer's family
            allowed = (
                self.policy.ip_allowed(peer.host)
                if per_ip
                else self.policy.peer_allowed(peer.host, peer.port)
            )
            if not allowed:
                self.stats["denied.peer"] += 1
                raise StunError(403, "peer address is not allowed")
        for key in self._peer_keys(request, peers):
            self.admit_new_peer(alloc, key, request.now)
        return peers

    def admit_new_peer(self, alloc: Allocation, peer: Address, now: float) -> None:
        """Spend ``alloc``'s new-peer budget on ``peer`` (the port-scan guard); 403 past it."""
        settings = self.settings
        if not alloc.admit_peer(peer, now, settings.new_peer_rate, settings.new_peer_burst):
            self.stats["quota.new_peer_rate"] += 1
            raise StunError(403, "too many new peer addresses per second")

    @staticmethod
    def _peer_keys(request: Request, peers: list[Address]) -> list[Address]:
        """What the new-peer budget counts for ``peers``, each once: IPs for CreatePermission
        (port 0), transport addresses otherwise."""
        if request.message.method == Method.CREATE_PERMISSION:
            return list(dict.fromkeys(Address(peer.host, 0) for peer in peers))
        return list(dict.fromkeys(peers))

    def _install_permission(self, alloc: Allocation, host: str, now: float) -> None:
        expires = now + self.settings.permission_lifetime
        if host not in alloc.permissions:
            self._schedule(expires, "perm", alloc, host)
        alloc.permissions[host] = expires  # a refresh: its timer re-arms itself

    def _check_permission_quota(self, alloc: Allocation, hosts: set[str]) -> None:
        """Refuse (508) what would take ``alloc`` past its permission limit (§9.2, §11.2)."""
        new = hosts - alloc.permissions.keys()
        if len(alloc.permissions) + len(new) > self.settings.max_permissions_per_allocation:
            self.stats["quota.permissions"] += 1
            raise StunError(508, "too many permissions on this allocation")

    def _create_permission(self, request: Request) -> list[Action]:
        """RFC 8656 §9.2: install or refresh a permission per XOR-PEER-ADDRESS, all or none."""
        alloc = self._own_allocation(request)
        peers = self._peer_addresses(request, alloc)
        self._check_permission_quota(alloc, {p.host for p in peers})
        for peer in peers:
            self._install_permission(alloc, peer.host, request.now)
        for key in self._peer_keys(request, peers):
            alloc.remember_peer(key)
        return self._reply(request.five_tuple, self._response(request))

    def _channel_bind(self, request: Request) -> list[Action]:
        """RFC 8656 §11.2: bind or refresh a channel, installing a permission for its peer."""
        alloc = self._own_allocation(request)
        if alloc.tcp:
            raise StunError(400, "channels are not used with TCP allocations")
        number_attr = request.message.get(at.ChannelNumber)
        if number_attr is None or not is_valid_channel(number_attr.number):
            raise StunError(400, "CHANNEL-NUMBER must be 0x4000-0x7FFF")
        peer_attr = request.message.get(at.XorPeerAddress)
        if peer_attr is None:
            raise StunError(400, "XOR-PEER-ADDRESS is required")
        peer = peer_attr.address
        self._peer_addresses(request, alloc)  # policy (with the port) and new-peer budget
        now = request.now
        conflict = alloc.channel_conflict(number_attr.number, peer, now)
        if conflict is not None:
            raise StunError(400, conflict)
        if (
            number_attr.number not in alloc.channels
            and len(alloc.channels) >= self.settings.max_channels_per_allocation
        ):
            self.stats["quota.channels"] += 1
            raise StunError(508, "too many channels on this allocation")
        self._check_permission_quota(alloc, {peer.host})
        expires = now + self.settings.channel_lifetime
        new = number_attr.number not in alloc.channels
        alloc.bind_channel(number_attr.number, peer, expires)  # a refresh: timer re-arms itself
        if new:
            self._schedule(expires, "chan", alloc, alloc.channels[number_attr.number])
        self._install_permission(alloc, peer.host, now)
        alloc.remember_peer(peer)
        return self._reply(request.five_tuple, self._response(request))

    # --- data from the client ----------------------------------------------------------------

    def _send_indication(self, five_tuple: FiveTuple, message: Message, now: float) -> list[Action]:
        """RFC 8656 §10.2: relay DATA to XOR-PEER-ADDRESS if a permission exists."""
        alloc = self.allocations.get(five_tuple)
        if alloc is None:
            return self._drop("send_no_allocation")
        if message.unknown_required():
            return self._drop("send_unknown_attribute")
        peer_attr = message.get(at.XorPeerAddress)
        data_attr = message.get(at.Data)
        if peer_attr is None or data_attr is None:
            return self._drop("send_missing_attribute")
        route = self._send_checks(alloc, peer_attr.address, data_attr.value, now)
        if isinstance(route, str):
            return self._drop(route)
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


def _trim_reason(response: Message, size: int, fingerprint: bool) -> Message:
    """``response`` with its ERROR-CODE reason phrase (the first attribute; RFC 8489 §14.8: for
    a human, may be empty) cut so that it stays within AMPLIFICATION_FACTOR x ``size`` bytes."""
    error = response.attributes[0]
    assert isinstance(error, at.ErrorCode)  # both callers put it first: not remote input
    bare = attrs.evolve(
        response, attributes=(at.ErrorCode(error.code, ""), *response.attributes[1:])
    )
    room = AMPLIFICATION_FACTOR * size - len(encode(bare, fingerprint=fingerprint))
    room -= room % 4  # the reason is padded to 4 bytes
    reason = error.reason.encode()[: max(0, room)].decode(errors="ignore")
    if reason == error.reason:
        return response
    return attrs.evolve(
        response, attributes=(at.ErrorCode(error.code, reason), *response.attributes[1:])
    )


#: The one dispatch table: (method, class) -> handler.
_DISPATCH: dict[tuple[int, MessageClass], Handler] = {
    (Method.BINDING, MessageClass.REQUEST): TurnServer._binding,
    (Method.ALLOCATE, MessageClass.REQUEST): allocate.handle_allocate,
    (Method.REFRESH, MessageClass.REQUEST): TurnServer._refresh,
    (Method.CREATE_PERMISSION, MessageClass.REQUEST): TurnServer._create_permission,
    (Method.CHANNEL_BIND, MessageClass.REQUEST): TurnServer._channel_bind,
    (Method.CONNECT, MessageClass.REQUEST): tcp_relay.handle_connect,
    (Method.CONNECTION_BIND, MessageClass.REQUEST): tcp_relay.handle_connection_bind,
}
