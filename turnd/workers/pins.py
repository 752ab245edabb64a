"""Flows whose allocation another worker holds: an Allocate redeeming a RESERVATION-TOKEN.

The reuseport selector sends every datagram of a client flow to one worker (the hash of its
address and port), and the relay ports are sliced, so a flow's allocation is normally on the
worker its datagrams reach. An Allocate with EVEN-PORT R=1 breaks that: it reserves the next
port, and the client redeems it with RESERVATION-TOKEN from another flow (turnutils_uclient's
RTCP session does), which the selector may send to another worker. That worker cannot take the
port: the reservation, and the port's slice, are the first worker's.

So the token names its worker (its first two bytes are the slot, ``CoreSettings
.reservation_prefix``), and the worker that receives such an Allocate pins the flow to that slot:
this datagram and every later one of the flow go to it through the supervisor (a notice each
way, ``forward``), and it answers the client itself, from its own socket of the same listener
(the same address and port). The peer's datagrams reach it directly (its relay port). When a
forwarded datagram leaves the holder with no allocation of the flow (it was deleted, it expired,
the worker restarted), the holder says ``unpin`` and the flow is the selector's again.

Counters: ``workers.pinned`` (flows pinned), ``workers.forwarded`` (datagrams sent on),
``workers.pins_evicted`` (the oldest pin given up past :data:`MAX_PINS`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from stun import attributes as at
from stun.addresses import Address
from stun.errors import StunDecodeError
from stun.message import decode
from turnd.core.actions import UDP, ClientOutcome, FiveTuple, PeerOutcome
from turnd.core.server import TurnServer

#: The first two bytes of an Allocate request (RFC 8656 §7.1: method 0x003, class request).
ALLOCATE_REQUEST = b"\x00\x03"

#: Flows pinned to other workers at most; past it the oldest pin is given up.
MAX_PINS = 65536


def reservation_prefix(slot: int) -> bytes:
    """The first bytes of every RESERVATION-TOKEN the worker of ``slot`` hands out."""
    return slot.to_bytes(2, "big")


class WorkerEntry:
    """The entry point of a worker of many (``PacketPath.entry``): the core, except for the
    flows pinned to another worker, which go to ``forward(slot, five_tuple, data)``."""

    def __init__(
        self,
        core: TurnServer,
        slot: int,
        count: int,
        forward: Callable[[int, FiveTuple, bytes, int], bool],
    ) -> None:
        self.core = core
        self.slot = slot
        self.count = count
        self.forward = forward
        #: Flow -> [the slot it is pinned to, the number of the last datagram sent there].
        self.pins: dict[FiveTuple, list[int]] = {}
        self._sent = 0
        self.stats: Counter[str] = core.stats

    def client_message(self, five_tuple: FiveTuple, data: bytes, now: float) -> ClientOutcome:
        # The hot path: with no pin, only an Allocate can make one; everything else is the core's
        # at the cost of one comparison.
        if (self.pins or data[:2] == ALLOCATE_REQUEST) and self._forwarded(five_tuple, data):
            return None
        return self.core.client_message(five_tuple, data, now)

    def _forwarded(self, five_tuple: FiveTuple, data: bytes) -> bool:
        """Send a datagram of a flow pinned to another worker there (pinning it first when it
        is an Allocate redeeming that worker's reservation); False: the core's to handle."""
        if five_tuple.transport is not UDP or five_tuple in self.core.allocations:
            return False
        pin = self.pins.get(five_tuple)
        if pin is None and data[:2] == ALLOCATE_REQUEST:
            holder = self._token_holder(data)
            if holder is not None:
                pin = self.pin(five_tuple, holder)
        if pin is None:
            return False
        self._sent += 1
        pin[1] = self._sent
        if self.forward(pin[0], five_tuple, data, self._sent):
            self.stats["workers.forwarded"] += 1
        else:
            self.stats["drop.worker_unavailable"] += 1
        return True

    def peer_message(self, relay: Address, peer: Address, data: bytes, now: float) -> PeerOutcome:
        return self.core.peer_message(relay, peer, data, now)

    def _token_holder(self, data: bytes) -> int | None:
        """The other worker whose reservation an Allocate redeems, else None (the core answers
        it: a token of this worker, or one naming no worker, which gets 508)."""
        try:
            token = decode(data).get(at.ReservationToken)
        except StunDecodeError:
            return None
        if token is None or len(token.token) < 2:
            return None
        holder = int.from_bytes(token.token[:2], "big")
        return holder if holder != self.slot and holder < self.count else None

    def pin(self, five_tuple: FiveTuple, slot: int) -> list[int]:
        if len(self.pins) >= MAX_PINS:
            del self.pins[next(iter(self.pins))]
            self.stats["workers.pins_evicted"] += 1
        pin = self.pins[five_tuple] = [slot, 0]
        self.stats["workers.pinned"] += 1
        return pin

    def unpin(self, five_tuple: FiveTuple, sent: int) -> None:
        """The holder has no allocation of ``five_tuple`` after datagram number ``sent``: the
        pin goes, unless a later datagram went there since (an Allocate that may make one)."""
        pin = self.pins.get(five_tuple)
        if pin is not None and pin[1] == sent:
            del self.pins[five_tuple]

    def export_pins(self) -> list[list[Any]]:
        """The pins, JSON-ready, for the worker that takes this slot over."""
        return [[*flow_fields(flow), slot] for flow, (slot, _) in self.pins.items()]

    def import_pins(self, pins: Iterable[list[Any]]) -> None:
        for client, server, slot in pins:
            self.pins[flow_of(client, server)] = [int(slot), 0]


def flow_fields(flow: FiveTuple) -> tuple[list[Any], list[Any]]:
    """A UDP flow's client and listener addresses as JSON-ready ``[host, port]`` pairs."""
    return [flow.client.host, flow.client.port], [flow.server.host, flow.server.port]


def flow_of(client: list[Any], server: list[Any]) -> FiveTuple:
    """The UDP flow of :func:`flow_fields`."""
    return FiveTuple(
        UDP, Address(str(client[0]), int(client[1])), Address(str(server[0]), int(server[1]))
    )
