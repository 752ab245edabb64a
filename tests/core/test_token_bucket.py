"""turnd.core.bucket: the one token bucket behind every per-source and per-allocation budget."""

from __future__ import annotations

from turnd.core.bucket import TokenBucket, add_bounded


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    """Tokens come back at ``rate`` a second and never beyond ``burst``."""
    bucket = TokenBucket(0.0, 10.0)
    assert bucket.refill(10.5, 2.0, 5.0) == 1.0
    assert bucket.refill(100.0, 2.0, 5.0) == 5.0


def test_a_clock_going_back_earns_nothing() -> None:
    """A wall clock stepped back neither adds nor removes tokens; the refill time follows it."""
    bucket = TokenBucket(3.0, 10.0)
    assert bucket.refill(5.0, 2.0, 5.0) == 3.0
    assert bucket.time == 5.0


def test_a_spend_it_cannot_pay_takes_nothing() -> None:
    """take() spends ``cost`` only when the bucket holds that many tokens."""
    bucket = TokenBucket(1.5, 0.0)
    assert not bucket.take(0.0, 1.0, 5.0, cost=2.0)
    assert bucket.tokens == 1.5
    assert bucket.take(0.0, 1.0, 5.0)
    assert bucket.tokens == 0.5


def test_a_full_table_forgets_its_oldest_key() -> None:
    """add_bounded keeps at most ``limit`` buckets, dropping the first inserted."""
    table: dict[str, TokenBucket] = {}
    for key in "abc":
        add_bounded(table, key, TokenBucket(1.0, 0.0), 2)
    assert list(table) == ["b", "c"]
