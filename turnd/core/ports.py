"""Relay port bookkeeping: which ports of the range are taken, and picking free ones.

The core decides the port and the adapter binds exactly that port (``OpenRelay``); if the kernel
refuses (another program holds it), the core marks it taken and tries another. Ports are chosen at
random (RFC 8656 §7.2 recommends unpredictable relay ports, RFC 6056) from an injected rng.
"""

from __future__ import annotations

from collections.abc import Callable

#: Random probes before falling back to a scan; with the range under 50 % full a probe almost
#: always hits, and the scan bounds the worst case.
RANDOM_PROBES = 16


class PortPool:
    """Taken ports of one relay address family inside [low, high]."""

    def __init__(self, low: int, high: int, rng: Callable[[int], bytes]) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"bad relay port range {low}-{high}")
        self.low = low
        self.high = high
        self._rng = rng
        self.taken: set[int] = set()

    @property
    def size(self) -> int:
        """Number of ports in the range."""
        return self.high - self.low + 1

    def _random_port(self) -> int:
        return self.low + int.from_bytes(self._rng(4), "big") % self.size

    def pick(self, *, even_pair: bool = False) -> int | None:
        """A free port (with ``even_pair``: an even port P with P+1 free too), or None if full."""
        for _ in range(RANDOM_PROBES):
            port = self._random_port()
            if even_pair:
                port &= ~1
            if self._free(port, even_pair):
                return port
        start = self._random_port()
        for i in range(self.size):
            port = self.low + (start - self.low + i) % self.size
            if even_pair and port % 2:
                continue
            if self._free(port, even_pair):
                return port
        return None

    def _free(self, port: int, pair: bool) -> bool:
        if port < self.low or port in self.taken:
            return False
        if pair:
            return port + 1 <= self.high and port + 1 not in self.taken
        return True

    def take(self, port: int) -> None:
        """Mark ``port`` as used."""
        self.taken.add(port)

    def release(self, port: int) -> None:
        """Mark ``port`` as free again."""
        self.taken.discard(port)
