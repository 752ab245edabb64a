"""The Allocate transaction: checks, relay ports, and opening the relays (RFC 8656 §7.2, RFC 6062
§5.1).

Theory of operation:

* The checks run in the order of RFC 8656 §7.2 (steps 2-9), with RFC 6062 §5.1's for TCP right
  after REQUESTED-TRANSPORT. Each refusal raises :class:`StunError` before any port is taken.
* The request names its relays, one per family: IPv4, or the family of REQUESTED-ADDRESS-FAMILY,
  or of the reservation a RESERVATION-TOKEN names; with ADDITIONAL-ADDRESS-FAMILY IPv6 an IPv4 and
  an IPv6 one (a dual allocation). A server without an IPv6 relay address, or out of IPv6 ports,
  makes the IPv4 one alone and says why in ADDRESS-ERROR-CODE (step 9: 440 or 508).
* Binding is I/O, so it is two-phase: the core picks each port and asks ``OpenRelay``; the
  adapter answers :func:`relay_opened`. A refused port is retried on another one (up to
  :data:`MAX_BIND_ATTEMPTS` per family; never for a reserved port, which is the only acceptable
  one). The answer goes out once every relay is settled: the first (IPv4 of a dual allocation)
  failing fails the Allocate with 508 and closes whatever did open; the IPv6 one failing leaves an
  IPv4 allocation with ADDRESS-ERROR-CODE 508.
* Quotas count allocations being opened as well as live ones. A retransmitted Allocate is answered
  from the cached response; one arriving while the relays are being opened is dropped. A TCP/TLS
  connection that closes meanwhile gets no allocation: its relays are closed as they open.
  :class:`PendingAllocations` (the server's ``pending``) holds those Allocates meanwhile.
* Ports, hosts and reservations are the server's ``ports`` (turnd.core.ports), the counts and
  checks its ``quotas`` (turnd.core.quotas); this module reaches no private of the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs

from stun import attributes as at
from stun.addresses import Address, AddressFamily
from stun.errors import REASON_PHRASES
from stun.message import Message
from turnd.core.actions import Action, CloseRelay, FiveTuple, OpenRelay, SendToClient
from turnd.core.allocation import Allocation, Relay
from turnd.core.bucket import TokenBucket
from turnd.core.request import Credential, Request, StunError
from turnd.core.settings import CoreSettings
from turnd.core.timers import TimerKind

if TYPE_CHECKING:
    from turnd.core.server import TurnServer

UDP_PROTOCOL = 17  # RFC 8656 §18.8: REQUESTED-TRANSPORT value for UDP
TCP_PROTOCOL = 6  # RFC 6062 §6.2: REQUESTED-TRANSPORT value for TCP
#: Ports tried per family for one Allocate before giving up (the kernel may refuse ports that
#: another program holds).
MAX_BIND_ATTEMPTS = 8


@attrs.define(slots=True)
class PendingRelay:
    """One relay of an Allocate being opened."""

    relay: Address
    attempts: int = 1
    #: None until settled; then whether it is bound.
    bound: bool | None = None
    #: Why it was given up.
    failure: str = ""


@attrs.define(slots=True)
class PendingAllocate:
    """An authenticated Allocate waiting for its relay sockets."""

    request: Request
    credential: Credential
    lifetime: float
    #: Family -> relay being opened; the first one is the one the allocation cannot do without.
    relays: dict[AddressFamily, PendingRelay] = attrs.field(factory=dict)
    reserve: bool = False
    dont_fragment: bool = False
    reserved: bool = False
    #: EVEN-PORT was asked for: a retried bind must pick an even port too (RFC 8656 §7.2).
    even: bool = False
    tcp: bool = False
    #: ADDRESS-ERROR-CODE for a family that could not be had.
    extra: list[Any] = attrs.field(factory=list)


class PendingAllocations:
    """The Allocates whose relays are being opened: by ``OpenRelay`` ticket and by 5-tuple, and
    the 5-tuples whose stream connection closed meanwhile (abandoned: no allocation for them)."""

    def __init__(self) -> None:
        self._by_ticket: dict[int, tuple[PendingAllocate, AddressFamily]] = {}
        self._tuples: set[FiveTuple] = set()
        self._abandoned: set[FiveTuple] = set()
        self._next_ticket = 1

    @property
    def by_ticket(self) -> Mapping[int, tuple[PendingAllocate, AddressFamily]]:
        """Ticket -> (Allocate, family of the relay it opens); a read-only view."""
        return MappingProxyType(self._by_ticket)

    @property
    def tuples(self) -> frozenset[FiveTuple]:
        """The 5-tuples with an Allocate being opened."""
        return frozenset(self._tuples)

    @property
    def abandoned(self) -> frozenset[FiveTuple]:
        """The 5-tuples whose connection closed while their Allocate was being opened."""
        return frozenset(self._abandoned)

    def __contains__(self, five_tuple: object) -> bool:
        return five_tuple in self._tuples

    def __len__(self) -> int:
        return len(self._tuples)

    def start(self, five_tuple: FiveTuple) -> None:
        """An Allocate of ``five_tuple`` starts opening its relays."""
        self._tuples.add(five_tuple)

    def ticket(self, pending: PendingAllocate, family: AddressFamily) -> int:
        """A new ticket for opening ``pending``'s relay of ``family``."""
        ticket = self._next_ticket
        self._next_ticket += 1
        self._by_ticket[ticket] = (pending, family)
        return ticket

    def answered(self, ticket: int) -> tuple[PendingAllocate, AddressFamily] | None:
        """Forget ``ticket``: the adapter answered it. None if unknown."""
        return self._by_ticket.pop(ticket, None)

    def abandon(self, five_tuple: FiveTuple) -> bool:
        """The connection of ``five_tuple`` closed: True if its Allocate is being opened (its
        relays are then closed once the adapter answers)."""
        if five_tuple not in self._tuples:
            return False
        self._abandoned.add(five_tuple)
        return True

    def is_abandoned(self, five_tuple: FiveTuple) -> bool:
        """Whether the connection of ``five_tuple`` closed while its relays were opening."""
        return five_tuple in self._abandoned

    def finish(self, five_tuple: FiveTuple) -> bool:
        """Every relay of ``five_tuple``'s Allocate is settled; returns whether it was
        abandoned."""
        self._tuples.discard(five_tuple)
        if five_tuple not in self._abandoned:
            return False
        self._abandoned.discard(five_tuple)
        return True


