"""Rate limits on what turnd says to sources that have not authenticated (DESIGN.md, Security).

Theory of operation: an unauthenticated answer (a Binding response, a 401 challenge, a 400 to a
malformed request) costs the server CPU and, if the source address is forged, sends bytes to a
victim. One token bucket per source IP bounds both: ``rate`` answers a second with bursts of
``burst``; past that the request is dropped and counted, never answered.

This is the only state turnd keeps about a source before it authenticates. It is bounded: at most
``max_sources`` buckets, the oldest forgotten first (a forgotten source starts with a full bucket,
which errs on the side of answering).
"""

from __future__ import annotations

#: Sources tracked at once: a flood of distinct (forged) sources cannot grow the table past it.
MAX_SOURCES = 65536


class SourceLimiter:
    """Token buckets keyed by source IP."""

    def __init__(self, rate: float, burst: float, max_sources: int = MAX_SOURCES) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: dict[str, list[float]] = {}  # host -> [tokens, last refill time]

    def allow(self, host: str, now: float) -> bool:
        """Take one token for ``host`` at ``now``; False when its bucket is empty."""
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                del self._buckets[next(iter(self._buckets))]
            self._buckets[host] = [self.burst - 1, now]
            return True
        tokens = min(self.burst, bucket[0] + max(0.0, now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1
        return True

    def __len__(self) -> int:
        return len(self._buckets)
