"""Rate limits on what turnd says to sources that have not authenticated (DESIGN.md, Security).

Theory of operation: an unauthenticated answer (a Binding response, a 401 challenge, a 400 to a
malformed request) costs the server CPU and, if the source address is forged, sends bytes to a
victim. One token bucket per source IP bounds both: ``rate`` answers a second with bursts of
``burst``; past that the request is dropped and counted, never answered.

A second table, :class:`ByteCredit`, bounds the ratio: per source, bytes answered never exceed
bytes received plus a small credit (RFC 9000 §8's anti-amplification limit). A third,
:class:`FailureThrottle`, slows online password guessing per source and per username.

These are the only state turnd keeps about a source before it authenticates. Each is bounded: at
most ``max_sources`` entries, the oldest forgotten first (a forgotten source starts full, which
errs on the side of answering). All three use the core's one token bucket (turnd.core.bucket).
"""

from __future__ import annotations

from turnd.core.bucket import TokenBucket, add_bounded

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
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, host: str, now: float) -> bool:
        """Take one token for ``host`` at ``now``; False when its bucket is empty."""
        bucket = self._buckets.get(host)
        if bucket is None:
            bucket = TokenBucket(self.burst, now)
            add_bounded(self._buckets, host, bucket, self.max_sources)
        return bucket.take(now, self.rate, self.burst)

    def __len__(self) -> int:
        return len(self._buckets)


#: The most an unauthenticated answer may be, as a multiple of its request (QUIC's
#: anti-amplification factor, RFC 9000 §8). Larger answers are paid from the byte credit only.
AMPLIFICATION_FACTOR = 3

#: Seconds in which a source's spent byte credit refills completely: an ICE client refreshing its
#: server-reflexive candidate with 20-byte Bindings (32-byte answers) spends ~1 B/s net, far less
#: than credit/CREDIT_REFILL_SECONDS (68 B/s at the default credit), so it is never cut off.
CREDIT_REFILL_SECONDS = 60.0


class ByteCredit:
    """Per source IP: answered bytes never exceed received bytes plus ``credit``.

    Each source starts with ``credit`` bytes; a request adds its size, an answer subtracts its
    size, and the balance never exceeds ``credit`` (so bytes a source sent long ago, or that went
    unanswered, buy nothing later). The balance refills towards ``credit`` in
    CREDIT_REFILL_SECONDS. An answer the balance cannot pay is dropped by the caller, counted.
    An answer larger than AMPLIFICATION_FACTOR times its request is paid from the balance alone
    (the request's own bytes do not count for it): it is the first 401 to a minimal Allocate.
    Bounded like SourceLimiter: at most ``max_sources``, oldest forgotten first.
    """

    def __init__(self, credit: int, max_sources: int = MAX_SOURCES) -> None:
        if credit < 0:
            raise ValueError("credit must not be negative")
        self.credit = float(credit)
        self.max_sources = max_sources
        self.refill_rate = self.credit / CREDIT_REFILL_SECONDS
        self._balances: dict[str, TokenBucket] = {}

    def pay(self, host: str, received: int, answered: int, now: float) -> bool:
        """Charge ``answered`` bytes for a ``received``-byte request; False: cannot be paid."""
        entry = self._balances.get(host)
        if entry is None:
            entry = TokenBucket(self.credit, now)
            add_bounded(self._balances, host, entry, self.max_sources)
        balance = entry.refill(now, self.refill_rate, self.credit)
        if answered <= AMPLIFICATION_FACTOR * received:
            balance = min(self.credit, balance + received)
        if answered > balance:
            entry.tokens = balance
            return False
        entry.tokens = balance - answered
        return True

    def validated(self, host: str) -> None:
        """``host`` authenticated: its nonce, bound to its address, came back from it, so the
        address is its own (RFC 9000 §8.1's address validation): its balance is full again."""
        entry = self._balances.get(host)
        if entry is not None:
            entry.tokens = self.credit

    def __len__(self) -> int:
        return len(self._balances)


class FailureThrottle:
    """Online password guessing (RFC 8489 §9.2: long-term passwords are guessable online).

    Per source IP a token bucket of failed authentications: ``burst`` at once, then ``rate`` a
    second; a source whose bucket is empty gets no answer to any signed request, the right
    password included, until it refills. Per username a larger bucket: once a username is over
    it (guessing spread over many sources), each further failure empties the failing source's
    bucket. Only failing sources are slowed: a source that has not failed is never throttled, so
    a user's own client elsewhere keeps working. Both tables hold at most ``max_entries``, the
    oldest forgotten first (a forgotten source starts with a full bucket).
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        user_rate: float,
        user_burst: float,
        max_entries: int = MAX_SOURCES,
    ) -> None:
        if min(rate, user_rate) <= 0 or min(burst, user_burst) < 1:
            raise ValueError("failure rates must be positive and bursts at least 1")
        self.rate, self.burst = rate, burst
        self.user_rate, self.user_burst = user_rate, user_burst
        self.max_entries = max_entries
        self._sources: dict[str, TokenBucket] = {}
        self._users: dict[str, TokenBucket] = {}

    def _bucket(
        self, table: dict[str, TokenBucket], key: str, burst: float, now: float
    ) -> TokenBucket:
        entry = table.get(key)
        if entry is None:
            entry = TokenBucket(burst, now)
            add_bounded(table, key, entry, self.max_entries)
        return entry

    def blocked(self, host: str, now: float) -> bool:
        """Whether ``host`` has used up its failures (its signed requests go unanswered)."""
        source = self._sources.get(host)
        if source is None:
            return False  # never failed: no entry is made for sources that do not fail
        return source.refill(now, self.rate, self.burst) < 1

    def failed(self, host: str, username: str | None, now: float) -> None:
        """Record one failed authentication from ``host`` for ``username``."""
        source = self._bucket(self._sources, host, self.burst, now)
        source.tokens = max(0.0, source.refill(now, self.rate, self.burst) - 1)
        if username is None:
            return
        user = self._bucket(self._users, username, self.user_burst, now)
        if not user.take(now, self.user_rate, self.user_burst):
            source.tokens = 0.0  # the username is under attack: the failing source waits a refill

    def __len__(self) -> int:
        return len(self._sources) + len(self._users)
