"""The membership view: which configured nodes are alive, and which take new flows.

Theory of operation (DESIGN.md "The cluster", Health and Membership changes):

* The view starts pessimistic — only this node is alive — and a peer joins when it is first heard
  (a heartbeat or any authenticated frame). A peer not heard for ``dead_after`` seconds leaves
  (:meth:`Membership.expire`; the caller's timer picks ``dead_after`` as N heartbeat intervals).
* A node may be draining (it says so in its heartbeats; this node by :meth:`set_draining`): it is
  still alive — it keeps serving its own allocations — but it is not *accepting* new flows.
* ``accepting`` is the view client flows are hashed over. If every alive node drains, the view
  falls back to all alive nodes: better a draining node than none.
* ``previous_accepting`` is the accepting view before its latest change, the router's second
  chance for flows whose owner just moved (Unimog/GLB style). This node's own arrival counts as
  one change, from "the cluster without me" to "the cluster with me": peers first heard within
  ``dead_after`` of this node's start (or, if the start time was not given, of the first peer
  heard) — the join window: every live peer heartbeats within it — were there before this node,
  so the previous view for them is the accepting view without this node. Without that rule a
  joining node's previous view would hold itself (it hears its peers one at a time) and, with
  rendezvous hashing, name itself as the previous owner of every flow that moved to it — the
  very flows the second chance exists for.
* ``generation`` is bumped on every change of alive, draining or accepting, so the router can
  rebuild its hash tables only when needed by comparing one int.

Time is the caller's monotonic ``now`` in seconds; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from forwarding.hashing import check_node_id


class Membership:
    """The live view of the cluster as seen by node ``self_id``."""

    def __init__(
        self, self_id: int, nodes: Iterable[int], dead_after: float, started: float | None = None
    ) -> None:
        """``started``, if given, is this node's start time: the join window then opens at once
        rather than when the first peer is heard."""
        if not dead_after > 0:
            raise ValueError(f"dead_after must be positive, not {dead_after}")
        self.self_id = check_node_id(self_id)
        self.dead_after = dead_after
        self._nodes = self._checked(nodes)
        self._last_heard: dict[int, float] = {}
        self._alive: frozenset[int] = frozenset({self_id})
        self._draining: frozenset[int] = frozenset()
        self._accepting: frozenset[int] = self._alive
        self._previous: frozenset[int] = self._alive
        self._generation = 0
        self._join_ends = None if started is None else started + dead_after

    def _checked(self, nodes: Iterable[int]) -> frozenset[int]:
        configured = frozenset(check_node_id(node) for node in nodes)
        if self.self_id not in configured:
            raise ValueError(f"this node ({self.self_id}) must be among the configured nodes")
        return configured

    # --- views ------------------------------------------------------------------------------

    @property
    def nodes(self) -> frozenset[int]:
        """The configured nodes."""
        return self._nodes

    @property
    def alive(self) -> frozenset[int]:
        """Nodes heard recently, draining or not; always includes this node."""
        return self._alive

    @property
    def accepting(self) -> frozenset[int]:
        """Alive nodes that take new flows (all alive nodes if every one is draining)."""
        return self._accepting

    @property
    def previous_accepting(self) -> frozenset[int]:
        """The accepting view before its most recent change (equal to it before any change;
        while this node joins, the accepting view without this node)."""
        return self._previous

    @property
    def draining_nodes(self) -> frozenset[int]:
        """Alive nodes that are draining (this node included if it is)."""
        return self._draining

    @property
    def draining(self) -> bool:
        """Whether this node is draining."""
        return self.self_id in self._draining

    @property
    def generation(self) -> int:
        """Bumped on every change of the alive, draining or accepting sets."""
        return self._generation

    @property
    def join_window_ends(self) -> float | None:
        """When the join window closes (None until it opens)."""
        return self._join_ends

    def last_heard(self, node: int) -> float | None:
        """When ``node`` was last heard (None if never, and for this node)."""
        return self._last_heard.get(node)

    def status(self, now: float) -> list[dict[str, Any]]:
        """One row per configured node, by id, for turnctl and the control API."""
        rows = []
        for node in sorted(self._nodes):
            heard = self._last_heard.get(node)
            rows.append(
                {
                    "node": node,
                    "self": node == self.self_id,
                    "alive": node in self._alive,
                    "draining": node in self._draining,
                    "last_heard_ago": None if heard is None else now - heard,
                }
            )
        return rows

    # --- inputs -----------------------------------------------------------------------------

    def heard(self, node: int, now: float, draining: bool = False) -> bool:
        """Record that ``node`` was heard at ``now``, draining or not; True if the view changed.

        Unknown node ids and this node's own id are ignored (False).
        """
        if node == self.self_id or node not in self._nodes:
            return False
        if self._join_ends is None:
            self._join_ends = now + self.dead_after
        joined_before_me = node not in self._last_heard and now < self._join_ends
        self._last_heard[node] = now
        if node in self._alive and (node in self._draining) == draining:
            return False
        alive = self._alive | {node}
        draining_nodes = self._draining | {node} if draining else self._draining - {node}
        return self._update(alive, draining_nodes, joining=joined_before_me)

    def expire(self, now: float) -> bool:
        """Drop the peers not heard for ``dead_after`` seconds; True if the view changed."""
        dead = {
            node
            for node in self._alive
            if node != self.self_id and now - self._last_heard[node] >= self.dead_after
        }
        if not dead:
            return False
        return self._update(self._alive - dead, self._draining - dead)

    def set_draining(self, draining: bool) -> bool:
        """Start or stop draining this node; True if that changed anything."""
        me = {self.self_id}
        return self._update(self._alive, self._draining | me if draining else self._draining - me)

    def set_nodes(self, nodes: Iterable[int]) -> bool:
        """Replace the configured nodes (config reload; this node must stay among them).

        Removed nodes leave the view at once; added ones join when heard. True if it changed.
        """
        configured = self._checked(nodes)
        self._nodes = configured
        for node in [node for node in self._last_heard if node not in configured]:
            del self._last_heard[node]
        return self._update(self._alive & configured, self._draining & configured)

    def next_expiry(self) -> float | None:
        """The earliest time at which :meth:`expire` could drop a peer (None if none alive)."""
        heard = [self._last_heard[node] for node in self._alive if node != self.self_id]
        return min(heard) + self.dead_after if heard else None

    # --- internals --------------------------------------------------------------------------

    def _update(
        self, alive: frozenset[int], draining: frozenset[int], joining: bool = False
    ) -> bool:
        """Apply a new alive/draining pair; ``joining``: the change is a peer that was there
        before this node joined (see the module docstring)."""
        accepting = (alive - draining) or alive
        if alive == self._alive and draining == self._draining:
            return False
        self._alive = alive
        self._draining = draining
        if accepting != self._accepting:
            if joining:
                self._previous = (accepting - {self.self_id}) or accepting
            else:
                self._previous = self._accepting
            self._accepting = accepting
        self._generation += 1
        return True

    def __repr__(self) -> str:
        return (
            f"Membership(self={self.self_id}, alive={sorted(self._alive)}, "
            f"draining={sorted(self._draining)}, generation={self._generation})"
        )
