"""Routing decisions (DESIGN.md "The cluster"): client flows to their owner, second chance to the
previous owner after a view change, at most 2 backbone hops; peer datagrams to the slice owner.

The rules are checked one by one on a single router, then end to end on a simulated cluster —
one Membership and Router per node, heartbeats between the running ones, an allocation made
where a creating request ends — through joins, deaths and drains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from forwarding.hashing import Rendezvous, flow_key
from forwarding.membership import Membership
from forwarding.router import MAX_HOPS, Router
from forwarding.slices import SliceTable
from stun.addresses import Address

DEAD = 3.0
HEARTBEAT = 1.0
NODES = (1, 2, 3)
SERVICE = Address("192.0.2.1", 3478)
SLICES = SliceTable(49152, 65535, NODES)

FLOWS = [
    flow_key("udp", Address(f"10.0.{i // 250}.{i % 250 + 1}", 40000 + i), SERVICE)
    for i in range(600)
]


def find_flow(predicate: Callable[[bytes], bool]) -> bytes:
    """The first test flow for which ``predicate`` holds."""
    return next(key for key in FLOWS if predicate(key))


def owner(nodes: Iterable[int], key: bytes) -> int:
    return Rendezvous(nodes).owner(key)


def router_with(
    self_id: int = 1,
    alive: Iterable[int] = NODES,
    draining: Iterable[int] = (),
    nodes: tuple[int, ...] = NODES,
) -> Router:
    """A router whose view (long after its join window) has ``alive`` up, ``draining`` draining."""
    view = Membership(self_id, nodes, DEAD, started=0.0)
    for node in alive:
        view.heard(node, 100.0, draining=node in draining)
    if self_id in draining:
        view.set_draining(True)
    return Router(self_id, view, SliceTable(49152, 65535, nodes))


# --- the rules, one by one ---------------------------------------------------------------------


def test_known_flows_and_last_hop_are_handled_here() -> None:
    """known_here, or hop >= MAX_HOPS, means handle locally, whoever the owner is."""
    router = router_with(1)
    key = find_flow(lambda k: owner(NODES, k) != 1)
    for hop in range(4):
        assert router.client(key, hop, 2, known_here=True, creates=False) == 1
    assert router.client(key, MAX_HOPS, 2, known_here=False, creates=False) == 1
    assert router.client(key, MAX_HOPS, 2, known_here=False, creates=True) == 1


def test_hop_0_goes_to_the_accepting_owner() -> None:
    """A datagram straight from a client goes to its flow's owner in the accepting view."""
    router = router_with(1)
    for key in FLOWS[:50]:
        expected = owner(NODES, key)
        assert router.client(key, 0, 0, known_here=False, creates=True) == expected
        assert router.owner_of(key) == expected


def test_allocate_owned_here_is_handled_here_even_with_a_previous_owner() -> None:
    """A creating request is never second-chanced."""
    router = router_with(1, alive=(1, 2))  # the view went from {1} to {1, 2}
    router.membership.heard(3, 101.0)  # previous {1, 2}, accepting {1, 2, 3}
    key = find_flow(lambda k: owner(NODES, k) == 1 and owner((2, 3), k) == 2)
    assert router.client(key, 0, 0, known_here=False, creates=True) == 1
    assert router.client(key, 1, 3, known_here=False, creates=True) == 1


def test_second_chance_goes_to_the_previous_owner_if_alive() -> None:
    """Owned here, unknown, not creating: the owner in the previous view gets it, if alive.
    Here this node stops draining, so flows made meanwhile on 2 and 3 now hash to it."""
    router = router_with(1, draining=(1,))
    assert router.membership.accepting == {2, 3}
    router.membership.set_draining(False)
    assert router.membership.previous_accepting == {2, 3}
    key = find_flow(lambda k: owner(NODES, k) == 1 and owner((2, 3), k) == 2)
    assert router.client(key, 0, 0, known_here=False, creates=False) == 2
    assert router.client(key, 1, 3, known_here=False, creates=False) == 2
    assert router.client(key, 1, 2, known_here=False, creates=False) == 1


def test_second_chance_prefers_a_draining_owner() -> None:
    """A draining node still owns its flows in the alive view: it gets them back."""
    router = router_with(1, draining=(2,))
    key = find_flow(lambda k: owner(NODES, k) == 2 and owner((1, 3), k) == 1)
    assert router.client(key, 0, 0, known_here=False, creates=False) == 2
    assert router.client(key, 0, 0, known_here=False, creates=True) == 1


def test_second_chance_skips_a_dead_previous_owner() -> None:
    """When the previous owner has died, the flow is handled by its new owner."""
    router = router_with(1)
    key = find_flow(lambda k: owner(NODES, k) == 3 and owner((1, 2), k) == 1)
    router.membership.heard(2, 102.0)
    router.membership.expire(100.0 + DEAD)  # 3 died
    assert router.membership.previous_accepting == {1, 2, 3}
    assert router.client(key, 0, 0, known_here=False, creates=False) == 1