def lifetime(settings: CoreSettings, message: Message) -> float:
    """RFC 8656 §7.2/§8.2: the requested lifetime, at least the default, at most the max."""
    requested = message.get(at.Lifetime)
    if requested is None:
        return settings.allocation_lifetime
    return float(
        min(
            max(requested.seconds, settings.allocation_lifetime),
            settings.max_allocation_lifetime,
        )
    )


def handle_allocate(server: TurnServer, request: Request) -> list[Action]:
    """RFC 8656 §7.2 (and RFC 6062 §5.1): check the request, pick ports, ask for the relays."""
    message = request.message
    cred = request.credential
    assert cred is not None  # dispatch authenticated it
    five_tuple = request.five_tuple
    existing = server.allocations.get(five_tuple)
    if existing is not None:
        if existing.allocate_txid == message.transaction_id:
            server.stats["allocate.retransmissions"] += 1
            return [SendToClient(five_tuple, existing.allocate_response)]
        raise StunError(437)
    if five_tuple in server.pending:
        return server.drop("allocate_in_progress")
    transport = message.get(at.RequestedTransport)
    if transport is None:
        raise StunError(400, "REQUESTED-TRANSPORT is required")
    tcp = transport.protocol == TCP_PROTOCOL
    if transport.protocol != UDP_PROTOCOL and not tcp:
        raise StunError(442)
    if tcp and not server.settings.tcp_relays:
        raise StunError(442, "TCP relays are not offered by this anycast cluster")
    token = message.get(at.ReservationToken)
    even_port = message.get(at.EvenPort)
    family_attr = message.get(at.RequestedAddressFamily)
    additional = message.get(at.AdditionalAddressFamily)
    dont_fragment = message.has(at.DontFragment)
    if tcp:
        if not five_tuple.transport.is_stream:  # RFC 6062 §5.1 item 2
            raise StunError(400, "TCP allocations need a TCP or TLS connection")
        if dont_fragment or even_port or token:  # RFC 6062 §5.1 item 3
            raise StunError(400, "DONT-FRAGMENT, EVEN-PORT and RESERVATION-TOKEN are not for TCP")
    if token is not None and (even_port or family_attr or additional):  # step 5
        raise StunError(400, "RESERVATION-TOKEN excludes EVEN-PORT and address families")
    if family_attr is not None and additional is not None:  # step 6
        raise StunError(400, "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY exclude each other")
    family = AddressFamily.IPV4
    if family_attr is not None:  # step 7
        if family_attr.family not in (AddressFamily.IPV4, AddressFamily.IPV6):
            raise StunError(440)
        family = AddressFamily(family_attr.family)
    reserve = bool(even_port and even_port.reserve)
    if additional is not None:
        if additional.family != AddressFamily.IPV6:  # step 9
            raise StunError(400, "ADDITIONAL-ADDRESS-FAMILY must be IPv6")
        if reserve:  # step 8
            raise StunError(400, "EVEN-PORT with R=1 excludes ADDITIONAL-ADDRESS-FAMILY")
    held = len(server.allocations) + len(server.pending)
    server.quotas.check_allocate(cred.username, five_tuple.client.host, held, server.draining)
    pending = PendingAllocate(
        request,
        cred,
        lifetime(server.settings, message),
        dont_fragment=dont_fragment,
        even=even_port is not None,
        tcp=tcp,
    )
    ports = server.ports
    if token is not None:
        reserved = ports.claim(token.token, request.now)
        if reserved is None:
            raise StunError(508, "unknown or expired reservation token")
        pending.relays[reserved.family] = PendingRelay(reserved)
        pending.reserved = True
    else:
        # Ports are taken only once nothing can be refused any more.
        host = ports.host(family)
        if host is None:
            raise StunError(440)
        port = ports.pick(family, even_pair=pending.even)
        if port is None:
            raise StunError(508, "relay ports exhausted")
        pending.reserve = reserve
        _take(server, pending, Address(host, port))
        if additional is not None:
            _add_ipv6(server, pending)
    server.pending.start(five_tuple)
    server.quotas.add(cred.username, five_tuple.client.host)
    return [_open(server, pending, f) for f in pending.relays]


