"""The anycast cluster in memory: several cores, every datagram handed to a random node.

DESIGN.md "The cluster": the owner of a flow answers it; a node that is not the owner forwards
over the backbone; relay ports come from the node's own slices; a node that dies loses only its
own allocations; a joining node's flows keep working through the previous owner (at most 2 hops);
a draining node keeps its allocations and takes no new ones.
"""

from __future__ import annotations

import json

import pytest

from stun import attributes as at
from stun.addresses import Address
from stun.channeldata import parse_channel_data
from stun.message import Message, MessageClass, Method, decode, encode
from tests.core.cluster_world import KEY_ID, MemoryCluster
from tests.core.harness import PEER, SERVER, Client, error_code, replies
from turnd.core.actions import FiveTuple, Transport
from turnd.core.cluster import classify

CLIENTS = 24


def client(cluster: MemoryCluster, index: int) -> Client:
    return Client(cluster, "alice", "alice-pw", address=Address("203.0.113.5", 40000 + index))  # type: ignore[arg-type]


def relaying(cluster: MemoryCluster, alice: Client, tag: bytes) -> None:
    """Both directions work for ``alice`` through whatever node the network picks, 6 times."""
    for round_ in range(6):
        payload = tag + b"-%d" % round_
        [sent] = alice.channel_data(0x4000, payload)
        assert (sent.peer, sent.data, sent.relay) == (PEER, payload, alice.relayed)
        actions = cluster.peer_packet(alice.relayed, PEER, b"back-" + payload)
        [data] = replies(actions, alice.five_tuple)
        assert parse_channel_data(data) == (0x4000, b"back-" + payload)


def allocated(cluster: MemoryCluster, count: int = CLIENTS) -> list[Client]:
    clients = []
    for index in range(count):
        alice = client(cluster, index)
        assert error_code(alice.allocate()) is None
        assert alice.relayed.host == SERVER.host  # the shared service IP
        assert error_code(alice.channel_bind(0x4000, PEER)) is None
        clients.append(alice)
    return clients


def test_every_datagram_to_a_random_node_still_relays() -> None:
    """Allocate, ChannelBind, Send, ChannelData and peer data all work, whichever node the
    network picks for each datagram; most datagrams are forwarded once, none more than twice."""
    cluster = MemoryCluster(3)
    clients = allocated(cluster)
    for index, alice in enumerate(clients):
        relaying(cluster, alice, b"c%d" % index)
        [sent] = alice.send(PEER, b"indication")
        assert sent.data == b"indication" and sent.relay == alice.relayed
    owners = {cluster.owner_of(alice) for alice in clients}
    assert owners == {1, 2, 3}, "allocations spread over every node"
    assert set(cluster.bound.values()) == {1, 2, 3}
    assert len(cluster.bound) == CLIENTS  # one relay each, no port bound twice
    assert cluster.handled["forwarded"] > cluster.handled["first"] / 2  # ~2/3 forwarded
    assert set(cluster.hops) == {1}, "stable view: one hop"
    forwarded = sum(node.core.stats["cluster.forwarded.client"] for node in cluster.nodes.values())
    assert forwarded > 0


def test_bindings_are_answered_by_whichever_node_gets_them() -> None:
    """A Binding request needs no state: the node that received it answers, nothing crosses."""
    cluster = MemoryCluster(3)
    five_tuple = FiveTuple(Transport.UDP, Address("203.0.113.9", 5000), SERVER)
    request = encode(Message(Method.BINDING, MessageClass.REQUEST, b"\x01" * 12, ()))
    for _ in range(20):
        [answer] = replies(cluster.client_packet(five_tuple, request), five_tuple)
        assert decode(answer).get(at.XorMappedAddress) is not None
    assert cluster.handled == {"first": 20}


def test_a_dead_node_loses_only_its_own_allocations() -> None:
    """Kill one node: the others' clients keep relaying; its clients can allocate again."""
    cluster = MemoryCluster(3, seed=2)
    clients = allocated(cluster)
    dead = 2
    victims = [alice for alice in clients if cluster.owner_of(alice) == dead]
    survivors = [alice for alice in clients if alice not in victims]
    assert victims and survivors
    cluster.kill(dead)
    cluster.advance(3.0)  # heartbeats stop: node 2 leaves every view
    assert all(dead not in node.membership.alive for n, node in cluster.nodes.items() if n != dead)
    for index, alice in enumerate(survivors):
        relaying(cluster, alice, b"s%d" % index)
    for alice in victims:
        assert error_code(alice.refresh()) == 437  # its allocation died with its node
        alice.relay = None
        assert error_code(alice.allocate()) is None
        assert cluster.owner_of(alice) != dead
        assert error_code(alice.channel_bind(0x4000, PEER)) is None
        relaying(cluster, alice, b"again")


