"""One node of an anycast cluster, sans-I/O: who handles a datagram, and what crosses the backbone.

Every node holds the service IP and the same listeners, so the network may hand any node a
datagram of any flow (DESIGN.md, "The cluster"). This module decides, per datagram:

* a client datagram (UDP) is handled here when this node has its allocation, or when the
  :class:`~forwarding.router.Router` says this node owns the flow; otherwise it is sealed into a
  CLIENT frame for the owner, which answers the client itself, from the service address;
* a peer datagram is handled here when one of this node's relays is bound to its destination,
  otherwise it goes to the owner of the relay port's slice as a PEER frame;
* a frame from the backbone is opened (forged, tampered and replayed frames are dropped and
  counted), then either handled here or — membership views disagree for a moment — forwarded once
  more (at most 2 backbone hops, :data:`forwarding.router.MAX_HOPS`).

An Allocate redeeming a RESERVATION-TOKEN goes to the node holding the reserved port (its id
starts the token, ``CoreSettings.reservation_prefix``). That node pins the flow to itself and
tells every node, which then send the flow there rather than to its hash owner, until it ends.

Binding requests are answered by whichever node receives them (they need no state), and TCP/TLS
clients belong to the node that accepted the connection: neither is ever forwarded. Heartbeats
carry a node's draining flag; CONTROL frames carry operator actions (revocations) to every node,
and a node that sees another join asks it for the revocations it holds, so one that was down
or restarted catches up.

Counters (in ``TurnServer.stats``): ``cluster.arrived.client`` (client datagrams from the
network), ``cluster.forwarded.client|peer`` (sent to the owner),
``cluster.second_chance`` (sent to a previous owner), ``backbone.sent.<type>``,
``backbone.received.<type>``, ``backbone.drop.<reason>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from forwarding.frames import BackboneCodec, Frame, FrameError, FrameType
from forwarding.hashing import flow_key
from forwarding.membership import Membership
from forwarding.router import MAX_HOPS, Router
from forwarding.slices import SliceTable
from stun import attributes as at
from stun.addresses import Address
from stun.channeldata import CHANNEL_FIRST_BYTE_MAX, CHANNEL_FIRST_BYTE_MIN
from stun.errors import StunDecodeError
from stun.message import decode
from turnd.core.actions import FiveTuple, Transport
from turnd.core.server import TurnServer

#: Pinned flows remembered (RESERVATION-TOKEN allocations away from their owner); the oldest
#: goes first past it.
MAX_PINS = 65536
#: Bytes of JSON one CONTROL frame carries at most when a list is split (well under a path MTU).
CONTROL_PAYLOAD_MAX = 1200
#: What HEARTBEAT and CONTROL frames carry as their (unused) addresses.
NOWHERE = Address("0.0.0.0", 0)
#: STUN methods (RFC 8489 §5, RFC 8656 §17) the router treats specially.
_BINDING, _ALLOCATE = 0x001, 0x003
_TYPE_NAMES = {kind: kind.name.lower() for kind in FrameType}


@attrs.frozen
class ToNode:
    """Send ``data`` (a sealed frame) to ``node``'s backbone address."""

    node: int
    data: bytes


@attrs.frozen
class ClientHere:
    """Handle ``data`` as if it had arrived from ``five_tuple.client`` on this node's listener."""

    five_tuple: FiveTuple
    data: bytes


@attrs.frozen
class PeerHere:
    """Handle ``data`` as if it had arrived from ``peer`` on this node's relay ``relay``."""

    relay: Address
    peer: Address
    data: bytes


@attrs.frozen
class ControlHere:
    """An operator action another node broadcast (e.g. ``{"op": "revoke", "username": ...}``)."""

    origin: int
    body: Mapping[str, Any]


Delivery = ToNode | ClientHere | PeerHere | ControlHere | None