def test_nothing_to_second_chance_in_a_steady_view() -> None:
    """With no change since start, an unknown flow owned here is handled here."""
    router = router_with(1, alive=(1,))
    assert router.client(FLOWS[0], 0, 0, known_here=False, creates=False) == 1


def test_hop_1_forwards_once_more_when_views_disagree() -> None:
    """Forwarded by a node that thought we own it, while we see a third node as owner: the
    second hop goes to that owner, creating or not."""
    router = router_with(1)
    key = find_flow(lambda k: owner(NODES, k) == 3)
    assert router.client(key, 1, 2, known_here=False, creates=False) == 3
    assert router.client(key, 1, 2, known_here=False, creates=True) == 3


def test_hop_1_never_returns_a_datagram_to_its_sender() -> None:
    """Sender and we disagree on who owns it: handled here, not bounced back."""
    router = router_with(1)
    key = find_flow(lambda k: owner(NODES, k) == 2)
    assert router.client(key, 1, 2, known_here=False, creates=False) == 1
    assert router.client(key, 1, 2, known_here=False, creates=True) == 1


def test_hop_1_second_chance_excludes_the_sender() -> None:
    """A second-chance candidate equal to the sender is not used (the sender did not know the
    flow); a different candidate is."""
    router = router_with(1, draining=(2,))
    key = find_flow(lambda k: owner(NODES, k) == 2 and owner((1, 3), k) == 1)
    assert router.client(key, 1, 2, known_here=False, creates=False) == 1
    assert router.client(key, 1, 3, known_here=False, creates=False) == 2
    assert router.client(key, 1, 3, known_here=False, creates=True) == 1


def test_router_follows_membership_changes_without_being_told() -> None:
    """A change of the view is seen by the next decision (generation compare)."""
    router = router_with(1, alive=(1,))
    key = find_flow(lambda k: owner(NODES, k) == 2)
    assert router.client(key, 0, 0, known_here=False, creates=True) == 1
    router.membership.heard(2, 101.0)
    router.membership.heard(3, 101.0)
    assert router.client(key, 0, 0, known_here=False, creates=True) == 2


def test_router_and_membership_must_agree_on_this_node() -> None:
    """A router for node 1 over node 2's view is a configuration bug."""
    with pytest.raises(ValueError, match="membership"):
        Router(1, Membership(2, NODES, DEAD), SLICES)


# --- peer datagrams ----------------------------------------------------------------------------


def port_of(node: int) -> int:
    return SLICES.ranges(node)[0][0]


def test_peer_datagram_to_own_or_known_port_is_handled_here() -> None:
    """A relay port of this node's slices, or one it knows, is handled here."""
    router = router_with(1)
    assert router.peer(port_of(1), 0, known_here=False) == 1
    assert router.peer(port_of(2), 0, known_here=True) == 1


def test_peer_datagram_goes_to_the_live_slice_owner_once() -> None:
    """Hop 0 goes to the slice owner; a forwarded one is handled where it lands."""
    router = router_with(1)
    assert router.peer(port_of(2), 0, known_here=False) == 2
    assert router.peer(port_of(2), 1, known_here=False) == 1


def test_peer_datagram_to_a_dead_owner_or_outside_the_range_is_dropped() -> None:
    """None: nobody can have allocated that port."""
    router = router_with(1, alive=(1, 2))
    assert router.peer(port_of(3), 0, known_here=False) is None
    assert router.peer(port_of(3), 1, known_here=False) is None
    assert router.peer(1000, 0, known_here=False) is None


def test_a_draining_slice_owner_still_gets_its_peers() -> None:
    """Draining nodes keep their relay ports."""
    router = router_with(1, draining=(2,))
    assert router.peer(port_of(2), 0, known_here=False) == 2


# --- a simulated cluster -----------------------------------------------------------------------