def test_peer_datagrams_for_a_dead_nodes_slice_are_dropped_and_counted() -> None:
    """A peer datagram for a port of a dead node's slice is dropped where it lands, counted."""
    cluster = MemoryCluster(3, seed=3)
    cluster.kill(3)
    cluster.advance(3.0)
    port = next(p for p in range(50000, 50512) if cluster.nodes[1].slices.owner(p) == 3)
    for _ in range(10):
        assert cluster.peer_packet(Address(SERVER.host, port), PEER, b"x") == []
    drops = sum(cluster.nodes[n].core.stats["drop.peer_slice_owner_down"] for n in (1, 2))
    assert drops == 10


def test_a_joining_node_takes_new_flows_and_old_flows_reach_their_owner() -> None:
    """Node 3 joins a running 2-node cluster. Flows it now owns but does not know reach their
    previous owner through it (second chance, 2 hops at most); new flows land on it."""
    cluster = MemoryCluster(3, seed=4, up=[1, 2])
    clients = allocated(cluster)
    assert {cluster.owner_of(alice) for alice in clients} == {1, 2}
    cluster.start(3)
    cluster.heartbeat()
    assert all(node.membership.alive == {1, 2, 3} for node in cluster.nodes.values())
    for index, alice in enumerate(clients):
        relaying(cluster, alice, b"old%d" % index)
        assert error_code(alice.refresh()) is None
    assert cluster.nodes[3].core.stats["cluster.second_chance"] > 0
    assert max(cluster.hops) == 2
    newcomers = [client(cluster, 100 + index) for index in range(CLIENTS)]
    for alice in newcomers:
        assert error_code(alice.allocate()) is None
    assert 3 in {cluster.owner_of(alice) for alice in newcomers}


def test_a_draining_node_keeps_its_allocations_and_takes_no_new_ones() -> None:
    """turnctl drain on node 1: its clients keep relaying; new allocations go elsewhere."""
    cluster = MemoryCluster(3, seed=5)
    clients = allocated(cluster)
    cluster.nodes[1].core.draining = True
    cluster.heartbeat()
    assert all(node.membership.accepting == {2, 3} for node in cluster.nodes.values())
    for index, alice in enumerate(clients):
        relaying(cluster, alice, b"d%d" % index)
    newcomers = [client(cluster, 200 + index) for index in range(CLIENTS)]
    for alice in newcomers:
        assert error_code(alice.allocate()) is None
        assert cluster.owner_of(alice) != 1


def test_forged_tampered_and_replayed_frames_are_dropped_and_counted() -> None:
    """Replay, a flipped bit, a frame sealed under another key and one from an unknown node id
    are each dropped by the receiving node and counted under backbone.drop.<reason>."""
    from forwarding.frames import BackboneCodec, Frame, FrameType

    cluster = MemoryCluster(3, seed=6)
    allocated(cluster, 4)
    node_id, frame = next((n, f) for n, f in cluster.tapped if n in cluster.up)
    target = cluster.nodes[node_id]
    stats = target.core.stats
    assert target.backbone_frame(frame, cluster.now) == []
    assert stats["backbone.drop.replay"] == 1
    other = cluster.nodes[1 if node_id != 1 else 2]
    five_tuple = FiveTuple(Transport.UDP, PEER, SERVER)
    tampered = bytearray(other.forward_client(node_id, five_tuple, b"\x40\x00\x00\x00"))
    tampered[-3] ^= 0x01
    assert target.backbone_frame(bytes(tampered), cluster.now) == []
    assert stats["backbone.drop.auth"] == 1
    forger = BackboneCodec({KEY_ID: bytes(32)}, KEY_ID, 1, 99, [1, 2, 3])
    forged = forger.seal(Frame(FrameType.CLIENT, 1, 1, "udp", PEER, SERVER, b"\x00" * 20))
    assert target.backbone_frame(forged, cluster.now) == []
    assert stats["backbone.drop.auth"] == 2
    stranger = BackboneCodec({KEY_ID: bytes(range(32))}, KEY_ID, 9, 99, [1, 2, 3, 9])
    foreign = stranger.seal(Frame(FrameType.CLIENT, 9, 1, "udp", PEER, SERVER, b"\x00" * 20))
    assert target.backbone_frame(foreign, cluster.now) == []
    assert stats["backbone.drop.unknown_node"] == 1
    assert target.backbone_frame(b"\x01", cluster.now) == []
    assert stats["backbone.drop.short"] == 1


