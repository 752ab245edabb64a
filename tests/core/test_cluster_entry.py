"""The cluster node's entry points keep the core's outcome contract (turnd/core/cluster.py).

``ClusterNode.client_message`` / ``peer_message`` answer what ``TurnServer``'s answer when the
node handles the datagram, and ``[ForwardToNode]`` when another node does; frames decided on the
way (pins) come in the same list. The cases the random-node tests of test_cluster_memory.py do
not reach on purpose are here.
"""

from __future__ import annotations

from typing import Any

import pytest

from stun import attributes as at
from stun.addresses import Address
from stun.message import Message, MessageClass, Method, decode, encode
from tests.core.cluster_world import PORT_MAX, PORT_MIN, MemoryCluster
from tests.core.harness import PEER, SERVER, error_code, replies
from turnd.core import cluster as cluster_module
from turnd.core.actions import FiveTuple, ForwardToNode, Transport, as_actions
from turnd.core.cluster_control import pin


def flow(index: int, transport: Transport = Transport.UDP) -> FiveTuple:
    return FiveTuple(transport, Address("203.0.113.7", 41000 + index), SERVER)


def owned_by(cluster: MemoryCluster, owner: int) -> FiveTuple:
    """A UDP flow that node ``owner`` owns in node 1's view."""
    node = cluster.nodes[1]
    return next(
        f
        for f in map(flow, range(1000))
        if node.owner(f.transport.value, f.client, f.server) == owner
    )


def request(method: Method, *attributes: Any) -> bytes:
    return encode(Message(method, MessageClass.REQUEST, b"\x07" * 12, attributes))


def error_code_of(data: bytes) -> int | None:
    return error_code(decode(data))


def test_a_tcp_frame_goes_to_the_core_and_is_not_counted_as_arrived() -> None:
    """TCP/TLS clients belong to the node that accepted them: no routing, no cluster counter."""
    cluster = MemoryCluster(3)
    node = cluster.nodes[1]
    five_tuple = flow(0, Transport.TCP)
    out = node.client_message(five_tuple, request(Method.BINDING), cluster.now)
    [answer] = replies(as_actions(out, five_tuple), five_tuple)
    assert answer[:2] == b"\x01\x01"  # a Binding success, from this node
    assert node.stats["cluster.arrived.client"] == 0


def test_a_datagram_of_a_flow_owned_elsewhere_is_one_forward_to_its_owner() -> None:
    """An Allocate of a flow node 2 owns, arriving at node 1: [ForwardToNode(2, a CLIENT frame)]."""
    cluster = MemoryCluster(3)
    node = cluster.nodes[1]
    five_tuple = owned_by(cluster, 2)
    out = node.client_message(five_tuple, request(Method.ALLOCATE), cluster.now)
    assert isinstance(out, list) and [type(a) for a in out] == [ForwardToNode]
    [forward] = out
    assert isinstance(forward, ForwardToNode) and forward.node == 2
    assert node.stats["cluster.forwarded.client"] == 1
    [answer] = replies(cluster.nodes[2].backbone_frame(forward.data, cluster.now), five_tuple)
    assert error_code_of(answer) == 401  # node 2's core answered: no credentials yet


def test_an_allocate_that_does_not_decode_is_routed_by_its_hash() -> None:
    """An Allocate whose attributes do not decode names no reservation: its owner gets it."""
    cluster = MemoryCluster(3)
    five_tuple = owned_by(cluster, 3)
    data = bytearray(request(Method.ALLOCATE, at.RequestedTransport(17)))
    data[3] += 4  # the length now runs past the end
    out = cluster.nodes[1].client_message(five_tuple, bytes(data), cluster.now)
    assert isinstance(out, list) and [a.node for a in out if isinstance(a, ForwardToNode)] == [3]


def test_a_token_of_a_node_not_in_the_cluster_is_answered_here() -> None:
    """A RESERVATION-TOKEN naming no live node: the node that got it answers (the core: 508)."""
    cluster = MemoryCluster(3)
    node = cluster.nodes[1]
    five_tuple = owned_by(cluster, 2)
    token = at.ReservationToken(b"\x00\x09" + b"\x00" * 6)
    out = node.client_message(five_tuple, request(Method.ALLOCATE, token), cluster.now)
    assert not any(isinstance(a, ForwardToNode) for a in as_actions(out, five_tuple))
    assert node.stats["cluster.forwarded.client"] == 0


def test_pins_past_max_pins_forget_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node remembers MAX_PINS pins; one more forgets the first it learnt."""
    monkeypatch.setattr(cluster_module, "MAX_PINS", 2)
    cluster = MemoryCluster(3)
    for index in range(3):
        frame = cluster.nodes[2].tell(1, pin(flow(index)))
        assert cluster.nodes[1].backbone_frame(frame.data, cluster.now) == []
    assert cluster.nodes[1].pins == {flow(1): 2, flow(2): 2}


def test_a_pinned_flow_is_forwarded_to_its_pin_but_not_past_max_hops() -> None:
    """A CLIENT frame of a flow pinned to node 3 goes on to 3 after one hop; one that already
    took two (MAX_HOPS) is handled where it lands."""
    cluster = MemoryCluster(3)
    five_tuple = owned_by(cluster, 1)
    cluster.nodes[1].pins[five_tuple] = 3
    sealed = cluster.nodes[2].forward_client(1, five_tuple, request(Method.REFRESH), hop=1)
    [forward] = cluster.nodes[1].backbone_frame(sealed, cluster.now)
    assert isinstance(forward, ForwardToNode) and forward.node == 3
    sealed = cluster.nodes[2].forward_client(1, five_tuple, request(Method.REFRESH), hop=2)
    actions = cluster.nodes[1].backbone_frame(sealed, cluster.now)
    assert not any(isinstance(a, ForwardToNode) for a in actions)
    assert error_code_of(replies(actions, five_tuple)[0]) == 401


def test_a_bytes_answer_needs_its_sender() -> None:
    """as_actions of a bytes answer without the sender's 5-tuple is a ValueError, not a guess."""
    with pytest.raises(ValueError, match="five_tuple"):
        as_actions(b"answer")


def test_a_peer_datagram_for_this_nodes_slice_without_an_allocation_is_dropped() -> None:
    """A port of node 1's own slices that no allocation holds: None, drop.peer_no_allocation."""
    cluster = MemoryCluster(3)
    node = cluster.nodes[1]
    port = next(p for p in range(PORT_MIN, PORT_MAX + 1) if node.slices.owner(p) == 1)
    assert node.peer_message(Address(SERVER.host, port), PEER, b"x", cluster.now) is None
    assert node.stats["drop.peer_no_allocation"] == 1
    assert node.stats["cluster.forwarded.peer"] == 0