def classify(data: bytes) -> tuple[bool, bool]:
    """``(stateless, creates)`` of a client datagram.

    Stateless: a STUN Binding (any node answers it) or something that is not STUN or ChannelData
    (the core drops it where it lands). Creates: an Allocate request, which must reach the owner
    and is never sent to a previous owner.
    """
    if len(data) < 4:
        return True, False
    first = data[0]
    if CHANNEL_FIRST_BYTE_MIN <= first <= CHANNEL_FIRST_BYTE_MAX:
        return False, False  # ChannelData
    if first & 0xC0 or len(data) < 20:
        return True, False
    kind = (first << 8) | data[1]
    method = (kind & 0x000F) | ((kind & 0x00E0) >> 1) | ((kind & 0x3E00) >> 2)
    request = not kind & 0x0110
    return method == _BINDING, method == _ALLOCATE and request


class ClusterNode:
    """The cluster logic of the node ``codec.node_id`` around its ``core``.

    ``backbone`` maps every configured node id to its backbone address (the adapter sends
    :class:`ToNode` there). The core's relay ports are restricted to this node's slices.
    """

    def __init__(
        self,
        core: TurnServer,
        codec: BackboneCodec,
        membership: Membership,
        slices: SliceTable,
        backbone: Mapping[int, Address],
        started: float | None = None,
    ) -> None:
        self.core = core
        #: Until then this node is *joining*: it tells the others it takes no new flows (as a
        #: draining node does) while it learns the whole view, so that when flows move to it
        #: its previous view is the cluster's and unknown flows find their previous owner.
        self.joining_until = None if started is None else started + membership.dead_after
        self.codec = codec
        self.node_id = codec.node_id
        self.membership = membership
        self.slices = slices
        self.router = Router(self.node_id, membership, slices)
        self.backbone = dict(backbone)
        self.stats = core.stats
        #: Flows whose allocation lives on a node other than their owner (the node holding the
        #: reserved port of a RESERVATION-TOKEN), told by that node: flow -> node.
        self.pins: dict[FiveTuple, int] = {}
        #: Flows this node pinned to itself (it tells the others when they end).
        self.pinned_here: set[FiveTuple] = set()
        #: Frames decided on the way (pins): the adapter sends them after each call.
        self.outbox: list[ToNode] = []
        core.restrict_ports(slices.ranges(self.node_id))

    # --- datagrams that arrived from the network ---------------------------------------------

    def client_target(self, five_tuple: FiveTuple, data: bytes) -> int:
        """The node that must handle a client datagram that arrived here (this node's id: here)."""
        self.stats["cluster.arrived.client"] += 1
        if five_tuple.transport is not Transport.UDP or five_tuple in self.core.allocations:
            return self.node_id
        stateless, creates = classify(data)
        if stateless:
            return self.node_id
        pinned = self.pins.get(five_tuple) if self.pins else None
        if pinned is not None and pinned in self.membership.alive:
            return pinned
        if creates:
            holder = self._token_holder(five_tuple, data)
            if holder is not None:
                return holder
        key = flow_key(five_tuple.transport.value, five_tuple.client, five_tuple.server)
        return self.router.client(key, 0, self.node_id, False, creates)

    def _token_holder(self, five_tuple: FiveTuple, data: bytes) -> int | None:
        """For an Allocate redeeming a RESERVATION-TOKEN: the node holding the reserved port (its
        id starts the token); None for any other Allocate. When that is this node and the flow
        is owned elsewhere, the flow is pinned here and every other node told."""
        try:
            token = decode(data).get(at.ReservationToken)
        except StunDecodeError:
            return None
        if token is None or len(token.token) < 2:
            return None
        holder = int.from_bytes(token.token[:2], "big")
        if holder not in self.backbone or holder not in self.membership.alive:
            return self.node_id  # the core answers 508: no such reservation here
        if holder == self.node_id:
            self._pin(five_tuple)
        return holder

    def _pin(self, five_tuple: FiveTuple) -> None:
        key = flow_key(five_tuple.transport.value, five_tuple.client, five_tuple.server)
        if self.router.owner_of(key) == self.node_id or five_tuple in self.pinned_here:
            return
        self.pinned_here.add(five_tuple)
        self.stats["cluster.pins"] += 1
        self.outbox += self.broadcast({"op": "pin", "flow": _flow_text(five_tuple)})

    def pins_for(self, node: int) -> list[ToNode]:
        """The pins of this node's flows, for ``node`` (one that joined after they were made)."""
        return [self.tell(node, {"op": "pin", "flow": _flow_text(f)}) for f in self.pinned_here]

    def allocation_ended(self, five_tuple: FiveTuple) -> list[ToNode]:
        """An allocation of this node ended: if its flow was pinned here, unpin it everywhere."""
        if five_tuple not in self.pinned_here:
            return []
        self.pinned_here.discard(five_tuple)
        return self.broadcast({"op": "unpin", "flow": _flow_text(five_tuple)})

    def forward_client(
        self, target: int, five_tuple: FiveTuple, data: bytes, hop: int = 1
    ) -> bytes:
        """A CLIENT frame carrying ``data`` to ``target``, counted."""
        self.stats["cluster.forwarded.client"] += 1
        frame = Frame(
            FrameType.CLIENT,
            self.node_id,
            hop,
            five_tuple.transport.value,
            five_tuple.client,
            five_tuple.server,
            data,
        )
        return self._seal(frame)

    def peer_target(self, relay: Address) -> int | None:
        """The node that must handle a peer datagram sent to ``relay``; None: nobody (drop)."""
        if relay in self.core.by_relay:
            return self.node_id
        target = self.router.peer(relay.port, 0, False)
        if target is None:
            self.stats["drop.peer_slice_owner_down"] += 1
        return target

    def forward_peer(self, target: int, relay: Address, peer: Address, data: bytes) -> bytes:
        """A PEER frame carrying ``data`` to the owner of ``relay``'s slice, counted."""
        self.stats["cluster.forwarded.peer"] += 1
        return self._seal(Frame(FrameType.PEER, self.node_id, 1, "udp", peer, relay, data))

    # --- the backbone ------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> Delivery:
        """Open a backbone datagram and say what to do with it; bad frames are counted drops."""
        try:
            frame = self.codec.open(data)
        except FrameError as exc:
            self.stats["backbone.drop." + exc.reason] += 1
            return None
        self.stats["backbone.received." + _TYPE_NAMES[frame.type]] += 1
        if frame.type is FrameType.CLIENT:
            return self._client_frame(frame)
        if frame.type is FrameType.PEER:
            if frame.destination in self.core.by_relay:
                return PeerHere(frame.destination, frame.source, frame.payload)
            self.stats["drop.peer_no_allocation"] += 1
            return None
        if frame.type is FrameType.HEARTBEAT:
            draining = frame.payload[:1] == b"\x01"
            self.membership.heard(frame.origin, now, draining)
            return None
        try:
            body = json.loads(frame.payload)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self.stats["backbone.drop.malformed"] += 1
            return None
        if body.get("op") in ("pin", "unpin"):
            flow = _flow_of(body.get("flow"))
            if flow is None:
                self.stats["backbone.drop.malformed"] += 1
            elif body["op"] == "unpin":
                self.pins.pop(flow, None)
            else:
                if len(self.pins) >= MAX_PINS:
                    del self.pins[next(iter(self.pins))]
                self.pins[flow] = frame.origin
            return None
        return ControlHere(frame.origin, body)

    def _client_frame(self, frame: Frame) -> Delivery:
        try:
            transport = Transport(frame.transport)
        except ValueError:
            self.stats["backbone.drop.malformed"] += 1
            return None
        five_tuple = FiveTuple(transport, frame.source, frame.destination)
        if five_tuple in self.core.allocations:
            return ClientHere(five_tuple, frame.payload)
        _, creates = classify(frame.payload)
        pinned = self.pins.get(five_tuple) if self.pins else None
        if pinned is None and creates:
            pinned = self._token_holder(five_tuple, frame.payload)
        if pinned is not None and pinned != self.node_id and frame.hop < MAX_HOPS:
            return ToNode(pinned, self.forward_client(pinned, five_tuple, frame.payload, 2))
        if pinned is not None:
            return ClientHere(five_tuple, frame.payload)
        key = flow_key(frame.transport, frame.source, frame.destination)
        target = self.router.client(key, frame.hop, frame.origin, False, creates)
        if target == self.node_id:
            return ClientHere(five_tuple, frame.payload)
        self.stats["cluster.second_chance"] += 1
        return ToNode(target, self.forward_client(target, five_tuple, frame.payload, frame.hop + 1))

    # --- membership and control --------------------------------------------------------------

    def heartbeats(self, now: float) -> list[ToNode]:
        """One HEARTBEAT frame for every other configured node (the adapter sends them).

        The frame says whether this node takes new flows: not while draining or joining.
        """
        joining = self.joining_until is not None and now < self.joining_until
        closed = self.core.draining or joining
        flag = b"\x01" if closed else b"\x00"
        self.membership.set_draining(closed)
        frame = Frame(FrameType.HEARTBEAT, self.node_id, 0, "udp", NOWHERE, NOWHERE, flag)
        return [ToNode(node, self._seal(frame)) for node in self.backbone if node != self.node_id]

    def expire(self, now: float) -> bool:
        """Forget nodes not heard for ``dead_after`` seconds; True when the view changed."""
        return self.membership.expire(now)

    def broadcast(self, body: Mapping[str, Any]) -> list[ToNode]:
        """A CONTROL frame with ``body`` (JSON) for every other configured node."""
        return [self.tell(node, body) for node in self.backbone if node != self.node_id]

    def tell(self, node: int, body: Mapping[str, Any]) -> ToNode:
        """A CONTROL frame with ``body`` (JSON) for ``node`` alone."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        frame = Frame(FrameType.CONTROL, self.node_id, 0, "udp", NOWHERE, NOWHERE, payload)
        return ToNode(node, self._seal(frame))

    def revocations(self, node: int, usernames: Iterable[str]) -> list[ToNode]:
        """``usernames`` for ``node`` as ``{"op": "revoke", "usernames": [...]}`` frames, each
        under :data:`CONTROL_PAYLOAD_MAX` bytes of JSON (a single longer name goes alone)."""
        frames: list[ToNode] = []
        chunk: list[str] = []
        size = 0
        for name in usernames:
            cost = len(json.dumps(name)) + 1
            if chunk and size + cost > CONTROL_PAYLOAD_MAX:
                frames.append(self.tell(node, {"op": "revoke", "usernames": chunk}))
                chunk, size = [], 0
            chunk.append(name)
            size += cost
        if chunk:
            frames.append(self.tell(node, {"op": "revoke", "usernames": chunk}))
        return frames

    def owner(self, transport: str, client: Address, server: Address) -> int:
        """The node that owns a client flow in the current view (for turnctl)."""
        return self.router.owner_of(flow_key(transport, client, server))

    def _seal(self, frame: Frame) -> bytes:
        self.stats["backbone.sent." + _TYPE_NAMES[frame.type]] += 1
        return self.codec.seal(frame)


def _flow_text(five_tuple: FiveTuple) -> list[object]:
    """A 5-tuple as JSON data: [transport, client host, client port, server host, server port]."""
    client, server = five_tuple.client, five_tuple.server
    return [five_tuple.transport.value, client.host, client.port, server.host, server.port]


def _flow_of(value: object) -> FiveTuple | None:
    """The 5-tuple of :func:`_flow_text`'s data, or None if it is not that."""
    if not isinstance(value, list) or len(value) != 5:
        return None
    transport, client_host, client_port, server_host, server_port = value
    if not (isinstance(client_port, int) and isinstance(server_port, int)):
        return None
    if not (isinstance(client_host, str) and isinstance(server_host, str)):
        return None
    try:
        return FiveTuple(
            Transport(transport),
            Address(client_host, client_port),
            Address(server_host, server_port),
        )
    except ValueError:
        return None
