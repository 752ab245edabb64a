"""Anti-amplification by byte credit (issue 20, first section): per source, answered bytes to
unauthenticated requests never exceed received bytes plus ``unauthenticated_credit``, and an
answer over 3x its request is paid from that credit alone."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stun import attributes as at
from stun.addresses import Address
from stun.message import Message, MessageClass, Method, decode, encode
from tests.core.harness import World, core_settings, replies
from turnd.core.actions import FiveTuple, Transport
from turnd.core.ratelimit import AMPLIFICATION_FACTOR, CREDIT_REFILL_SECONDS, ByteCredit

SERVER = Address("192.0.2.1", 3478)
VICTIM = FiveTuple(Transport.UDP, Address("203.0.113.9", 4000), SERVER)
#: The rate limit is not what is under test here: make it never bind.
NO_RATE_LIMIT = {"unauthenticated_rate": 1e9, "unauthenticated_burst": 1e9}

attribute = st.one_of(
    st.builds(at.Software, st.text(max_size=20)),
    st.builds(at.Lifetime, st.integers(0, 2**32 - 1)),
    st.builds(at.RequestedTransport, st.sampled_from([6, 17, 99])),
    st.builds(at.Username, st.text(max_size=20)),
    st.builds(at.Realm, st.text(max_size=20)),
    st.builds(at.Nonce, st.text(max_size=20)),
    st.builds(at.UnknownAttribute, st.integers(0, 0xFFFF), st.binary(max_size=12)),
)
stun_request = st.builds(
    lambda method, cls, attrs_, fp, txid: encode(
        Message(method, cls, txid, tuple(attrs_)), fingerprint=fp
    ),
    st.one_of(st.sampled_from(list(Method)), st.integers(0, 0xFFF)),
    st.sampled_from(list(MessageClass)),
    st.lists(attribute, max_size=4),
    st.booleans(),
    st.binary(min_size=12, max_size=12),
)
#: STUN-shaped garbage: a valid header whose body is random (most fail to decode: 400 or drop).
garbage = st.builds(
    lambda method, body: (
        bytes([method >> 8 & 0x3F, method & 0xFF])
        + len(body).to_bytes(2, "big")
        + bytes.fromhex("2112a442")
        + bytes(12)
        + body
    ),
    st.integers(0, 0x3FFF),
    st.binary(max_size=40),
)
packet = st.one_of(stun_request, garbage, st.binary(max_size=60))


def _is_challenge(answer: bytes) -> bool:
    error = decode(answer).get(at.ErrorCode)
    return error is not None and error.code in (401, 438)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(packet, min_size=1, max_size=120))
def test_every_unauthenticated_path_holds_both_bounds(packets: list[bytes]) -> None:
    """Any mix of requests of every method and class, and garbage, from one source at one
    instant: answered bytes <= received + credit, and only a challenge exceeds 3x its request."""
    world = World(core_settings(**NO_RATE_LIMIT))
    received = answered = 0
    for data in packets:
        received += len(data)
        for answer in replies(world.client_packet(VICTIM, data)):
            answered += len(answer)
            if len(answer) > AMPLIFICATION_FACTOR * len(data):
                assert _is_challenge(answer)
            assert answered <= received + world.settings.unauthenticated_credit


def test_a_flood_of_4000_requests_gets_at_most_its_own_size_plus_the_credit() -> None:
    """The measured burst (4,000 Binding/Allocate from one source): the victim gets no more
    than the attacker sent plus 4 KiB; the rest is dropped, counted."""
    world = World(core_settings(**NO_RATE_LIMIT))
    binding = encode(Message(Method.BINDING, MessageClass.REQUEST, bytes(12)))
    allocate = encode(
        Message(Method.ALLOCATE, MessageClass.REQUEST, bytes(12), (at.RequestedTransport(17),))
    )
    received = answered = 0
    for index in range(4000):
        data = binding if index % 2 else allocate
        received += len(data)
        answered += sum(len(a) for a in replies(world.client_packet(VICTIM, data)))
    assert answered <= received + world.settings.unauthenticated_credit
    assert world.server.stats["drop.unauthenticated_credit"] > 0


def test_a_fresh_source_gets_its_first_401_and_its_allocation() -> None:
    """A browser's first Allocate (REQUESTED-TRANSPORT only, 28 bytes) gets its 401 although it
    is over 3x: a fresh source pays it from its credit; then it authenticates."""
    world = World()
    client = world.client(fingerprint=False)
    request = client.build(Method.ALLOCATE, [at.RequestedTransport(17)])
    [answer] = replies(world.client_packet(client.five_tuple, request))
    assert len(request) == 28 and len(answer) > AMPLIFICATION_FACTOR * len(request)
    client.fetch_nonce()
    assert client.allocate().get(at.XorRelayedAddress) is not None


def test_stun_only_bindings_never_run_out_of_credit() -> None:
    """A STUN-only client refreshing its mapping with bare Bindings every 10 s for a day is
    always answered: the credit refills faster than 12 bytes per Binding."""
    world = World()
    binding = encode(Message(Method.BINDING, MessageClass.REQUEST, bytes(12)))
    for _ in range(8640):
        world.now += 10.0
        assert replies(world.client_packet(VICTIM, binding))
    assert world.server.stats["drop.unauthenticated_credit"] == 0


def test_a_burst_of_bindings_from_a_nat_is_answered_within_the_credit() -> None:
    """A NAT's burst of 300 bare IPv4 Bindings (12 bytes over each) fits the 4 KiB credit."""
    world = World()
    binding = encode(Message(Method.BINDING, MessageClass.REQUEST, bytes(12)))
    assert all(replies(world.client_packet(VICTIM, binding)) for _ in range(300))


