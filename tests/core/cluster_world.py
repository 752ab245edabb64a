"""An in-memory anycast cluster: several cores, each wrapped in a ClusterNode, and a backbone.

No sockets. The "network" hands every client and peer datagram to a node chosen at random (as
ECMP would, but without its stickiness — the harshest case), through the node's entry points
(``client_message``, ``peer_message``); a node either handles it or answers ``ForwardToNode``,
which the world delivers to the target node's ``backbone_frame``. Heartbeats are delivered when
the test calls :meth:`MemoryCluster.heartbeat` (or :meth:`advance`).

A :class:`MemoryCluster` stands in for the harness's ``World``, so the harness's ``Client``
speaks TURN through the whole cluster. Every relay bind is checked: the port must be in the
binding node's own slices and bound nowhere else.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable

from auth.credentials import Authenticator
from auth.nonce import NonceManager, SecurityFeature
from forwarding.frames import BackboneCodec, FrameError, FrameType
from forwarding.membership import Membership
from forwarding.slices import SliceTable
from stun.addresses import Address
from tests.core.harness import SERVER, START, Client, core_settings, counter_rng
from turnd.core.actions import (
    Action,
    AllocationEnded,
    CloseRelay,
    FiveTuple,
    ForwardToNode,
    OpenRelay,
    as_actions,
)
from turnd.core.cluster import ClusterNode
from turnd.core.peer_policy import PeerPolicy
from turnd.core.server import TurnServer

KEY_ID = 7
KEY = bytes(range(32))
PORT_MIN, PORT_MAX = 50000, 50511
#: The node id of the world's own tap on the backbone (no node has it).
TAP_ID = 65535


class MemoryCluster:
    """``nodes`` cluster nodes (ids 1..n) sharing the service address ``SERVER``."""

    def __init__(self, nodes: int = 3, *, seed: int = 1, up: Iterable[int] | None = None) -> None:
        self.now = START
        self.rng = random.Random(seed)
        self.ids = list(range(1, nodes + 1))
        self.nodes: dict[int, ClusterNode] = {}
        auth = Authenticator.create(
            core_settings().realm, users={"alice": "alice-pw", "bob": "bob-pw"}
        )
        features = (SecurityFeature.PASSWORD_ALGORITHMS,)
        for node_id in self.ids:
            core = TurnServer(
                core_settings(
                    port_min=PORT_MIN,
                    port_max=PORT_MAX,
                    reservation_prefix=node_id.to_bytes(2, "big"),
                ),
                auth,
                NonceManager(b"k" * 32, features=features),  # one key: nonces valid anywhere
                PeerPolicy.build(allow=(), deny=(), own_addresses=[SERVER]),
                counter_rng(node_id),
            )
            self.nodes[node_id] = self.make_node(core, node_id)
        #: Nodes that are running; a dead one neither receives nor sends.
        self.up = set(self.ids if up is None else up)
        #: Nodes the network delivers client and peer datagrams to (ECMP next hops).
        self.next_hops = set(self.up)
        #: Relay address -> node that bound it.
        self.bound: dict[Address, int] = {}
        #: Backbone frames delivered, by how many hops the datagram had taken when it arrived.
        self.hops: Counter[int] = Counter()
        #: Datagrams handled, by whether the node that got them from the network handled them.
        self.handled: Counter[str] = Counter()
        #: Frames tapped off the backbone (for tampering tests).
        self.tapped: list[tuple[int, bytes]] = []
        #: Opens tapped frames (a codec of its own: the nodes' replay windows are theirs).
        self.tap = BackboneCodec({KEY_ID: KEY}, KEY_ID, TAP_ID, 1, [TAP_ID, *self.ids])
        #: Operator actions delivered (CONTROL frames but pins): (receiving node, body).
        self.controls: list[tuple[int, dict[str, object]]] = []
        self.heartbeat()

    def make_node(self, core: TurnServer, node_id: int, epoch: int = 1) -> ClusterNode:
        codec = BackboneCodec({KEY_ID: KEY}, KEY_ID, node_id, epoch, self.ids)
        membership = Membership(node_id, self.ids, dead_after=2.0)
        slices = SliceTable(PORT_MIN, PORT_MAX, self.ids, 16)
        backbone = {i: Address(f"10.0.0.{i}", 7478) for i in self.ids}
        return ClusterNode(core, codec, membership, slices, backbone)

    # --- the network -------------------------------------------------------------------------

    def pick(self) -> int:
        return self.rng.choice(sorted(self.next_hops & self.up))

    def client_packet(self, five_tuple: FiveTuple, data: bytes) -> list[Action]:
        """A client datagram reaches a random node; the actions of whichever node handled it."""
        first = self.pick()
        node = self.nodes[first]
        forwarded = node.stats["cluster.forwarded.client"]
        out = node.client_message(five_tuple, data, self.now)
        self._count(node.stats["cluster.forwarded.client"] > forwarded)
        return self.carry(first, as_actions(out, five_tuple), hop=0)

    def peer_packet(self, relay: Address, peer: Address, data: bytes) -> list[Action]:
        """A peer datagram to ``relay`` reaches a random node."""
        first = self.pick()
        node = self.nodes[first]
        forwarded = node.stats["cluster.forwarded.peer"]
        out = node.peer_message(relay, peer, data, self.now)
        if out is None:
            return []
        self._count(node.stats["cluster.forwarded.peer"] > forwarded)
        return self.carry(first, as_actions(out), hop=0)

    def _count(self, forwarded: bool) -> None:
        self.handled["forwarded" if forwarded else "first"] += 1

    def carry(self, node_id: int, actions: list[Action], hop: int) -> list[Action]:
        """What ``node_id`` answered to a datagram that had taken ``hop`` backbone hops: the
        frames it forwards are delivered (what their nodes answer replaces them), the rest
        settled."""
        out: list[Action] = []
        for action in actions:
            if isinstance(action, ForwardToNode):
                out += self.deliver(action.node, action.data, hop + 1)
            else:
                out += self.settle(node_id, [action])
        return out

    def _control_of(self, data: bytes) -> dict[str, object] | None:
        """The body of a CONTROL frame (None for any other frame, or one that does not open)."""
        try:
            frame = self.tap.open(data)
        except FrameError:
            return None
        if frame.type is not FrameType.CONTROL:
            return None
        try:
            body = json.loads(frame.payload)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def deliver(self, node_id: int, frame: bytes, hop: int = 1) -> list[Action]:
        """A frame arrives at ``node_id`` over the backbone (lost if that node is down)."""
        self.tapped.append((node_id, frame))
        if node_id not in self.up:
            return []
        self.hops[hop] += 1
        body = self._control_of(frame)
        if body is not None and body.get("op") not in ("pin", "unpin"):
            self.controls.append((node_id, body))
        return self.carry(node_id, self.nodes[node_id].backbone_frame(frame, self.now), hop)

    def settle(self, node_id: int, actions: list[Action]) -> list[Action]:
        """Bind relays for ``node_id`` (checking slice ownership), as its adapter would."""
        out: list[Action] = []
        queue = list(actions)
        node = self.nodes[node_id]
        while queue:
            action = queue.pop(0)
            out.append(action)
            if isinstance(action, OpenRelay):
                owner = node.slices.owner(action.relay.port)
                assert owner == node_id, f"node {node_id} bound {action.relay} of node {owner}"
                assert action.relay not in self.bound, f"{action.relay} bound twice"
                self.bound[action.relay] = node_id
                queue.extend(node.core.relay_opened(action.ticket, True, self.now))
            elif isinstance(action, CloseRelay):
                self.bound.pop(action.relay, None)
            elif isinstance(action, AllocationEnded):
                for frame in node.allocation_ended(action.five_tuple):
                    self.deliver(frame.node, frame.data)
        return out

    # --- time and membership -----------------------------------------------------------------

    def heartbeat(self) -> None:
        """Every running node sends its heartbeats; then every node expires silent ones."""
        for node_id in sorted(self.up):
            for frame in self.nodes[node_id].heartbeats(self.now):
                if frame.node in self.up:
                    self.nodes[frame.node].backbone_frame(frame.data, self.now)
        for node_id in self.up:
            self.nodes[node_id].expire(self.now)

    def advance(self, seconds: float, step: float = 0.5) -> list[Action]:
        """Move the clock in heartbeat steps, running heartbeats and every core's timers."""
        actions: list[Action] = []
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            self.heartbeat()
            for node_id in sorted(self.up):
                core = self.nodes[node_id].core
                actions += self.settle(node_id, core.handle_timer(self.now))
        return actions

    def kill(self, node_id: int) -> None:
        """The node stops: its allocations are gone with it, and it is no next hop."""
        self.up.discard(node_id)
        self.next_hops.discard(node_id)
        self.bound = {relay: n for relay, n in self.bound.items() if n != node_id}

    def start(self, node_id: int) -> None:
        """A node that was down starts (fresh core and epoch) and becomes a next hop."""
        old = self.nodes[node_id].core
        core = TurnServer(
            old.settings,
            old.auth.authenticator,
            old.auth.nonces,
            old.policy,
            counter_rng(node_id + 100),
        )
        self.nodes[node_id] = self.make_node(core, node_id, epoch=2)
        self.up.add(node_id)
        self.next_hops.add(node_id)

    def owner_of(self, client: Client) -> int:
        """The node holding ``client``'s allocation."""
        [node_id] = [n for n in self.up if client.five_tuple in self.nodes[n].core.allocations]
        return node_id
