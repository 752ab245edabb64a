"""RFC 8489 §6 (with §7, §14.7, §14.13, §14.14): how the core treats STUN requests, indications and
whatever else arrives on a listener — Binding answered, garbage dropped and counted."""

from __future__ import annotations

from typing import Any

import pytest

from stun import attributes as at
from stun.message import Message, MessageClass, Method, check_integrity, decode, encode
from tests.conftest import raw_stun
from tests.core.harness import World, core_settings, error_code, replies

TXID = b"binding-txid"


def binding_request(*attributes: Any, fingerprint: bool = True) -> bytes:
    message = Message(Method.BINDING, MessageClass.REQUEST, TXID, tuple(attributes))
    return encode(message, fingerprint=fingerprint)


def test_binding_request_is_answered_with_xor_mapped_address_without_credentials() -> None:
    """§6.3.1, §14.2: Binding is answered with XOR-MAPPED-ADDRESS, no credentials asked."""
    world = World()
    alice = world.client()
    [reply] = alice.raw(binding_request())
    assert (reply.method, reply.cls, reply.transaction_id) == (
        Method.BINDING,
        MessageClass.SUCCESS,
        TXID,
    )
    mapped = reply.get(at.XorMappedAddress)
    assert mapped is not None and mapped.address == alice.address
    assert not reply.has(at.MessageIntegrity) and not reply.has(at.MessageIntegritySha256)
    assert world.server.stats["stun.binding_requests"] == 1


@pytest.mark.parametrize("with_fingerprint", [True, False])
def test_fingerprint_in_response_only_when_the_request_had_one(with_fingerprint: bool) -> None:
    """§14.7: FINGERPRINT is echoed to clients that use it and left out for those that do not."""
    world = World()
    [reply] = world.client().raw(binding_request(fingerprint=with_fingerprint))
    assert reply.has(at.Fingerprint) is with_fingerprint


@pytest.mark.parametrize("software", ["turnd test", ""])
def test_software_attribute_follows_settings(software: str) -> None:
    """§14.14: SOFTWARE goes into authenticated answers when configured, omitted when set
    empty, and never into unauthenticated ones (amplification, fingerprinting)."""
    world = World(core_settings(software=software))
    [binding] = world.client().raw(binding_request())
    assert binding.get(at.Software) is None
    found = world.client().allocate().get(at.Software)
    if software:
        assert found is not None and found.value == software
    else:
        assert found is None


def test_binding_indication_is_counted_and_not_answered() -> None:
    """§6.3.2: an indication is never answered; a Binding indication is a keepalive."""
    world = World()
    indication = Message(Method.BINDING, MessageClass.INDICATION, TXID)
    assert world.client().raw(encode(indication)) == []
    assert world.server.stats["stun.binding_indications"] == 1


def test_unknown_comprehension_required_attribute_is_420_with_unknown_attributes() -> None:
    """§6.3.1: an unknown comprehension-required attribute gets 420 listing it."""
    world = World()
    [reply] = world.client().raw(binding_request(at.UnknownAttribute(0x7FFE, b"abcd")))
    assert error_code(reply) == 420
    unknown = reply.get(at.UnknownAttributes)
    assert unknown is not None and list(unknown.types) == [0x7FFE]
    assert world.server.stats["error.420"] == 1


def test_unknown_comprehension_required_attribute_on_allocate_is_signed_420() -> None:
    """§6.3.1 after §9.2.4: the 420 to an authenticated request is signed with its key."""
    world = World()
    alice = world.client()
    reply = alice.request(
        Method.ALLOCATE, at.RequestedTransport(17), at.UnknownAttribute(0x0031, b"")
    )
    assert error_code(reply) == 420
    unknown = reply.get(at.UnknownAttributes)
    assert unknown is not None and list(unknown.types) == [0x0031]
    assert check_integrity(reply, alice.key())
    assert world.server.allocations == {}


