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
or restarted catches up. Every CONTROL operation is a row of
:data:`turnd.core.cluster_control.CONTROL_OPS`.

Like the core, the node answers with the core's actions: :meth:`ClusterNode.client_message` and
:meth:`ClusterNode.peer_message` keep :class:`~turnd.core.server.TurnServer`'s outcome contract
(see :mod:`turnd.core.actions`), so the adapter hands every datagram to the node exactly as a
single node hands it to the core; a datagram for another node comes back as a
:class:`~turnd.core.actions.ForwardToNode`, and so do frames decided on the way (pins).

Counters (in ``TurnServer.stats``): ``cluster.arrived.client`` (client datagrams from the
network), ``cluster.forwarded.client|peer`` (sent to the owner),
``cluster.second_chance`` (sent to a previous owner), ``backbone.sent.<type>``,
``backbone.received.<type>``, ``backbone.drop.<reason>``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from forwarding.frames import BackboneCodec, Frame, FrameError, FrameType
from forwarding.hashing import flow_key
from forwarding.membership import Membership
from forwarding.router import MAX_HOPS, Router
from forwarding.slices import SliceTable
from stun import attributes as at
from stun.addresses import Address
from stun.channeldata import CHANNEL_FIRST_BYTE_MAX, CHANNEL_FIRST_BYTE_MIN
from stun.errors import StunDecodeError
from stun.message import MessageClass, Method, decode, split_type
from turnd.core import cluster_control as control
from turnd.core.actions import (
    UDP,
    Action,
    ClientOutcome,
    FiveTuple,
    ForwardToNode,
    PeerOutcome,
    Transport,
    as_actions,
)
from turnd.core.server import TurnServer

#: Pinned flows remembered (RESERVATION-TOKEN allocations away from their owner); the oldest
#: goes first past it.
MAX_PINS = 65536
#: Bytes of JSON one CONTROL frame carries at most when a list is split (well under a path MTU).
CONTROL_PAYLOAD_MAX = 1200
#: What HEARTBEAT and CONTROL frames carry as their (unused) addresses.
NOWHERE = Address("0.0.0.0", 0)
_TYPE_NAMES = {kind: kind.name.lower() for kind in FrameType}
#: No frames decided on the way.
_NO_PINS: tuple[ForwardToNode, ...] = ()


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
    method, cls = split_type((first << 8) | data[1])
    return method == Method.BINDING, method == Method.ALLOCATE and cls is MessageClass.REQUEST


def _nothing_revoked() -> Collection[str]:
    return ()


