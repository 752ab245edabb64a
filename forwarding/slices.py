"""Relay port slices: which node owns a relay port.

Theory of operation (DESIGN.md "The cluster", peer side): the relay port range
``port_min..port_max`` is cut into slices of ``slice_size`` consecutive ports (the last one may be
shorter). Each slice has one owner, chosen by rendezvous hashing of the slice index over the
*configured* nodes — not the live view, so a node's ports stay its own while it is away and a peer
packet for them is dropped rather than delivered to a node that never allocated them. A node
allocates relay ports only from its own slices, so any node can route a peer's datagram by its
destination port alone.

Invariants: every port in the range has exactly one owner; a node's ranges are disjoint, sorted
and merged; adding a node moves about ``1/(N+1)`` of the slices, all to the new node (HRW).
"""

from __future__ import annotations

from collections.abc import Iterable

from forwarding.hashing import Rendezvous

#: Ports per slice unless configured: small enough that slices spread evenly over a few nodes in
#: a typical range of thousands of ports, large enough that a node's ranges stay few.
DEFAULT_SLICE_SIZE = 64

PORT_MIN = 0
PORT_MAX = 0xFFFF


def slice_key(index: int) -> bytes:
    """The rendezvous key of slice number ``index``."""
    return b"slice" + index.to_bytes(4, "big")


class SliceTable:
    """The relay port range cut into slices, each owned by one configured node."""

    __slots__ = ("_owners", "nodes", "port_max", "port_min", "slice_size")

    port_min: int
    port_max: int
    slice_size: int
    nodes: frozenset[int]

    def __init__(
        self,
        port_min: int,
        port_max: int,
        nodes: Iterable[int],
        slice_size: int = DEFAULT_SLICE_SIZE,
    ) -> None:
        if not PORT_MIN <= port_min <= port_max <= PORT_MAX:
            raise ValueError(
                f"bad relay port range {port_min}..{port_max}: need "
                f"{PORT_MIN} <= port_min <= port_max <= {PORT_MAX}"
            )
        if slice_size < 1:
            raise ValueError(f"slice_size must be at least 1, not {slice_size}")
        ring = Rendezvous(nodes)
        if not ring.nodes:
            raise ValueError("a slice table needs at least one node")
        self.port_min = port_min
        self.port_max = port_max
        self.slice_size = slice_size
        self.nodes = ring.nodes
        count = (port_max - port_min) // slice_size + 1
        self._owners: tuple[int, ...] = tuple(ring.owner(slice_key(i)) for i in range(count))

    @property
    def slice_count(self) -> int:
        """Number of slices (the last may hold fewer than ``slice_size`` ports)."""
        return len(self._owners)

    def owner(self, port: int) -> int | None:
        """The node owning relay port ``port``, or None if the port is outside the range."""
        if port < self.port_min or port > self.port_max:
            return None
        return self._owners[(port - self.port_min) // self.slice_size]

    def slice_owners(self) -> tuple[int, ...]:
        """The owner of each slice, by slice index."""
        return self._owners

    def ranges(self, node: int) -> tuple[tuple[int, int], ...]:
        """The inclusive port ranges ``node`` owns, sorted, adjacent slices merged."""
        merged: list[tuple[int, int]] = []
        size = self.slice_size
        for index, owner in enumerate(self._owners):
            if owner != node:
                continue
            first = self.port_min + index * size
            last = min(first + size - 1, self.port_max)
            if merged and merged[-1][1] + 1 == first:
                merged[-1] = (merged[-1][0], last)
            else:
                merged.append((first, last))
        return tuple(merged)

    def share(self, node: int) -> int:
        """Number of relay ports ``node`` owns."""
        return sum(last - first + 1 for first, last in self.ranges(node))

    def __repr__(self) -> str:
        return (
            f"SliceTable({self.port_min}, {self.port_max}, {sorted(self.nodes)!r}, "
            f"slice_size={self.slice_size})"
        )
