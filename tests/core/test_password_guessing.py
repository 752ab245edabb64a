"""Online password guessing (issue 20, item 6): failures are throttled per source and per
username, and a user is never locked out from another source."""

from __future__ import annotations

import pytest

from stun import attributes as at
from stun.addresses import Address
from stun.message import Method
from tests.core.harness import World, core_settings, error_code
from turnd.core.ratelimit import FailureThrottle

GUESSER = Address("198.51.100.7", 40000)
ELSEWHERE = Address("203.0.113.50", 40000)


def test_200_wrong_guesses_throttle_the_source_but_not_the_user_elsewhere() -> None:
    """200 wrong passwords from one source: the right one from that source goes unanswered
    until its bucket refills; the right one from another source is accepted at once."""
    world = World()
    guesser = world.client(password="wrong", address=GUESSER)
    guesser.fetch_nonce()
    guess = guesser.build(Method.ALLOCATE, [at.RequestedTransport(17)])
    answered = sum(len(guesser.raw(guess)) for _ in range(200))
    burst = int(world.settings.auth_failure_burst)
    assert answered == burst  # each of the first `burst` got its 401, the rest nothing
    stats = world.server.stats
    assert stats["auth_failure.bad_integrity"] == burst
    assert stats["auth_failure.throttled"] == 200 - burst
    right_here = world.client(address=GUESSER)
    right_here.fetch_nonce()  # an unsigned request is a challenge, not a guess
    assert right_here.raw(right_here.build(Method.ALLOCATE, [at.RequestedTransport(17)])) == []
    assert world.server.allocations == {}
    elsewhere = world.client(address=ELSEWHERE)
    assert elsewhere.allocate().get(at.XorRelayedAddress) is not None
    world.advance(1 / world.settings.auth_failure_rate)  # one failure's worth back
    assert right_here.allocate().get(at.XorRelayedAddress) is not None


def test_guessing_one_user_from_many_sources_slows_each_failing_source() -> None:
    """Past the username's budget, each failing source is throttled at its next failure; the
    user's own client, which never failed, still authenticates."""
    world = World(core_settings(auth_failure_user_burst=10.0))
    for index in range(10):  # the username's budget, spread over ten sources
        guesser = world.client(password="wrong", address=Address("198.51.100.9", 1000 + index))
        guesser.fetch_nonce()
        assert error_code(guesser.request(Method.ALLOCATE, at.RequestedTransport(17))) == 401
    late = world.client(password="wrong", address=Address("198.51.100.10", 1000))
    late.fetch_nonce()
    guess = late.build(Method.ALLOCATE, [at.RequestedTransport(17)])
    assert len(late.raw(guess)) == 1  # its first failure is still answered...
    assert late.raw(guess) == []  # ...but it has no second one
    assert world.server.stats["auth_failure.throttled"] == 1
    owner = world.client(address=ELSEWHERE)
    assert owner.allocate().get(at.XorRelayedAddress) is not None


def test_failure_throttle_tables_are_bounded_and_refill() -> None:
    """Both tables forget their oldest entry past max_entries; buckets refill at their rate."""
    throttle = FailureThrottle(rate=1.0, burst=2.0, user_rate=1.0, user_burst=5.0, max_entries=2)
    assert not throttle.blocked("a", 0.0)  # a source that never failed has no entry
    throttle.failed("a", "u", 0.0)
    throttle.failed("a", "u", 0.0)
    assert throttle.blocked("a", 0.0)
    assert not throttle.blocked("a", 1.0)
    for host in ("b", "c"):
        throttle.failed(host, None, 1.0)
    assert not throttle.blocked("a", 1.0)  # forgotten: a fresh bucket
    assert len(throttle) <= 4
    with pytest.raises(ValueError):
        FailureThrottle(rate=0, burst=1, user_rate=1, user_burst=1)


def test_a_guesser_behind_the_same_nat_cannot_starve_an_allocation() -> None:
    """The source IP is throttled, but the client holding an allocation on its own 5-tuple
    still refreshes it; a new 5-tuple from that IP is throttled."""
    world = World()
    owner = world.client(address=Address(GUESSER.host, 50000))
    assert owner.allocate().get(at.XorRelayedAddress) is not None
    guesser = world.client(password="wrong", address=GUESSER)
    guesser.fetch_nonce()
    guess = guesser.build(Method.ALLOCATE, [at.RequestedTransport(17)])
    for _ in range(int(world.settings.auth_failure_burst) + 1):
        guesser.raw(guess)
    assert world.server.stats["auth_failure.throttled"] == 1
    assert error_code(owner.refresh(600)) is None
    newcomer = world.client(address=Address(GUESSER.host, 50001))
    newcomer.fetch_nonce()
    assert newcomer.raw(newcomer.build(Method.ALLOCATE, [at.RequestedTransport(17)])) == []
