"""The sans-I/O TURN server: every client and peer packet in, a list of actions out.

Theory of operation (RFC 8489, RFC 8656):

* Inputs: :meth:`TurnServer.handle_client` (a datagram or a stream frame from a client, named by
  its 5-tuple), :meth:`handle_peer` (a datagram that reached a relay socket),
  :meth:`relay_opened` (the adapter bound, or failed to bind, a relay socket the core asked for),
  :meth:`connection_closed` and :meth:`handle_timer`. Time is always the ``now`` argument;
  randomness comes from the injected ``rng``. Outputs: the actions of :mod:`turnd.core.actions`.
* Demultiplexing (RFC 7983): the first byte says STUN or ChannelData; anything else is dropped.
* Requests go through one dispatch table ``(method, class) -> handler``. Handlers raise
  :class:`StunError`; exactly one place (:meth:`_error_response`) turns it into the error
  response, adding REALM and NONCE (401, 438), UNKNOWN-ATTRIBUTES (420), and MESSAGE-INTEGRITY
  once the request was authenticated.
* Authentication (RFC 8489 §9.2.4) happens before any state is created: no allocation, pending
  allocation or counter keyed by the client exists until a request carries a valid credential.
* Allocate is two-phase: the core picks a relay port and asks ``OpenRelay``; the answer comes when
  the adapter calls :meth:`relay_opened`. A retransmitted Allocate is answered from the cached
  response (§7.2); one arriving while the relay is being opened is dropped (the answer is coming).
* Drops are counted in :attr:`TurnServer.stats` under ``drop.<reason>``; nothing a client or peer
  sends raises out of this module.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from typing import Any

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
from stun.message import (
    Header,
    Integrity,
    Message,
    MessageClass,
    Method,
    decode,
    encode,
)
from turnd.core.actions import (
    Action,
    AllocationEnded,
    CloseConnection,
    CloseRelay,
    FiveTuple,
    OpenRelay,
    SendToClient,
    SendToPeer,
)
from turnd.core.allocation import Allocation
from turnd.core.authn import RequestAuthenticator
from turnd.core.peer_policy import PeerPolicy
from turnd.core.ports import PortPool
from turnd.core.request import Credential, Request, StunError
from turnd.core.settings import CoreSettings

UDP_PROTOCOL = 17  # RFC 8656 §18.8: REQUESTED-TRANSPORT value for UDP
TCP_PROTOCOL = 6  # RFC 6062 §6.2: REQUESTED-TRANSPORT value for TCP
#: Ports tried for one Allocate before answering 508 (the kernel may refuse ports that another
#: program holds).
MAX_BIND_ATTEMPTS = 8


@attrs.define(slots=True)
class PendingAllocate:
    """An authenticated Allocate waiting for its relay socket."""

    request: Request
    credential: Credential
    relay: Address
    lifetime: float
    reserve: bool
    dont_fragment: bool
    reserved: bool
    attempts: int
    extra: tuple[Any, ...] = ()
    #: EVEN-PORT was asked for: a retried bind must pick an even port too (RFC 8656 §7.2).
    even: bool = False


@attrs.define(slots=True)
class Reservation:
    """A relay port held by EVEN-PORT R=1 for a later Allocate (RFC 8656 §7.2)."""

    relay: Address
    expires: float


Handler = Callable[["TurnServer", Request], list[Action]]


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
        self.auth = RequestAuthenticator(authenticator, nonces, self.stats)
        self.allocations: dict[FiveTuple, Allocation] = {}
        self.by_relay: dict[Address, Allocation] = {}
        self._pending: dict[int, PendingAllocate] = {}
        self._pending_tuples: set[FiveTuple] = set()
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
        self._relay_hosts = {
            AddressFamily.IPV4: settings.relay_ipv4,
            AddressFamily.IPV6: settings.relay_ipv6,
        }
        self._timers: list[tuple[float, int, str, Any, Any]] = []
        self._timer_seq = 0
        self._next_ticket = 1
        self._txid_prefix = rng(4)
        self._txid_counter = 0

    # --- inputs ------------------------------------------------------------------------------

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
                self.stats["drop.malformed_request"] += 1
                return self._reply(five_tuple, self._error_bytes(header, 400, exc.reason))
            return self._drop("malformed_stun")
        if message.cls is MessageClass.REQUEST:
            return self._handle_request(five_tuple, message, now)
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
        alloc = self.by_relay.get(relay)
        if alloc is None:
            return self._drop("peer_no_allocation")
        if not alloc.has_permission(peer.host, now):
            return self._drop("peer_no_permission")
        binding = alloc.channel_by_peer.get(peer)
        if binding is not None and binding.expires > now:
            frame = frame_channel_data(
                binding.number, data, pad=alloc.five_tuple.transport.is_stream
            )
        else:
            indication = Message(
                Method.DATA,
                MessageClass.INDICATION,
                self._new_txid(),
                (at.XorPeerAddress(peer), at.Data(data)),
            )
            frame = encode(indication)
        alloc.packets_to_client += 1
        alloc.bytes_to_client += len(data)
        return [SendToClient(alloc.five_tuple, frame)]

    def relay_opened(self, ticket: int, ok: bool, now: float) -> list[Action]:
        """The adapter's answer to ``OpenRelay(ticket)``."""
        pending = self._pending.pop(ticket, None)
        if pending is None:
            return []
        pool = self._pools[pending.relay.family]
        if not ok:
            self.stats["relay.bind_failures"] += 1
            if pending.reserved or pending.attempts >= MAX_BIND_ATTEMPTS:
                return self._fail_pending(pending, 508, "could not bind a relay port")
            # Another program holds the port: pick another while the refused one is still
            # marked taken (so it is not picked again), then give the refused one back.
            port = pool.pick(even_pair=pending.even)
            if port is None:
                return self._fail_pending(pending, 508, "relay ports exhausted")
            pool.release(pending.relay.port)
            if pending.reserve:
                pool.release(pending.relay.port + 1)
            pool.take(port)
            if pending.reserve:
                pool.take(port + 1)
            pending.relay = Address(pending.relay.host, port)
            pending.attempts += 1
            return [self._open(pending)]
        return self._complete_allocate(pending, now)

    def connection_closed(self, five_tuple: FiveTuple, now: float) -> list[Action]:
        """A TCP/TLS client connection closed: its allocation goes with it (RFC 8656 §3.1)."""
        alloc = self.allocations.get(five_tuple)
        if alloc is None:
            return []
        return self._delete(alloc, now, "connection_closed", close_connection=False)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` next has work, or None."""
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> list[Action]:
        """Expire allocations, permissions, channel bindings and reservations due by ``now``.

        Each live object has one timer: a refresh only moves its expiry, and a timer that finds
        its object refreshed re-arms itself at the new expiry (so clients refreshing often, or
        naming one peer many times, cannot grow the queue beyond the quotas).
        """
        actions: list[Action] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, subject, detail = heapq.heappop(timers)
            if kind == "alloc":
                alloc: Allocation = subject
                if self.allocations.get(alloc.five_tuple) is not alloc:
                    continue
                if alloc.expires <= now:
                    actions += self._delete(alloc, now, "expired")
                else:
                    self._schedule(alloc.expires, "alloc", alloc)
            elif kind == "perm":
                expiry = subject.permissions.get(detail, now)
                if expiry > now:
                    self._schedule(expiry, "perm", subject, detail)
                else:
                    subject.permissions.pop(detail, None)
            elif kind == "chan":
                # One timer per binding, and only this sweep removes bindings: it is there.
                binding = subject.channels[detail]
                if binding.expires > now:
                    self._schedule(binding.expires, "chan", subject, detail)
                else:
                    self._schedule(subject.expire_channel(detail), "cool", subject, detail)
            elif kind == "cool":
                cool = subject.cooling.get(detail)
                if cool is not None and cool[1] <= now:
                    del subject.cooling[detail]
            else:  # "resv"
                resv = self._reservations.get(detail)
                if resv is not None and resv.expires <= now:
                    del self._reservations[detail]
                    self._pools[resv.relay.family].release(resv.relay.port)
                    actions.append(CloseRelay(resv.relay))
        return actions

    # --- admin -------------------------------------------------------------------------------

    def kill(self, five_tuple: FiveTuple, now: float) -> list[Action]:
        """End an allocation now (operator action, revocation)."""
        alloc = self.allocations.get(five_tuple)
        if alloc is None:
            return []
        return self._delete(alloc, now, "killed")

    # --- plumbing ----------------------------------------------------------------------------

    def _drop(self, reason: str) -> list[Action]:
        self.stats["drop." + reason] += 1
        return []

    @staticmethod
    def _reply(five_tuple: FiveTuple, data: bytes) -> list[Action]:
        return [SendToClient(five_tuple, data)]

    def _new_txid(self) -> bytes:
        self._txid_counter += 1
        return self._txid_prefix + self._txid_counter.to_bytes(8, "big")

    def _schedule(self, when: float, kind: str, subject: Any, detail: Any = None) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, subject, detail))

    # --- requests ----------------------------------------------------------------------------

    def _handle_request(self, five_tuple: FiveTuple, message: Message, now: float) -> list[Action]:
        request = Request(five_tuple, message, now, message.has(at.Fingerprint))
        handler = _DISPATCH.get((message.method, message.cls))
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
            self.stats[f"error.{err.code}"] += 1
            return self._reply(five_tuple, self._error_response(request, err))

    def _response(self, request: Request, *attributes: Any) -> bytes:
        """Encode a success response to ``request``, signed if it was authenticated."""
        message = request.message
        attrs_ = list(attributes)
        if self.settings.software:
            attrs_.append(at.Software(self.settings.software))
        response = Message(
            message.method, MessageClass.SUCCESS, message.transaction_id, tuple(attrs_)
        )
        cred = request.credential
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
            attrs_ += self.auth.challenge(self.settings.realm, request.five_tuple, request.now)
        elif cred is not None and self.settings.software:
            attrs_.append(at.Software(self.settings.software))
        response = Message(
            message.method, MessageClass.ERROR, message.transaction_id, tuple(attrs_)
        )
        return encode(
            response,
            key=cred.key if cred else None,
            integrity=Integrity.SHA256 if cred and cred.sha256 else Integrity.SHA1,
            fingerprint=request.fingerprint,
        )

    def _error_bytes(self, header: Header, code: int, reason: str) -> bytes:
        """An error response to a request too malformed to decode (no integrity possible)."""
        reply = Message(
            header.method,
            MessageClass.ERROR,
            header.transaction_id,
            (at.ErrorCode(code, f"{REASON_PHRASES[code]}: {reason}"[:120]),),
        )
        return encode(reply)

    # --- Binding (RFC 8489 §6.3.1) -----------------------------------------------------------

    def _binding(self, request: Request) -> list[Action]:
        self.stats["stun.binding_requests"] += 1
        client = request.five_tuple.client
        return self._reply(request.five_tuple, self._response(request, at.XorMappedAddress(client)))

    # --- Allocate (RFC 8656 §7.2) ------------------------------------------------------------

    def _allocate(self, request: Request) -> list[Action]:
        message = request.message
        cred = request.credential
        assert cred is not None
        five_tuple = request.five_tuple
        existing = self.allocations.get(five_tuple)
        if existing is not None:
            if existing.allocate_txid == message.transaction_id:
                self.stats["allocate.retransmissions"] += 1
                return self._reply(five_tuple, existing.allocate_response)
            raise StunError(437)
        if five_tuple in self._pending_tuples:
            return self._drop("allocate_in_progress")
        transport = message.get(at.RequestedTransport)
        if transport is None:
            raise StunError(400, "REQUESTED-TRANSPORT is required")
        if transport.protocol != UDP_PROTOCOL:
            raise StunError(442)
        token = message.get(at.ReservationToken)
        even_port = message.get(at.EvenPort)
        family_attr = message.get(at.RequestedAddressFamily)
        additional = message.get(at.AdditionalAddressFamily)
        if token is not None and (even_port or family_attr or additional):
            raise StunError(400, "RESERVATION-TOKEN excludes EVEN-PORT and address families")
        if family_attr is not None and additional is not None:
            raise StunError(400, "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY exclude each other")
        extra: tuple[Any, ...] = ()
        if additional is not None:
            if additional.family != AddressFamily.IPV6:
                raise StunError(400, "ADDITIONAL-ADDRESS-FAMILY must be IPv6")
            # Dual allocations are not offered yet: the IPv4 one is made and the IPv6 part is
            # refused in the response (RFC 8656 §7.2, ADDRESS-ERROR-CODE).
            extra = (at.AddressErrorCode(AddressFamily.IPV6, 440, REASON_PHRASES[440]),)
        family = AddressFamily.IPV4
        if family_attr is not None:
            if family_attr.family not in (AddressFamily.IPV4, AddressFamily.IPV6):
                raise StunError(440)
            family = AddressFamily(family_attr.family)
        self._check_quota(cred, five_tuple)
        lifetime = self._lifetime(message)
        dont_fragment = message.has(at.DontFragment)
        if token is not None:
            resv = self._reservations.get(token.token)
            if resv is None or resv.expires <= request.now:
                # An expired one stays for its timer, which releases the port and the socket.
                raise StunError(508, "unknown or expired reservation token")
            del self._reservations[token.token]
            relay, reserve, reserved = resv.relay, False, True
        else:
            host = self._relay_hosts[family]
            if host is None:
                raise StunError(440)
            pool = self._pools[family]
            reserve = bool(even_port and even_port.reserve)
            port = pool.pick(even_pair=even_port is not None)
            if port is None:
                raise StunError(508, "relay ports exhausted")
            pool.take(port)
            if reserve:
                pool.take(port + 1)
            relay, reserved = Address(host, port), False
        pending = PendingAllocate(
            request,
            cred,
            relay,
            lifetime,
            reserve,
            dont_fragment,
            reserved,
            1,
            extra,
            even=even_port is not None,
        )
        ticket = self._next_ticket
        self._next_ticket += 1
        self._pending[ticket] = pending
        self._pending_tuples.add(five_tuple)
        self._per_user[cred.username] += 1
        self._per_ip[five_tuple.client.host] += 1
        return [self._open(pending, ticket)]

    def _open(self, pending: PendingAllocate, ticket: int | None = None) -> OpenRelay:
        if ticket is None:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._pending[ticket] = pending
        return OpenRelay(
            ticket, pending.relay, pending.reserve, pending.dont_fragment, pending.reserved
        )

    def _check_quota(self, cred: Credential, five_tuple: FiveTuple) -> None:
        settings = self.settings
        if len(self.allocations) + len(self._pending_tuples) >= settings.max_allocations:
            self.stats["quota.node"] += 1
            raise StunError(508, "node allocation limit reached")
        if self._per_user[cred.username] >= settings.max_allocations_per_user:
            self.stats["quota.user"] += 1
            raise StunError(486)
        if self._per_ip[five_tuple.client.host] >= settings.max_allocations_per_ip:
            self.stats["quota.client_ip"] += 1
            raise StunError(486, "Allocation Quota Reached for this client address")

    def _lifetime(self, message: Message) -> float:
        """RFC 8656 §7.2/§7.3: the requested lifetime, at least the default, at most the max."""
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

    def _fail_pending(self, pending: PendingAllocate, code: int, reason: str) -> list[Action]:
        request = pending.request
        pool = self._pools[pending.relay.family]
        pool.release(pending.relay.port)
        if pending.reserve:
            pool.release(pending.relay.port + 1)
        self._forget_pending(pending)
        self.stats[f"error.{code}"] += 1
        return self._reply(
            request.five_tuple, self._error_response(request, StunError(code, reason))
        )

    def _forget_pending(self, pending: PendingAllocate) -> None:
        five_tuple = pending.request.five_tuple
        self._pending_tuples.discard(five_tuple)
        self._per_user[pending.credential.username] -= 1
        self._per_ip[five_tuple.client.host] -= 1

    def _complete_allocate(self, pending: PendingAllocate, now: float) -> list[Action]:
        request = pending.request
        cred = pending.credential
        five_tuple = request.five_tuple
        self._pending_tuples.discard(five_tuple)
        alloc = Allocation(
            five_tuple=five_tuple,
            relay=pending.relay,
            username=cred.username,
            realm=cred.realm,
            key=cred.key,
            sha256=cred.sha256,
            rest_id=cred.rest_id,
            started=now,
            expires=now + pending.lifetime,
            allocate_txid=request.message.transaction_id,
        )
        attributes: list[Any] = [at.XorRelayedAddress(pending.relay), *pending.extra]
        attributes.append(at.Lifetime(int(pending.lifetime)))
        if pending.reserve:
            token = self._rng(8)
            reserved = Address(pending.relay.host, pending.relay.port + 1)
            expires = now + self.settings.reservation_lifetime
            self._reservations[token] = Reservation(reserved, expires)
            self._schedule(expires, "resv", None, token)
            attributes.append(at.ReservationToken(token))
        attributes.append(at.XorMappedAddress(five_tuple.client))
        alloc.allocate_response = self._response(request, *attributes)
        self.allocations[five_tuple] = alloc
        self.by_relay[alloc.relay] = alloc
        self._schedule(alloc.expires, "alloc", alloc)
        self.stats["allocations.created"] += 1
        return self._reply(five_tuple, alloc.allocate_response)

    def _delete(
        self, alloc: Allocation, now: float, reason: str, *, close_connection: bool = True
    ) -> list[Action]:
        five_tuple = alloc.five_tuple
        del self.allocations[five_tuple]
        del self.by_relay[alloc.relay]
        self._pools[alloc.relay.family].release(alloc.relay.port)
        self._per_user[alloc.username] -= 1
        if not self._per_user[alloc.username]:
            del self._per_user[alloc.username]
        self._per_ip[five_tuple.client.host] -= 1
        if not self._per_ip[five_tuple.client.host]:
            del self._per_ip[five_tuple.client.host]
        self.stats["allocations.ended." + reason] += 1
        actions: list[Action] = [
            CloseRelay(alloc.relay),
            AllocationEnded(
                five_tuple,
                alloc.relay,
                alloc.username,
                alloc.rest_id,
                alloc.started,
                now,
                reason,
                alloc.packets_to_peer,
                alloc.bytes_to_peer,
                alloc.packets_to_client,
                alloc.bytes_to_client,
            ),
        ]
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
        """RFC 8656 §7.3: extend the allocation, or delete it with LIFETIME 0."""
        alloc = self._own_allocation(request)
        family = request.message.get(at.RequestedAddressFamily)
        if family is not None and family.family != alloc.relay.family:
            raise StunError(443)
        requested = request.message.get(at.Lifetime)
        if requested is not None and requested.seconds == 0:
            actions = self._delete(alloc, request.now, "deleted")
            reply = self._response(request, at.Lifetime(0))
            return [SendToClient(request.five_tuple, reply), *actions]
        lifetime = self._lifetime(request.message)
        alloc.expires = request.now + lifetime  # its timer re-arms itself (handle_timer)
        return self._reply(request.five_tuple, self._response(request, at.Lifetime(int(lifetime))))

    def _peer_addresses(self, request: Request, alloc: Allocation) -> list[Address]:
        peers = [a.address for a in request.message.attributes if type(a) is at.XorPeerAddress]
        if not peers:
            raise StunError(400, "XOR-PEER-ADDRESS is required")
        for peer in peers:
            if peer.family != alloc.relay.family:
                raise StunError(443)
            if not self.policy.ip_allowed(peer.host):
                self.stats["denied.peer"] += 1
                raise StunError(403, "peer address is not allowed")
        return peers

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
        return self._reply(request.five_tuple, self._response(request))

    def _channel_bind(self, request: Request) -> list[Action]:
        """RFC 8656 §11.2: bind or refresh a channel, installing a permission for its peer."""
        alloc = self._own_allocation(request)
        number_attr = request.message.get(at.ChannelNumber)
        if number_attr is None or not is_valid_channel(number_attr.number):
            raise StunError(400, "CHANNEL-NUMBER must be 0x4000-0x7FFF")
        peer_attr = request.message.get(at.XorPeerAddress)
        if peer_attr is None:
            raise StunError(400, "XOR-PEER-ADDRESS is required")
        peer = peer_attr.address
        self._peer_addresses(request, alloc)
        if not self.policy.peer_allowed(peer.host, peer.port):
            self.stats["denied.peer"] += 1
            raise StunError(403, "peer address is not allowed")
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
        if number_attr.number not in alloc.channels:
            self._schedule(expires, "chan", alloc, number_attr.number)
        alloc.bind_channel(number_attr.number, peer, expires)  # a refresh: timer re-arms itself
        self._install_permission(alloc, peer.host, now)
        return self._reply(request.five_tuple, self._response(request))

    def _connect_unsupported(self, request: Request) -> list[Action]:
        """RFC 6062 requests on a server without TCP allocations yet."""
        raise StunError(400, "TCP relay allocations are not supported on this listener")

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
        peer = peer_attr.address
        if peer.family != alloc.relay.family:
            return self._drop("send_family_mismatch")
        if not alloc.has_permission(peer.host, now):
            return self._drop("send_no_permission")
        if not self.policy.peer_allowed(peer.host, peer.port):
            return self._drop("send_denied_peer")
        alloc.packets_to_peer += 1
        alloc.bytes_to_peer += len(data_attr.value)
        return [SendToPeer(alloc.relay, peer, data_attr.value)]

    def _client_channel_data(self, five_tuple: FiveTuple, data: bytes, now: float) -> list[Action]:
        """RFC 8656 §12.5: relay a ChannelData message to the channel's peer."""
        if len(data) < CHANNEL_HEADER_SIZE:
            return self._drop("channel_data_short")
        # classify() let through first bytes 0x40-0x4F only: the channel is in range (§12).
        channel, length = CHANNEL_HEADER.unpack_from(data)
        if CHANNEL_HEADER_SIZE + length > len(data):
            return self._drop("channel_data_short")
        alloc = self.allocations.get(five_tuple)
        if alloc is None:
            return self._drop("channel_data_no_allocation")
        binding = alloc.channels.get(channel)
        if binding is None or binding.expires <= now:
            return self._drop("channel_data_unbound")
        peer = binding.peer
        if not alloc.has_permission(peer.host, now):
            return self._drop("channel_data_no_permission")
        payload = data[CHANNEL_HEADER_SIZE : CHANNEL_HEADER_SIZE + length]
        alloc.packets_to_peer += 1
        alloc.bytes_to_peer += length
        return [SendToPeer(alloc.relay, peer, payload)]


#: The one dispatch table: (method, class) -> handler.
_DISPATCH: dict[tuple[int, MessageClass], Handler] = {
    (Method.BINDING, MessageClass.REQUEST): TurnServer._binding,
    (Method.ALLOCATE, MessageClass.REQUEST): TurnServer._allocate,
    (Method.REFRESH, MessageClass.REQUEST): TurnServer._refresh,
    (Method.CREATE_PERMISSION, MessageClass.REQUEST): TurnServer._create_permission,
    (Method.CHANNEL_BIND, MessageClass.REQUEST): TurnServer._channel_bind,
    (Method.CONNECT, MessageClass.REQUEST): TurnServer._connect_unsupported,
    (Method.CONNECTION_BIND, MessageClass.REQUEST): TurnServer._connect_unsupported,
}