def _add_ipv6(server: TurnServer, pending: PendingAllocate) -> None:
    """The IPv6 half of a dual allocation, or the ADDRESS-ERROR-CODE saying why not (step 9)."""
    family = AddressFamily.IPV6
    host = server.ports.host(family)
    port = None if host is None else server.ports.pick(family, even_pair=pending.even)
    if host is None or port is None:
        code = 440 if host is None else 508
        pending.extra.append(at.AddressErrorCode(family, code, REASON_PHRASES[code]))
        return
    _take(server, pending, Address(host, port))


def _take(server: TurnServer, pending: PendingAllocate, relay: Address) -> None:
    server.ports.take(relay, pair=pending.reserve)
    pending.relays[relay.family] = PendingRelay(relay)


def _open(server: TurnServer, pending: PendingAllocate, family: AddressFamily) -> OpenRelay:
    return OpenRelay(
        server.pending.ticket(pending, family),
        pending.relays[family].relay,
        pending.reserve,
        pending.dont_fragment,
        pending.reserved,
        pending.tcp,
    )


def relay_opened(server: TurnServer, ticket: int, ok: bool, now: float) -> list[Action]:
    """The adapter's answer to ``OpenRelay(ticket)``."""
    entry = server.pending.answered(ticket)
    if entry is None:
        return []
    pending, family = entry
    part = pending.relays[family]
    if ok:
        part.bound = True
    else:
        server.stats["relay.bind_failures"] += 1
        retry = _retry(server, pending, family, part)
        if retry is not None:
            return [retry]
        part.bound = False
    if any(p.bound is None for p in pending.relays.values()):
        return []  # the other family's answer is still to come
    return _settle(server, pending, now)


