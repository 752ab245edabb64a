"""Flow keys and rendezvous hashing: which node owns a client flow.

Theory of operation (DESIGN.md "The cluster"): every node computes the owner of a flow from the
same inputs — the flow's 5-tuple and the membership view — and must reach the same answer, in
every process, on every machine. So nothing here uses Python's ``hash()`` (salted per process):

* :func:`flow_key` turns ``(transport, client, server)`` into canonical bytes. IPs go in their
  packed form, so two spellings of one address (``::1`` / ``0:0::1``) give one key.
* :class:`Rendezvous` is highest-random-weight hashing (Thaler & Ravishankar, 1996). For a key
  ``h = blake2b-64(key)`` and a node with the precomputed ``n = blake2b-64(node id)``, the node's
  score is ``mix64(h XOR n)`` with the splitmix64 finaliser; the highest score wins, a tie goes
  to the lower node id.

Invariants that follow from HRW and that the tests check: the owner is the first of
:meth:`Rendezvous.ranked`; removing a node moves exactly the keys it owned (each to its runner-up)
and nothing else; adding a node moves only keys that the new node now owns, about ``1/(N+1)`` of
them; with a good mix every node owns about ``1/N`` of the keys.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from functools import lru_cache
from hashlib import blake2b

from stun.addresses import Address

#: Node ids travel as 16-bit numbers on the backbone; 0 is reserved as "no node".
NODE_ID_MIN = 1
NODE_ID_MAX = 0xFFFF

_MASK64 = (1 << 64) - 1

#: splitmix64 finaliser constants (Steele, Lea & Flood, "Fast splittable pseudorandom number
#: generators", 2014): a bijective 64-bit mix with full avalanche, cheap in pure Python.
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB

#: Distinct IP strings remembered by :func:`packed_ip`: a node sees the same clients over and over,
#: and the cache turns ``ipaddress`` parsing (~1 µs) into a dict lookup.
IP_CACHE_SIZE = 4096

_PORT = struct.Struct("!H")


@lru_cache(maxsize=IP_CACHE_SIZE)
def packed_ip(host: str) -> bytes:
    """The packed form (4 or 16 bytes) of an IP literal; raises ValueError if it is not one."""
    return ipaddress.ip_address(host).packed


def _address_bytes(address: Address) -> bytes:
    raw = packed_ip(address.host)
    return bytes((len(raw),)) + raw + _PORT.pack(address.port)


def flow_key(transport: str, client: Address, server: Address) -> bytes:
    """Canonical bytes of a flow's 5-tuple: transport name, client ip+port, server ip+port.

    Each part is length-prefixed, so no two distinct tuples share a key.
    """
    name = transport.encode("ascii")
    return bytes((len(name),)) + name + _address_bytes(client) + _address_bytes(server)


def mix64(value: int) -> int:
    """The splitmix64 finaliser of a 64-bit integer (a bijection on 64 bits)."""
    value = ((value ^ (value >> 30)) * _MIX1) & _MASK64
    value = ((value ^ (value >> 27)) * _MIX2) & _MASK64
    return value ^ (value >> 31)


def key_hash(key: bytes) -> int:
    """The 64-bit hash of a key: blake2b with an 8-byte digest, big-endian."""
    return int.from_bytes(blake2b(key, digest_size=8).digest(), "big")


def node_hash(node: int) -> int:
    """The 64-bit hash of a node id (blake2b of its two big-endian bytes)."""
    return key_hash(node.to_bytes(2, "big"))


def check_node_id(node: int) -> int:
    """Return ``node`` if it is a valid node id (an int in 1..65535), else raise ValueError."""
    if isinstance(node, bool) or not isinstance(node, int):
        raise ValueError(f"node id must be an int, not {node!r}")
    if not NODE_ID_MIN <= node <= NODE_ID_MAX:
        raise ValueError(f"node id {node} outside {NODE_ID_MIN}..{NODE_ID_MAX}")
    return node


class Rendezvous:
    """Rendezvous (highest-random-weight) hashing over a fixed set of node ids.

    Immutable once built; build a new one when the view changes.
    """

    __slots__ = ("_table", "nodes")

    nodes: frozenset[int]

    def __init__(self, nodes: Iterable[int]) -> None:
        self.nodes = frozenset(check_node_id(node) for node in nodes)
        # Sorted by node id, so a strict ">" in owner() lets the lower id win a tie.
        self._table: tuple[tuple[int, int], ...] = tuple(
            (node_hash(node), node) for node in sorted(self.nodes)
        )

    def owner(self, key: bytes) -> int:
        """The node that owns ``key``; raises LookupError when there are no nodes."""
        h = int.from_bytes(blake2b(key, digest_size=8).digest(), "big")
        best_node = 0
        best_score = -1
        # mix64 inlined, its constants in locals: this runs per node per forwarded packet.
        mix1, mix2, mask = _MIX1, _MIX2, _MASK64
        for nhash, node in self._table:
            x = h ^ nhash
            x = ((x ^ (x >> 30)) * mix1) & mask
            x = ((x ^ (x >> 27)) * mix2) & mask
            x ^= x >> 31
            if x > best_score:
                best_score = x
                best_node = node
        if not best_node:
            raise LookupError("no nodes to own the key")
        return best_node

    def ranked(self, key: bytes) -> list[int]:
        """All nodes, best first (the owner, then who would own ``key`` if it left, ...)."""
        h = key_hash(key)
        scored = sorted((-mix64(h ^ nhash), node) for nhash, node in self._table)
        return [node for _, node in scored]

    def __repr__(self) -> str:
        return f"Rendezvous({sorted(self.nodes)!r})"
