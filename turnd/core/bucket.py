"""The one token bucket of the core, and the bounded tables that key buckets by source.

Theory of operation: a bucket holds ``tokens`` and the time of its last refill; at each use it
earns ``rate`` tokens a second since then, never more than ``burst`` (a clock that went back
earns nothing), and a spend takes tokens only if there are enough. The rate and the burst are
arguments, not fields, so a table of buckets sharing one limit stores two floats per key.

Users: per source IP the unauthenticated-answer limit (turnd.core.ratelimit.SourceLimiter) and
the byte credit's refill (ByteCredit), per source and per username the failed-authentication
throttle (FailureThrottle), per allocation the new-peer budget (Allocation.admit_peer). The
per-packet traffic budget (Allocation.admit) writes the same arithmetic out inline: it runs for
every relayed datagram, where a call costs more than the arithmetic.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")


class TokenBucket:
    """``tokens`` as of ``time``; refilled and spent at the rate and burst the caller gives."""

    __slots__ = ("time", "tokens")

    def __init__(self, tokens: float, time: float) -> None:
        self.tokens = tokens
        self.time = time

    def refill(self, now: float, rate: float, burst: float) -> float:
        """Add what ``rate`` earned since the last refill, at most ``burst``; the new level."""
        tokens = self.tokens
        if now > self.time:
            tokens += (now - self.time) * rate
            if tokens > burst:  # written out: min() is a call too
                tokens = burst
            self.tokens = tokens
        self.time = now
        return tokens

    def take(self, now: float, rate: float, burst: float, cost: float = 1.0) -> bool:
        """Refill, then spend ``cost`` tokens; False (nothing spent) when there are fewer."""
        tokens = self.refill(now, rate, burst)
        if tokens < cost:
            return False
        self.tokens = tokens - cost
        return True


def add_bounded(table: dict[K, TokenBucket], key: K, bucket: TokenBucket, limit: int) -> None:
    """Put ``bucket`` under ``key``, first forgetting the oldest entry if ``table`` holds
    ``limit`` (a flood of distinct, possibly forged, keys cannot grow it)."""
    if len(table) >= limit:
        del table[next(iter(table))]
    table[key] = bucket