def test_unknown_comprehension_optional_attribute_is_ignored() -> None:
    """§6.3.1: unknown comprehension-optional attributes (0x8000-0xFFFF) are ignored."""
    world = World()
    [reply] = world.client().raw(binding_request(at.UnknownAttribute(0xC0DE, b"xyz")))
    assert reply.cls is MessageClass.SUCCESS


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(raw_stun([(0x0006, b"ab")], length=12), id="length-beyond-datagram"),
        pytest.param(raw_stun([(0x0020, b"\x00\x07\x00\x01\x01\x02\x03\x04")]), id="bad-family"),
        pytest.param(raw_stun(length=2), id="length-not-multiple-of-4"),
    ],
)
def test_malformed_request_with_a_valid_header_is_400(data: bytes) -> None:
    """§6.3.1: a request with a sound header but a malformed body gets 400."""
    world = World()
    [reply] = world.client().raw(data)
    assert error_code(reply) == 400
    assert reply.cls is MessageClass.ERROR
    assert reply.transaction_id == data[8:20]
    assert world.server.stats["request.malformed"] == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"", "not_stun", id="empty"),
        pytest.param(b"\x80" + bytes(30), "not_stun", id="rtp-like"),
        pytest.param(b"\x16\x03\x01\x00\x05hello", "not_stun", id="tls-record"),
        pytest.param(b"\x00\x01\x00", "malformed_stun", id="short-header"),
        pytest.param(raw_stun(cookie=0x12345678), "malformed_stun", id="no-magic-cookie"),
        pytest.param(raw_stun(msg_type=0x0011, length=2), "malformed_stun", id="bad-indication"),
        pytest.param(raw_stun(msg_type=0x0101), "unexpected_response", id="success-response"),
        pytest.param(raw_stun(msg_type=0x0111), "unexpected_response", id="error-response"),
        pytest.param(raw_stun(msg_type=0x0017), "unexpected_indication", id="data-indication"),
    ],
)
def test_what_is_not_a_request_is_dropped_and_counted(data: bytes, reason: str) -> None:
    """§6.3: garbage, bad indications and unasked-for responses are dropped, counted by reason."""
    world = World()
    assert world.client().raw(data) == []
    assert world.server.stats["drop." + reason] == 1


@pytest.mark.parametrize(
    "msg_type",
    [
        pytest.param(0x000D, id="unknown-method"),
        pytest.param(0x0007, id="data-as-request"),
    ],
)
def test_request_for_an_unknown_method_is_400(msg_type: int) -> None:
    """§6.3.1 (RFC 5389 §7.3.1): a request for a method the server does not know gets 400."""
    world = World()
    [reply] = world.client().raw(raw_stun(msg_type=msg_type))
    assert error_code(reply) == 400
    assert world.server.stats["request.unknown_method"] == 1


def test_binding_requires_credentials_when_anonymous_binding_is_off() -> None:
    """§9.2: with anonymous Binding off, Binding is challenged and then answered signed."""
    world = World(core_settings(allow_anonymous_binding=False))
    alice = world.client()
    [challenge] = alice.raw(binding_request())
    assert error_code(challenge) == 401
    reply = alice.request(Method.BINDING)
    assert reply.cls is MessageClass.SUCCESS
    assert check_integrity(reply, alice.key())
    mapped = reply.get(at.XorMappedAddress)
    assert mapped is not None and mapped.address == alice.address


def test_reply_goes_to_the_five_tuple_that_asked() -> None:
    """§6.3.4: the response is sent back to the source of the request, on its transport."""
    world = World()
    alice = world.client()
    actions = world.client_packet(alice.five_tuple, binding_request())
    [data] = replies(actions, alice.five_tuple)
    assert decode(data).transaction_id == TXID


# --- the hot path agrees with the general path ------------------------------------------------


@pytest.mark.parametrize("fingerprint", [False, True])
def test_binding_route_answers_as_handle_client_does(fingerprint: bool) -> None:
    """The adapter's hot path gives the same bytes and counts, past the source's rate too."""
    settings = core_settings(unauthenticated_rate=1.0, unauthenticated_burst=2.0)
    slow, fast = World(settings), World(settings)
    five_tuple = slow.client().five_tuple
    request = binding_request(fingerprint=fingerprint)
    for _ in range(3):  # the third is over the burst: dropped, counted
        expected = replies(slow.server.handle_client(five_tuple, request, slow.now))
        answer = fast.server.binding_route(five_tuple, request, fast.now)
        assert (answer is True and expected == []) or [answer] == expected
    assert answer is True
    assert fast.server.stats == slow.server.stats
    assert fast.server.stats["drop.unauthenticated_rate"] == 1


def test_binding_route_declines_when_anonymous_binding_is_off_or_the_request_is_not_bare() -> None:
    """False sends it down the general path: credentials required, or attributes to judge."""
    world = World(core_settings(allow_anonymous_binding=False))
    five_tuple = world.client().five_tuple
    assert world.server.binding_route(five_tuple, binding_request(), world.now) is False
    open_world = World()
    with_software = binding_request(at.Software("client"))
    assert open_world.server.binding_route(five_tuple, with_software, open_world.now) is False
    assert not world.server.stats and not open_world.server.stats
