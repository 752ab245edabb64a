"""Routing decisions: which node must handle a client's or a peer's datagram.

Theory of operation (DESIGN.md "The cluster"). The ECMP router in front of the cluster hands a
client's datagram to any node; the node asks :meth:`Router.client` who must handle it and either
handles it (the answer is its own id) or forwards it over the backbone with ``hop + 1``.

Client datagrams, for a flow key not known here (a flow known here is always handled here):

* hop 0 (straight from the client): the owner is the flow's rendezvous owner in the *accepting*
  view. If that is another node, forward to it. If it is this node, a request that creates an
  allocation is handled here; anything else gets a *second chance*: the flow may belong to an
  allocation made before the view changed, so try the owner in the *alive* view (it includes
  draining nodes, which keep serving their own flows), else the owner in the *previous*
  accepting view if that node is still alive.
* hop 1 (forwarded once, by ``origin``): if the owner is neither this node nor the sender, the two
  views disagree — forward to the owner (the second hop). Otherwise a non-creating datagram may
  take the second chance, to a node other than this one and the sender.
* hop >= :data:`MAX_HOPS`: handle here, whatever the views say. A frame is never forwarded a
  third time, so routing loops are impossible.

Peer datagrams are routed by relay port (:class:`forwarding.slices.SliceTable`): a node only
allocates ports of its own slices, so the slice owner is the only node that can know the port.
A dead slice owner's ports go nowhere (None: drop).

All of this runs per packet, so rendezvous tables are rebuilt only when the membership
generation changes, and each decision costs one or two hash evaluations.
"""

from __future__ import annotations

from forwarding.hashing import Rendezvous
from forwarding.membership import Membership
from forwarding.slices import SliceTable

#: Backbone hops a client datagram may take: one to the owner in the sender's view, one more when
#: views disagree or to the previous owner (second chance). Never a third: no loops.
MAX_HOPS = 2


class Router:
    """Per-packet routing for node ``self_id`` over a membership view and a slice table."""

    def __init__(self, self_id: int, membership: Membership, slices: SliceTable) -> None:
        if membership.self_id != self_id:
            raise ValueError(f"membership is for node {membership.self_id}, not {self_id}")
        self.self_id = self_id
        self.membership = membership
        self.slices = slices
        self._generation = -1
        self._accepting = Rendezvous(())
        self._alive_ring: Rendezvous | None = None
        self._previous_ring: Rendezvous | None = None
        self._alive: frozenset[int] = frozenset()
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the rendezvous tables if the membership view changed since the last call."""
        membership = self.membership
        if membership.generation == self._generation:
            return
        accepting = membership.accepting
        alive = membership.alive
        previous = membership.previous_accepting
        self._accepting = Rendezvous(accepting)
        # The second-chance tables only exist when they can give another answer.
        self._alive_ring = Rendezvous(alive) if alive != accepting else None
        self._previous_ring = Rendezvous(previous) if previous != accepting else None
        self._alive = alive
        self._generation = membership.generation

    def owner_of(self, key: bytes) -> int:
        """The owner of flow ``key`` in the accepting view (what turnctl shows)."""
        self.refresh()
        return self._accepting.owner(key)

    def client(self, key: bytes, hop: int, origin: int, known_here: bool, creates: bool) -> int:
        """The node that must handle a client datagram of flow ``key``; ``self_id`` means here.

        ``hop`` is how many times it was forwarded already and ``origin`` the node that sent it
        (ignored at hop 0); ``known_here`` whether this node has state for the flow; ``creates``
        whether it is a request that creates state (Allocate), which is never second-chanced.
        """
        me = self.self_id
        if known_here or hop >= MAX_HOPS:
            return me
        if self.membership.generation != self._generation:
            self.refresh()
        owner = self._accepting.owner(key)
        if hop == 0:
            if owner != me:
                return owner
            if creates:
                return me
            return self._second_chance(key)
        if owner != me and owner != origin:
            return owner
        if creates:
            return me
        candidate = self._second_chance(key)
        return me if candidate == origin else candidate

    def _second_chance(self, key: bytes) -> int:
        """Where a flow this node owns but does not know may live: the alive-view owner, else
        the previous owner if still alive, else here."""
        me = self.self_id
        if self._alive_ring is not None:
            candidate = self._alive_ring.owner(key)
            if candidate != me:
                return candidate
        if self._previous_ring is not None:
            candidate = self._previous_ring.owner(key)
            if candidate != me and candidate in self._alive:
                return candidate
        return me

    def peer(self, port: int, hop: int, known_here: bool) -> int | None:
        """The node that must handle a peer datagram to relay ``port``: ``self_id`` means here,
        None means drop (port outside the relay range, or its slice owner is dead)."""
        me = self.self_id
        if known_here:
            return me
        owner = self.slices.owner(port)
        if owner is None:
            return None
        if owner == me:
            return me
        if self.membership.generation != self._generation:
            self.refresh()
        if owner not in self._alive:
            return None
        return owner if hop == 0 else me
