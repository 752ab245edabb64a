"""The membership view (DESIGN.md "The cluster", Health and Membership changes): pessimistic
start, peers joining when heard and leaving when silent, draining, the previous view."""

from __future__ import annotations

import pytest

from forwarding.membership import Membership

DEAD = 3.0
NODES = (1, 2, 3)


def started(self_id: int = 1, nodes: tuple[int, ...] = NODES) -> Membership:
    """A membership whose join window (0..DEAD) has opened at time 0."""
    return Membership(self_id, nodes, DEAD, started=0.0)


def settled(self_id: int = 1, nodes: tuple[int, ...] = NODES, at: float = 100.0) -> Membership:
    """A membership that heard every peer at ``at``, long after its join window closed."""
    view = started(self_id, nodes)
    for node in nodes:
        view.heard(node, at)
    return view


def test_starts_with_only_this_node_alive() -> None:
    """Pessimistic start: alone, accepting, nothing heard, generation 0."""
    view = Membership(1, NODES, DEAD)
    assert view.alive == view.accepting == view.previous_accepting == {1}
    assert view.draining_nodes == frozenset()
    assert view.generation == 0
    assert view.last_heard(2) is None


def test_hearing_a_peer_adds_it_once() -> None:
    """The first heartbeat changes the view; later ones only refresh last_heard."""
    view = started()
    assert view.heard(2, 1.0) is True
    assert view.alive == view.accepting == {1, 2}
    generation = view.generation
    assert view.heard(2, 2.0) is False
    assert view.generation == generation
    assert view.last_heard(2) == 2.0


def test_unknown_ids_and_our_own_are_ignored() -> None:
    """A node id outside the configuration, or this node's own, changes nothing."""
    view = started()
    assert view.heard(9, 1.0) is False
    assert view.heard(1, 1.0) is False
    assert view.alive == {1}
    assert view.last_heard(9) is None and view.last_heard(1) is None


def test_expire_drops_peers_silent_for_dead_after() -> None:
    """A peer not heard for dead_after seconds leaves the view; until then it stays."""
    view = settled()
    assert view.next_expiry() == 100.0 + DEAD
    assert view.expire(100.0 + DEAD - 0.01) is False
    view.heard(3, 102.0)
    generation = view.generation
    assert view.expire(100.0 + DEAD) is True
    assert view.alive == {1, 3}
    assert view.generation == generation + 1
    assert view.last_heard(2) == 100.0
    assert view.expire(102.0 + DEAD) is True
    assert view.alive == {1}
    assert view.next_expiry() is None
    assert view.expire(1000.0) is False


def test_a_draining_peer_is_alive_but_not_accepting() -> None:
    """A peer that says it drains keeps its place in alive, leaves accepting, and comes back
    when it stops draining."""
    view = settled()
    assert view.heard(2, 101.0, draining=True) is True
    assert view.alive == {1, 2, 3}
    assert view.accepting == {1, 3}
    assert view.draining_nodes == {2}
    assert view.heard(2, 102.0, draining=True) is False
    assert view.heard(2, 103.0) is True
    assert view.accepting == {1, 2, 3}
    assert view.draining_nodes == frozenset()


def test_draining_this_node() -> None:
    """set_draining takes this node out of accepting, and back; repeating it changes nothing."""
    view = settled()
    assert view.set_draining(True) is True
    assert view.draining
    assert view.accepting == {2, 3}
    assert view.alive == {1, 2, 3}
    assert view.set_draining(True) is False
    assert view.set_draining(False) is True
    assert view.accepting == {1, 2, 3}


def test_when_everyone_drains_accepting_falls_back_to_alive() -> None:
    """Better a draining node than none: accepting is never empty."""
    view = settled()
    view.set_draining(True)
    view.heard(2, 101.0, draining=True)
    view.heard(3, 101.0, draining=True)
    assert view.accepting == view.alive == {1, 2, 3}
    lone = Membership(1, NODES, DEAD)
    lone.set_draining(True)
    assert lone.accepting == {1}