class ClusterNode:
    """The cluster logic of the node ``codec.node_id`` around its ``core``.

    ``backbone`` maps every configured node id to its backbone address (the adapter sends
    :class:`ForwardToNode` there). The core's relay ports are restricted to this node's slices.
    ``revoked`` gives the usernames the adapter holds revoked (for ``revocations?``).
    """

    def __init__(
        self,
        core: TurnServer,
        codec: BackboneCodec,
        membership: Membership,
        slices: SliceTable,
        backbone: Mapping[int, Address],
        started: float | None = None,
        revoked: Callable[[], Collection[str]] = _nothing_revoked,
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
        self.revoked = revoked
        #: Flows whose allocation lives on a node other than their owner (the node holding the
        #: reserved port of a RESERVATION-TOKEN), told by that node: flow -> node.
        self.pins: dict[FiveTuple, int] = {}
        #: Flows this node pinned to itself (it tells the others when they end).
        self.pinned_here: set[FiveTuple] = set()
        core.restrict_ports(slices.ranges(self.node_id))

    # --- datagrams that arrived from the network (TurnServer's entry points) -----------------

    def client_message(self, five_tuple: FiveTuple, data: bytes, now: float) -> ClientOutcome:
        """A client message that arrived here: the core's outcome when this node handles it,
        else ``[ForwardToNode]`` to the node that does (after any pins decided on the way).
        TCP/TLS frames belong to the node that accepted the connection and are not counted."""
        core = self.core
        if five_tuple.transport is not UDP:
            return core.client_message(five_tuple, data, now)
        self.stats["cluster.arrived.client"] += 1
        if five_tuple in core.allocations:
            return core.client_message(five_tuple, data, now)
        target, pins = self._client_target(five_tuple, data)
        if target != self.node_id:
            return [*pins, ForwardToNode(target, self.forward_client(target, five_tuple, data))]
        if not pins:
            return core.client_message(five_tuple, data, now)
        return [*pins, *as_actions(core.client_message(five_tuple, data, now), five_tuple)]

    def _client_target(
        self, five_tuple: FiveTuple, data: bytes
    ) -> tuple[int, Sequence[ForwardToNode]]:
        """The node that must handle a client datagram of a flow with no allocation here, and
        the pins decided on the way."""
        stateless, creates = classify(data)
        if stateless:
            return self.node_id, _NO_PINS
        pinned = self.pins.get(five_tuple) if self.pins else None
        if pinned is not None and pinned in self.membership.alive:
            return pinned, _NO_PINS
        if creates:
            holder, pins = self._token_holder(five_tuple, data)
            if holder is not None:
                return holder, pins
        key = flow_key(five_tuple.transport.value, five_tuple.client, five_tuple.server)
        return self.router.client(key, 0, self.node_id, False, creates), _NO_PINS

    def _token_holder(
        self, five_tuple: FiveTuple, data: bytes
    ) -> tuple[int | None, Sequence[ForwardToNode]]:
        """For an Allocate redeeming a RESERVATION-TOKEN: the node holding the reserved port (its
        id starts the token); None for any other Allocate. When that is this node and the flow
        is owned elsewhere, the flow is pinned here: the frames telling every other node."""
        try:
            token = decode(data).get(at.ReservationToken)
        except StunDecodeError:
            return None, _NO_PINS
        if token is None or len(token.token) < 2:
            return None, _NO_PINS
        holder = int.from_bytes(token.token[:2], "big")
        if holder not in self.backbone or holder not in self.membership.alive:
            return self.node_id, _NO_PINS  # the core answers 508: no such reservation here
        if holder == self.node_id:
            return holder, self._pin(five_tuple)
        return holder, _NO_PINS

    def _pin(self, five_tuple: FiveTuple) -> list[ForwardToNode]:
        key = flow_key(five_tuple.transport.value, five_tuple.client, five_tuple.server)
        if self.router.owner_of(key) == self.node_id or five_tuple in self.pinned_here:
            return []
        self.pinned_here.add(five_tuple)
        self.stats["cluster.pins"] += 1
        return self.broadcast(control.pin(five_tuple))

    def learn_pin(self, five_tuple: FiveTuple, node: int) -> None:
        """``node`` holds the allocation of ``five_tuple`` (a ``pin`` it sent)."""
        if len(self.pins) >= MAX_PINS:
            del self.pins[next(iter(self.pins))]
        self.pins[five_tuple] = node

    def pins_for(self, node: int) -> list[ForwardToNode]:
        """The pins of this node's flows, for ``node`` (one that joined after they were made)."""
        return [self.tell(node, control.pin(flow)) for flow in self.pinned_here]

    def allocation_ended(self, five_tuple: FiveTuple) -> list[ForwardToNode]:
        """An allocation of this node ended: if its flow was pinned here, unpin it everywhere."""
        if five_tuple not in self.pinned_here:
            return []
        self.pinned_here.discard(five_tuple)
        return self.broadcast(control.unpin(five_tuple))

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

    def peer_message(self, relay: Address, peer: Address, data: bytes, now: float) -> PeerOutcome:
        """A peer datagram sent to ``relay`` that arrived here: the core's outcome when one of
        this node's relays is bound to it, else ``[ForwardToNode]`` to the owner of the port's
        slice; None when that owner is down or is this node (dropped, counted)."""
        if relay in self.core.by_relay:
            return self.core.peer_message(relay, peer, data, now)
        target = self.router.peer(relay.port, 0, False)
        if target is None:
            self.stats["drop.peer_slice_owner_down"] += 1
            return None
        if target == self.node_id:
            self.stats["drop.peer_no_allocation"] += 1
            return None
        self.stats["cluster.forwarded.peer"] += 1
        frame = Frame(FrameType.PEER, self.node_id, 1, "udp", peer, relay, data)
        return [ForwardToNode(target, self._seal(frame))]

    # --- the backbone ------------------------------------------------------------------------

    def backbone_frame(self, data: bytes, now: float) -> list[Action]:
        """A datagram from the backbone: open it and act on it. CLIENT and PEER frames go
        through the core's entry points (or once more to another node); bad frames are
        counted drops."""
        try:
            frame = self.codec.open(data)
        except FrameError as exc:
            self.stats["backbone.drop." + exc.reason] += 1
            return []
        self.stats["backbone.received." + _TYPE_NAMES[frame.type]] += 1
        if frame.type is FrameType.CLIENT:
            return self._client_frame(frame, now)
        if frame.type is FrameType.PEER:
            relay, peer = frame.destination, frame.source
            return as_actions(self.core.peer_message(relay, peer, frame.payload, now))
        if frame.type is FrameType.HEARTBEAT:
            draining = frame.payload[:1] == b"\x01"
            self.membership.heard(frame.origin, now, draining)
            return []
        return control.run_control(self, frame.origin, frame.payload)

    def _client_frame(self, frame: Frame, now: float) -> list[Action]:
        try:
            transport = Transport(frame.transport)
        except ValueError:
            self.stats["backbone.drop.malformed"] += 1
            return []
        five_tuple = FiveTuple(transport, frame.source, frame.destination)
        data = frame.payload
        if five_tuple in self.core.allocations:
            return as_actions(self.core.client_message(five_tuple, data, now), five_tuple)
        _, creates = classify(data)
        pinned = self.pins.get(five_tuple) if self.pins else None
        pins: Sequence[ForwardToNode] = _NO_PINS
        if pinned is None and creates:
            pinned, pins = self._token_holder(five_tuple, data)
        if pinned is not None and pinned != self.node_id and frame.hop < MAX_HOPS:
            return [*pins, ForwardToNode(pinned, self.forward_client(pinned, five_tuple, data, 2))]
        if pinned is None:
            key = flow_key(frame.transport, frame.source, frame.destination)
            target = self.router.client(key, frame.hop, frame.origin, False, creates)
            if target != self.node_id:
                self.stats["cluster.second_chance"] += 1
                sealed = self.forward_client(target, five_tuple, data, frame.hop + 1)
                return [ForwardToNode(target, sealed)]
        return [*pins, *as_actions(self.core.client_message(five_tuple, data, now), five_tuple)]

    # --- membership and control --------------------------------------------------------------

    def heartbeats(self, now: float) -> list[ForwardToNode]:
        """One HEARTBEAT frame for every other configured node (the adapter sends them).

        The frame says whether this node takes new flows: not while draining or joining.
        """
        joining = self.joining_until is not None and now < self.joining_until
        closed = self.core.draining or joining
        flag = b"\x01" if closed else b"\x00"
        self.membership.set_draining(closed)
        frame = Frame(FrameType.HEARTBEAT, self.node_id, 0, "udp", NOWHERE, NOWHERE, flag)
        return [
            ForwardToNode(node, self._seal(frame)) for node in self.backbone if node != self.node_id
        ]

    def expire(self, now: float) -> bool:
        """Forget nodes not heard for ``dead_after`` seconds; True when the view changed."""
        return self.membership.expire(now)

    def joined(self, nodes: Iterable[int]) -> list[ForwardToNode]:
        """Nodes that just joined this node's view may hold revocations made while we were
        apart: ask each (``revocations?``)."""
        ask = control.ask_revocations()
        return [self.tell(node, ask) for node in nodes if node != self.node_id]

    def announce_revocation(self, username: str) -> list[ForwardToNode]:
        """An operator revoked ``username`` here: tell every other node (``revoke``)."""
        return self.broadcast(control.revoke(username))

    def broadcast(self, body: Mapping[str, object]) -> list[ForwardToNode]:
        """A CONTROL frame with ``body`` (JSON) for every other configured node."""
        return [self.tell(node, body) for node in self.backbone if node != self.node_id]

    def tell(self, node: int, body: Mapping[str, object]) -> ForwardToNode:
        """A CONTROL frame with ``body`` (JSON) for ``node`` alone."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        frame = Frame(FrameType.CONTROL, self.node_id, 0, "udp", NOWHERE, NOWHERE, payload)
        return ForwardToNode(node, self._seal(frame))

    def revocations(self, node: int, usernames: Iterable[str]) -> list[ForwardToNode]:
        """``usernames`` for ``node`` as ``{"op": "revoke", "usernames": [...]}`` frames, each
        under :data:`CONTROL_PAYLOAD_MAX` bytes of JSON (a single longer name goes alone)."""
        frames: list[ForwardToNode] = []
        chunk: list[str] = []
        size = 0
        for name in usernames:
            cost = len(json.dumps(name)) + 1
            if chunk and size + cost > CONTROL_PAYLOAD_MAX:
                frames.append(self.tell(node, control.revoke_all(chunk)))
                chunk, size = [], 0
            chunk.append(name)
            size += cost
        if chunk:
            frames.append(self.tell(node, control.revoke_all(chunk)))
        return frames

    def owner(self, transport: str, client: Address, server: Address) -> int:
        """The node that owns a client flow in the current view (for turnctl)."""
        return self.router.owner_of(flow_key(transport, client, server))

    def _seal(self, frame: Frame) -> bytes:
        self.stats["backbone.sent." + _TYPE_NAMES[frame.type]] += 1
        return self.codec.seal(frame)
