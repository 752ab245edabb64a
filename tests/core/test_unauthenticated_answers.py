"""What turnd says to sources that have not authenticated: small, and rate limited."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stun import attributes as at
from stun.addresses import Address
from stun.message import Message, MessageClass, Method, encode
from tests.core.harness import World, core_settings, replies
from turnd.core.actions import FiveTuple, Transport
from turnd.core.ratelimit import SourceLimiter
from turnd.core.responses import amplification_bound

SERVER = Address("192.0.2.1", 3478)

methods = st.sampled_from(list(Method))
optional_attributes = st.lists(
    st.one_of(
        st.builds(at.Software, st.text(max_size=20)),
        st.builds(at.Lifetime, st.integers(0, 2**32 - 1)),
        st.builds(at.RequestedTransport, st.sampled_from([6, 17, 99])),
        st.builds(at.Username, st.text(max_size=20)),
        st.builds(at.Realm, st.text(max_size=20)),
        st.builds(at.UnknownAttribute, st.integers(0, 0xFFFF), st.binary(max_size=12)),
    ),
    max_size=4,
)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(methods, optional_attributes, st.booleans(), st.binary(min_size=12, max_size=12))
def test_no_unauthenticated_answer_exceeds_its_request_by_more_than_the_bound(
    method: Method, attributes: list[object], fingerprint: bool, txid: bytes
) -> None:
    """Issue 8 / DESIGN.md: an answer to an unauthenticated request is never larger than the
    request by more than amplification_bound(realm) (the 401 to a bare request is the worst)."""
    world = World()
    request = encode(
        Message(method, MessageClass.REQUEST, txid, tuple(attributes)),  # type: ignore[arg-type]
        fingerprint=fingerprint,
    )
    client = FiveTuple(Transport.UDP, Address("203.0.113.9", 4000), SERVER)
    for answer in replies(world.client_packet(client, request)):
        assert len(answer) - len(request) <= amplification_bound(world.settings.realm)


def test_the_bound_is_tight_for_a_bare_allocate() -> None:
    """The 401 to a 20-byte Allocate is exactly the bound: the constant is not loose."""
    world = World()
    request = encode(Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12)))
    client = FiveTuple(Transport.UDP, Address("203.0.113.9", 4000), SERVER)
    [answer] = replies(world.client_packet(client, request))
    assert len(answer) - len(request) == amplification_bound(world.settings.realm)


def test_a_flooding_source_is_cut_off_and_others_are_not() -> None:
    """Past its burst a source's unauthenticated requests are dropped and counted; another
    source, and an authenticated client, are still served."""
    world = World(core_settings(unauthenticated_rate=1.0, unauthenticated_burst=5.0))
    flood = FiveTuple(Transport.UDP, Address("198.51.100.66", 5000), SERVER)
    binding = encode(Message(Method.BINDING, MessageClass.REQUEST, bytes(12)))
    answered = [len(replies(world.client_packet(flood, binding))) for _ in range(20)]
    assert answered == [1] * 5 + [0] * 15
    assert world.server.stats["drop.unauthenticated_rate"] == 15
    other = FiveTuple(Transport.UDP, Address("198.51.100.67", 5000), SERVER)
    assert replies(world.client_packet(other, binding))
    alice = world.client()
    assert alice.allocate().get(at.XorRelayedAddress) is not None
    world.now += 2.0  # two tokens back
    assert [len(replies(world.client_packet(flood, binding))) for _ in range(3)] == [1, 1, 0]


def test_refused_credentials_count_against_the_limit() -> None:
    """Wrong passwords are unauthenticated answers too: a password guesser is cut off."""
    world = World(core_settings(unauthenticated_rate=1.0, unauthenticated_burst=3.0))
    guesser = world.client(password="wrong")
    guesser.fetch_nonce()  # one token
    signed = guesser.build(Method.ALLOCATE, [at.RequestedTransport(17)])
    answers = [len(guesser.raw(signed)) for _ in range(4)]
    assert answers == [1, 1, 0, 0]
    assert world.server.stats["auth_failure.bad_integrity"] == 4  # checked, then not answered
    assert world.server.stats["drop.unauthenticated_rate"] == 2


def test_limiter_refills_evicts_and_checks_its_arguments() -> None:
    """Buckets refill at rate up to burst; the oldest source is forgotten past max_sources."""
    limiter = SourceLimiter(rate=2.0, burst=2.0, max_sources=2)
    assert [limiter.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("a", 0.5)  # one token back after 0.5 s at 2/s
    assert not limiter.allow("a", 0.5)
    limiter.allow("b", 0.0)
    limiter.allow("c", 0.0)  # evicts "a"
    assert len(limiter) == 2
    assert limiter.allow("a", 0.5) and limiter.allow("a", 0.5)  # a fresh, full bucket
    with pytest.raises(ValueError):
        SourceLimiter(rate=0, burst=1)


def test_malformed_requests_count_against_the_limit() -> None:
    """400s to undecodable requests are unauthenticated answers: limited like the rest."""
    world = World(core_settings(unauthenticated_rate=1.0, unauthenticated_burst=2.0))
    client = FiveTuple(Transport.UDP, Address("203.0.113.9", 4000), SERVER)
    malformed = bytes.fromhex("000100042112a442") + bytes(12) + b"\x00\x20\x00\x08"
    answers = [len(replies(world.client_packet(client, malformed))) for _ in range(3)]
    assert answers == [1, 1, 0]
    assert world.server.stats["drop.unauthenticated_rate"] == 1