def test_a_dead_peer_forgets_it_was_draining() -> None:
    """Expiry clears a peer's draining flag; it rejoins with whatever it says then."""
    view = settled()
    view.heard(2, 100.0, draining=True)
    view.heard(3, 102.0)
    view.expire(100.0 + DEAD)
    assert view.draining_nodes == frozenset()
    view.heard(2, 110.0)
    assert view.accepting == {1, 2, 3}


def test_previous_accepting_is_the_view_before_the_last_change() -> None:
    """Each change of accepting keeps the one before; other changes keep it as it was."""
    view = started(nodes=(1, 2, 3, 4))
    view.heard(2, 10.0)  # after the join window: an ordinary join
    assert view.previous_accepting == {1}
    view.heard(3, 11.0)
    assert (view.previous_accepting, view.accepting) == ({1, 2}, {1, 2, 3})
    view.heard(4, 12.0, draining=True)  # alive changes, accepting does not
    assert (view.previous_accepting, view.accepting) == ({1, 2}, {1, 2, 3})
    view.heard(2, 13.0, draining=True)
    assert (view.previous_accepting, view.accepting) == ({1, 2, 3}, {1, 3})


def test_peers_heard_while_joining_were_there_before_this_node() -> None:
    """Inside the join window the previous view is the cluster without this node, however many
    heartbeats it takes to hear everyone."""
    view = started(self_id=3)
    view.heard(1, 0.5)
    assert view.previous_accepting == {1}
    view.heard(2, 1.5)
    assert (view.previous_accepting, view.accepting) == ({1, 2}, {1, 2, 3})
    view.heard(1, 2.0)
    assert view.previous_accepting == {1, 2}


def test_without_a_start_time_the_join_window_opens_at_the_first_peer() -> None:
    """Membership(...) without ``started`` opens the window when a peer is first heard."""
    view = Membership(3, NODES, DEAD)
    assert view.join_window_ends is None
    view.heard(1, 50.0)
    assert view.join_window_ends == 50.0 + DEAD
    view.heard(2, 51.0)
    assert view.previous_accepting == {1, 2}


def test_after_the_join_window_a_new_peer_is_an_ordinary_change() -> None:
    """A peer first heard after the window joined after this node: previous holds this node."""
    view = started(self_id=1)
    view.heard(2, 1.0)
    view.heard(3, DEAD + 1.0)
    assert (view.previous_accepting, view.accepting) == ({1, 2}, {1, 2, 3})


def test_generation_counts_changes_only() -> None:
    """generation goes up by one per change of alive/draining/accepting, not per heartbeat."""
    view = settled()
    generation = view.generation
    view.heard(2, 101.0)
    view.expire(101.0)
    view.set_draining(False)
    assert view.generation == generation
    view.set_draining(True)
    view.heard(3, 101.0, draining=True)
    assert view.generation == generation + 2


def test_set_nodes_reconfigures_the_cluster() -> None:
    """A removed node leaves the view at once; an added one joins when heard; this node must
    stay configured."""
    view = settled()
    assert view.set_nodes([1, 2, 4]) is True
    assert view.nodes == {1, 2, 4}
    assert view.alive == {1, 2}
    assert view.last_heard(3) is None
    assert view.heard(3, 101.0) is False
    assert view.heard(4, 101.0) is True
    assert view.set_nodes([1, 2, 4]) is False
    with pytest.raises(ValueError, match="configured"):
        view.set_nodes([2, 4])


def test_status_has_one_row_per_configured_node() -> None:
    """status() reports each configured node in id order, for turnctl."""
    view = started()
    view.set_draining(True)
    view.heard(3, 4.0, draining=True)
    assert view.status(5.5) == [
        {"node": 1, "self": True, "alive": True, "draining": True, "last_heard_ago": None},
        {"node": 2, "self": False, "alive": False, "draining": False, "last_heard_ago": None},
        {"node": 3, "self": False, "alive": True, "draining": True, "last_heard_ago": 1.5},
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, (2, 3), DEAD), "configured"),
        ((1, NODES, 0.0), "dead_after"),
        ((0, (0, 1), DEAD), "node id"),
    ],
)
def test_bad_arguments_are_refused(args: tuple[int, tuple[int, ...], float], message: str) -> None:
    """This node must be configured, dead_after positive, node ids valid."""
    with pytest.raises(ValueError, match=message):
        Membership(*args)