def test_authenticating_refills_the_credit() -> None:
    """A source that authenticated proved its address (its nonce came back): full credit."""
    credit = ByteCredit(100)
    assert credit.pay("a", 20, 100, 0.0)  # over 3x: from the credit alone
    assert not credit.pay("a", 20, 100, 0.0)
    credit.validated("a")
    assert credit.pay("a", 20, 100, 0.0)


def test_byte_credit_refills_evicts_and_caps() -> None:
    """The balance refills in CREDIT_REFILL_SECONDS, never exceeds the credit, and the table
    forgets its oldest source past max_sources."""
    credit = ByteCredit(60, max_sources=2)
    assert credit.pay("a", 1000, 60, 0.0)  # the 1000 received bytes buy no more than the cap
    assert not credit.pay("a", 20, 61, 0.0)
    assert credit.pay("a", 20, 60, CREDIT_REFILL_SECONDS)
    credit.pay("b", 20, 0, 0.0)
    credit.pay("c", 20, 0, 0.0)
    assert len(credit) == 2
    with pytest.raises(ValueError):
        ByteCredit(-1)


def test_tcp_sources_are_not_charged() -> None:
    """A TCP handshake proved the address: a stream client's Bindings never run out of credit."""
    world = World(core_settings(**NO_RATE_LIMIT))
    stream = FiveTuple(Transport.TCP, Address("203.0.113.9", 4000), SERVER)
    binding = encode(Message(Method.BINDING, MessageClass.REQUEST, bytes(12)))
    assert all(replies(world.client_packet(stream, binding)) for _ in range(1000))
    hot = [world.server.binding_route(stream, binding, world.now) for _ in range(1000)]
    assert all(isinstance(answer, bytes) for answer in hot)
    assert world.server.stats["drop.unauthenticated_credit"] == 0
    assert len(world.server.credit) == 0


def test_the_binding_hot_path_is_charged_like_the_rest() -> None:
    """binding_route (the adapter's fast path) pays from the same credit: a flood of bare
    Bindings is answered up to received + credit, then dropped and counted."""
    world = World(core_settings(**NO_RATE_LIMIT))
    binding = encode(Message(Method.BINDING, MessageClass.REQUEST, bytes(12)))
    hot = [world.server.binding_route(VICTIM, binding, world.now) for _ in range(1000)]
    answered = sum(len(answer) for answer in hot if isinstance(answer, bytes))
    assert answered <= 1000 * len(binding) + world.settings.unauthenticated_credit
    assert world.server.stats["drop.unauthenticated_credit"] == hot.count(True) > 0
    # Once the credit is spent the victim gets 1x: the last 500 answers within one answer of it.
    tail = sum(len(answer) for answer in hot[500:] if isinstance(answer, bytes))
    assert tail <= 500 * len(binding) + 32