def test_revocation_reaches_every_other_node() -> None:
    """A CONTROL frame broadcast by one node arrives, once, at each of the others."""
    cluster = MemoryCluster(3)
    for frame in cluster.nodes[2].broadcast({"op": "revoke", "username": "alice"}):
        cluster.deliver(frame.node, frame.data)
    assert sorted(cluster.controls, key=lambda c: c[0]) == [
        (1, {"op": "revoke", "username": "alice"}),
        (3, {"op": "revoke", "username": "alice"}),
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", (True, False)),
        (b"\x40\x00\x00\x04abcd", (False, False)),  # ChannelData: needs the allocation
        (encode(Message(Method.BINDING, MessageClass.REQUEST, b"\x00" * 12, ())), (True, False)),
        (encode(Message(Method.ALLOCATE, MessageClass.REQUEST, b"\x00" * 12, ())), (False, True)),
        (encode(Message(Method.REFRESH, MessageClass.REQUEST, b"\x00" * 12, ())), (False, False)),
        (encode(Message(Method.SEND, MessageClass.INDICATION, b"\x00" * 12, ())), (False, False)),
        (b"\xff" * 30, (True, False)),  # neither: dropped where it lands
    ],
)
def test_classify_tells_stateless_and_creating_datagrams(
    data: bytes, expected: tuple[bool, bool]
) -> None:
    assert classify(data) == expected


def test_a_joining_node_takes_no_new_flows_until_it_has_heard_everyone() -> None:
    """For dead_after seconds after start a node announces itself closed (as draining): the
    others keep it out of the accepting view, so no flow moves to it before it knows the view."""
    cluster = MemoryCluster(3, seed=7)
    cluster.nodes[3].joining_until = cluster.now + 2.0
    cluster.heartbeat()
    assert all(node.membership.accepting == {1, 2} for node in cluster.nodes.values())
    newcomers = [client(cluster, 300 + index) for index in range(12)]
    for alice in newcomers:
        assert error_code(alice.allocate()) is None
        assert cluster.owner_of(alice) != 3
    cluster.advance(2.5)
    assert all(node.membership.accepting == {1, 2, 3} for node in cluster.nodes.values())
    for index, alice in enumerate(newcomers):
        assert error_code(alice.channel_bind(0x4000, PEER)) is None
        relaying(cluster, alice, b"j%d" % index)


def test_revocations_for_a_joining_node_are_split_into_frames_it_can_open() -> None:
    """Many revoked names go to one node in several CONTROL frames of bounded size; each
    opens at that node as a list of names, all of them once."""
    from turnd.core.cluster import CONTROL_PAYLOAD_MAX

    cluster = MemoryCluster(3)
    names = [f"{1_800_000_000 + n}:app:room-{n}" for n in range(200)]
    frames = cluster.nodes[1].revocations(3, names)
    assert len(frames) > 1 and {frame.node for frame in frames} == {3}
    for frame in frames:
        cluster.deliver(frame.node, frame.data)
    bodies = [body for node, body in cluster.controls if node == 3]
    assert all(body["op"] == "revoke" for body in bodies)
    received = [name for body in bodies for name in body["usernames"]]
    assert received == names
    compact = [json.dumps(body["usernames"], separators=(",", ":")) for body in bodies]
    assert all(len(text) <= CONTROL_PAYLOAD_MAX + 2 for text in compact)


def test_a_reservation_token_is_redeemed_on_the_node_holding_the_port() -> None:
    """RFC 8656 §7.2 across nodes: A's Allocate with EVEN-PORT R=1 reserves the next port on A's
    node; B's Allocate with that RESERVATION-TOKEN reaches that node (its id starts the token)
    whatever node B's flow hashes to, the flow is pinned there on every node, and B relays
    through any node. When B's allocation ends the pin goes everywhere."""
    for seed in range(8):  # flows that hash elsewhere than the token's node are the point
        cluster = MemoryCluster(3, seed=100 + seed)
        rtp, rtcp = client(cluster, 500 + 2 * seed), client(cluster, 501 + 2 * seed)
        reply = rtp.allocate(at.RequestedTransport(17), at.EvenPort(reserve=True))
        token = reply.get(at.ReservationToken)
        assert token is not None and rtp.relayed.port % 2 == 0
        holder = cluster.owner_of(rtp)
        assert int.from_bytes(token.token[:2], "big") == holder
        assert error_code(rtcp.allocate(at.RequestedTransport(17), token)) is None
        assert rtcp.relayed == Address(SERVER.host, rtp.relayed.port + 1)
        assert cluster.owner_of(rtcp) == holder
        assert error_code(rtcp.channel_bind(0x4000, PEER)) is None
        relaying(cluster, rtcp, b"rtcp")
        pinned = {n for n, node in cluster.nodes.items() if rtcp.five_tuple in node.pins}
        if pinned:  # the flow hashed to another node: every node but the holder knows the pin
            assert pinned == set(cluster.ids) - {holder}
            other = min(pinned)
            cluster.nodes[other].pins.clear()  # as if it had been down: it asks when it rejoins
            for frame in cluster.nodes[holder].pins_for(other):
                cluster.deliver(frame.node, frame.data)
            assert cluster.nodes[other].pins[rtcp.five_tuple] == holder
            assert error_code(rtcp.refresh(0)) is None
            assert not any(rtcp.five_tuple in node.pins for node in cluster.nodes.values())
            return
    raise AssertionError("no seed put the token's flow on another node than the holder")