def _retry(
    server: TurnServer, pending: PendingAllocate, family: AddressFamily, part: PendingRelay
) -> OpenRelay | None:
    """Another port for a refused one, or None (and why, in ``part``) when giving up."""
    abandoned = server.pending.is_abandoned(pending.request.five_tuple)
    if pending.reserved or part.attempts >= MAX_BIND_ATTEMPTS or abandoned:
        part.failure = "could not bind a relay port"
        return None
    # Another program holds the port: pick another while the refused one is still marked taken
    # (so it is not picked again), then give the refused one back.
    port = server.ports.pick(family, even_pair=pending.even)
    if port is None:
        part.failure = "relay ports exhausted"
        return None
    server.ports.release(part.relay, pair=pending.reserve)
    part.relay = Address(part.relay.host, port)
    server.ports.take(part.relay, pair=pending.reserve)
    part.attempts += 1
    return _open(server, pending, family)


def _settle(server: TurnServer, pending: PendingAllocate, now: float) -> list[Action]:
    """Every relay has its answer: create the allocation, or refuse and close what opened."""
    request = pending.request
    five_tuple = request.five_tuple
    abandoned = server.pending.finish(five_tuple)
    first = next(iter(pending.relays.values()))
    if abandoned or not first.bound:
        actions: list[Action] = []
        for part in pending.relays.values():
            server.ports.release(part.relay, pair=pending.reserve)
            if part.bound:
                actions.append(CloseRelay(part.relay))
        server.quotas.forget(pending.credential.username, five_tuple.client.host)
        if abandoned:  # the client's TCP/TLS connection closed meanwhile: nobody to answer
            server.stats["allocate.abandoned"] += 1
            return actions
        return server.refuse(request, StunError(508, first.failure)) + actions
    for family, part in list(pending.relays.items()):
        if not part.bound:  # the IPv6 half of a dual allocation (step 9)
            server.ports.release(part.relay, pair=pending.reserve)
            del pending.relays[family]
            pending.extra.append(at.AddressErrorCode(family, 508, REASON_PHRASES[508]))
    return _create(server, pending, now)


def _create(server: TurnServer, pending: PendingAllocate, now: float) -> list[Action]:
    request = pending.request
    cred = pending.credential
    five_tuple = request.five_tuple
    expires = now + pending.lifetime
    alloc = Allocation(
        five_tuple=five_tuple,
        relays={f: Relay(p.relay, expires) for f, p in pending.relays.items()},
        username=cred.username,
        realm=cred.realm,
        key=cred.key,
        sha256=cred.sha256,
        rest_id=cred.rest_id,
        started=now,
        allocate_txid=request.message.transaction_id,
        tcp=pending.tcp,
        budget_packets=server.packet_rate,
        budget_bytes=server.byte_rate,
        budget_time=now,
        new_peers=TokenBucket(server.settings.new_peer_burst, now),
    )
    attributes: list[Any] = [at.XorRelayedAddress(r.address) for r in alloc.relays.values()]
    attributes += [*pending.extra, at.Lifetime(int(pending.lifetime))]
    if pending.reserve:
        prefix = server.settings.reservation_prefix
        token = prefix + server.rng(8 - len(prefix))
        reserved = Address(alloc.relay.host, alloc.relay.port + 1)
        until = now + server.settings.reservation_lifetime
        server.ports.reserve(token, reserved, until)
        server.timers.add(until, TimerKind.RESERVATION, None, token)
        attributes.append(at.ReservationToken(token))
    attributes.append(at.XorMappedAddress(five_tuple.client))
    alloc.allocate_response = server.responses.success(request, *attributes)
    server.allocations[five_tuple] = alloc
    for relay in alloc.relays.values():
        server.by_relay[relay.address] = alloc
        server.timers.add(relay.expires, TimerKind.RELAY, alloc, relay)
    server.stats["allocations.created"] += 1
    return [SendToClient(five_tuple, alloc.allocate_response)]


def reservation_timer(server: TurnServer, _subject: None, token: bytes, now: float) -> list[Action]:
    """A reservation's expiry (§7.2): its port is released and its socket closed."""
    relay = server.ports.expire(token, now)
    return [] if relay is None else [CloseRelay(relay)]