class Cluster:
    """Nodes with their own views, heartbeating each other; allocations where Allocate ends."""

    def __init__(self, up: Iterable[int], nodes: tuple[int, ...] = NODES) -> None:
        self.nodes = nodes
        self.now = 0.0
        self.views: dict[int, Membership] = {}
        self.routers: dict[int, Router] = {}
        self.known: dict[int, set[bytes]] = {}
        self.draining: set[int] = set()
        for node in up:
            self.boot(node)
        self.run(10.0)

    def boot(self, node: int) -> None:
        """Start (or restart) ``node``: a fresh view and no allocations."""
        self.views[node] = Membership(node, self.nodes, DEAD, started=self.now)
        self.routers[node] = Router(node, self.views[node], SliceTable(49152, 65535, self.nodes))
        self.known[node] = set()

    def stop(self, node: int) -> None:
        del self.views[node], self.routers[node], self.known[node]

    def drain(self, node: int) -> None:
        self.draining.add(node)
        self.views[node].set_draining(True)

    def run(self, seconds: float) -> None:
        """Heartbeats every HEARTBEAT seconds among running nodes, with expiry."""
        end = self.now + seconds
        while self.now < end:
            self.now += HEARTBEAT
            for view in self.views.values():
                for peer in self.views:
                    view.heard(peer, self.now, draining=peer in self.draining)
                view.expire(self.now)

    def send(self, entry: int, key: bytes, creates: bool) -> tuple[int, list[int]]:
        """Deliver a client datagram arriving at ``entry``; the handling node and the path."""
        node, hop, origin, path = entry, 0, 0, [entry]
        while True:
            target = self.routers[node].client(key, hop, origin, key in self.known[node], creates)
            if target == node:
                break
            assert target in self.routers, f"forwarded to {target}, which is not running"
            node, hop, origin = target, hop + 1, node
            path.append(node)
        assert hop <= MAX_HOPS
        if creates:
            self.known[node].add(key)
        return node, path

    def holder(self, key: bytes) -> int | None:
        holders = [node for node, keys in self.known.items() if key in keys]
        assert len(holders) <= 1
        return holders[0] if holders else None

    def allocate_all(self, keys: Iterable[bytes]) -> None:
        for index, key in enumerate(keys):
            entry = sorted(self.routers)[index % len(self.routers)]
            self.send(entry, key, creates=True)


def test_steady_cluster_allocates_at_the_owner_and_reaches_it_in_one_hop() -> None:
    """Three settled nodes: each flow lives on its owner, reached from anywhere in <= 1 hop."""
    cluster = Cluster(up=NODES)
    cluster.allocate_all(FLOWS)
    for key in FLOWS:
        assert cluster.holder(key) == owner(NODES, key)
        for entry in NODES:
            handler, path = cluster.send(entry, key, creates=False)
            assert handler == cluster.holder(key) and len(path) <= 2


def test_after_a_node_joins_existing_flows_reach_their_previous_owner() -> None:
    """Flows that moved to a joining node are second-chanced to the node holding them, in at
    most 2 hops, from every entry point; new allocations go to the new owner."""
    cluster = Cluster(up=(1, 2))
    cluster.allocate_all(FLOWS)
    cluster.boot(3)
    cluster.run(2 * HEARTBEAT)
    moved = [key for key in FLOWS if owner(NODES, key) == 3]
    assert len(moved) > 100
    for key in FLOWS:
        for entry in NODES:
            handler, path = cluster.send(entry, key, creates=False)
            assert handler == cluster.holder(key), (key, entry, path)
            assert len(path) <= 1 + MAX_HOPS
    fresh = [flow_key("tcp", Address("10.9.9.9", port), SERVICE) for port in range(1000, 1100)]
    cluster.allocate_all(fresh)
    for key in fresh:
        assert cluster.holder(key) == owner(NODES, key)


def test_flows_of_a_dead_node_move_to_survivors() -> None:
    """When a node dies its flows go to survivors (their allocations are lost, nothing loops);
    flows of the survivors still reach them."""
    cluster = Cluster(up=NODES)
    cluster.allocate_all(FLOWS)
    holders = {key: cluster.holder(key) for key in FLOWS}
    cluster.stop(3)
    cluster.run(DEAD + HEARTBEAT)
    orphans = [key for key in FLOWS if holders[key] == 3]
    assert orphans
    for key in FLOWS:
        for entry in (1, 2):
            handler, path = cluster.send(entry, key, creates=False)
            assert 3 not in path
            assert handler == (owner((1, 2), key) if key in orphans else holders[key])
    for key in orphans:
        handler, _ = cluster.send(2, key, creates=True)
        assert handler == owner((1, 2), key)


def test_a_draining_owner_keeps_its_flows_and_takes_no_new_ones() -> None:
    """Existing flows of a draining node still reach it; new allocations go elsewhere."""
    cluster = Cluster(up=NODES)
    cluster.allocate_all(FLOWS)
    cluster.drain(2)
    cluster.run(2 * HEARTBEAT)
    for key in FLOWS:
        for entry in NODES:
            handler, path = cluster.send(entry, key, creates=False)
            assert handler == cluster.holder(key) and len(path) <= 1 + MAX_HOPS
    fresh = [flow_key("udp", Address("10.8.8.8", port), SERVICE) for port in range(1000, 1300)]
    for key in fresh:
        for entry in NODES:
            handler, _ = cluster.send(entry, key, creates=True)
            assert handler != 2
            cluster.known[handler].discard(key)


def test_a_restarted_node_sends_flows_back_to_their_holders() -> None:
    """A node that restarts (new view, no allocations) finds the flows that moved to it during
    its absence on the nodes that hold them."""
    cluster = Cluster(up=NODES)
    cluster.stop(3)
    cluster.run(DEAD + HEARTBEAT)
    cluster.allocate_all(FLOWS)
    cluster.boot(3)
    cluster.run(HEARTBEAT)
    for key in FLOWS:
        for entry in NODES:
            handler, _ = cluster.send(entry, key, creates=False)
            assert handler == cluster.holder(key)
