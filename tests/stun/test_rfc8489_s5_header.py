"""RFC 8489 §5 and §6.3: the STUN header — type interleaving, zero bits, cookie, length."""

from __future__ import annotations

import itertools

import pytest

from stun import Header, Message, MessageClass, Method, StunDecodeError, decode, encode
from stun.attributes import AttributeType
from stun.message import HEADER_SIZE, MAX_MESSAGE_SIZE, message_type, split_type
from tests.conftest import TEST_TRANSACTION_ID, raw_stun

REQ, IND, OK, ERR = (
    MessageClass.REQUEST,
    MessageClass.INDICATION,
    MessageClass.SUCCESS,
    MessageClass.ERROR,
)

#: Message types as the RFCs and IANA list them (RFC 8489 §18.2, RFC 8656 §17, RFC 6062 §6.1).
KNOWN_TYPES = [
    (Method.BINDING, REQ, 0x0001),
    (Method.BINDING, IND, 0x0011),
    (Method.BINDING, OK, 0x0101),
    (Method.BINDING, ERR, 0x0111),
    (Method.ALLOCATE, REQ, 0x0003),
    (Method.ALLOCATE, OK, 0x0103),
    (Method.ALLOCATE, ERR, 0x0113),
    (Method.REFRESH, REQ, 0x0004),
    (Method.REFRESH, OK, 0x0104),
    (Method.REFRESH, ERR, 0x0114),
    (Method.SEND, IND, 0x0016),
    (Method.DATA, IND, 0x0017),
    (Method.CREATE_PERMISSION, REQ, 0x0008),
    (Method.CREATE_PERMISSION, OK, 0x0108),
    (Method.CREATE_PERMISSION, ERR, 0x0118),
    (Method.CHANNEL_BIND, REQ, 0x0009),
    (Method.CHANNEL_BIND, OK, 0x0109),
    (Method.CHANNEL_BIND, ERR, 0x0119),
    (Method.CONNECT, REQ, 0x000A),
    (Method.CONNECT, OK, 0x010A),
    (Method.CONNECT, ERR, 0x011A),
    (Method.CONNECTION_BIND, REQ, 0x000B),
    (Method.CONNECTION_BIND, OK, 0x010B),
    (Method.CONNECTION_BIND, ERR, 0x011B),
    (Method.CONNECTION_ATTEMPT, IND, 0x001C),
]

#: Where each method bit lands in the 14-bit type: M11..M7 C1 M6..M4 C0 M3..M0 (§5, figure 3).
METHOD_BIT_POSITIONS = [0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 13]


@pytest.mark.parametrize(("method", "cls", "wire"), KNOWN_TYPES)
def test_known_message_types_interleave_both_ways(
    method: Method, cls: MessageClass, wire: int
) -> None:
    """Each registered (method, class) maps to its published type value, and back."""
    assert message_type(method, cls) == wire
    assert split_type(wire) == (method, cls)
    encoded = encode(Message(method, cls, TEST_TRANSACTION_ID))
    assert int.from_bytes(encoded[:2], "big") == wire
    decoded = decode(encoded)
    assert (decoded.method, decoded.cls) == (method, cls)
    assert decoded.method is method


@pytest.mark.parametrize(("method", "cls"), list(itertools.product(Method, MessageClass)))
def test_every_method_and_class_round_trips(method: Method, cls: MessageClass) -> None:
    """Every method and class pair survives the interleaving and a wire round trip."""
    decoded = decode(encode(Message(method, cls, TEST_TRANSACTION_ID)))
    assert decoded.header == Header(method, cls, TEST_TRANSACTION_ID)


def test_method_and_class_bits_land_where_the_figure_puts_them() -> None:
    """Method bits skip positions 4 and 8, which hold the class bits C0 and C1 (§5)."""
    for bit, position in enumerate(METHOD_BIT_POSITIONS):
        assert message_type(1 << bit, REQ) == 1 << position
    assert message_type(0, IND) == 1 << 4
    assert message_type(0, OK) == 1 << 8
    assert message_type(0xFFF, ERR) == 0x3FFF


def test_all_types_are_distinct_and_invert() -> None:
    """The 14-bit type is a bijection of the 12-bit method and 2-bit class."""
    seen = set()
    for method in range(0x1000):
        for cls in MessageClass:
            wire = message_type(method, cls)
            assert wire < 0x4000
            assert split_type(wire) == (method, cls)
            seen.add(wire)
    assert len(seen) == 0x4000


def test_unregistered_method_decodes_as_plain_number() -> None:
    """A method with no registry entry still decodes (the core answers it with 400)."""
    decoded = decode(raw_stun(msg_type=message_type(0x0002, REQ)))
    assert decoded.method == 0x0002
    assert not isinstance(decoded.method, Method)


@pytest.mark.parametrize("size", range(HEADER_SIZE))
def test_shorter_than_header_is_rejected(size: int) -> None:
    """Fewer than 20 bytes cannot be a STUN message; there is no header to answer."""
    with pytest.raises(StunDecodeError) as info:
        decode(raw_stun()[:size])
    assert info.value.header is None


@pytest.mark.parametrize("msg_type", [0x4001, 0x8001, 0xC001])
def test_leading_bits_must_be_zero(msg_type: int) -> None:
    """The two most significant bits of every STUN message are zero (§5)."""
    with pytest.raises(StunDecodeError, match="leading bits") as info:
        decode(raw_stun(msg_type=msg_type))
    assert info.value.header is None


def test_wrong_magic_cookie_is_rejected() -> None:
    """The magic cookie must be 0x2112A442 (§5); RFC 3489 messages are not STUN here."""
    with pytest.raises(StunDecodeError, match="magic cookie") as info:
        decode(raw_stun([(AttributeType.SOFTWARE, b"x")], cookie=0x41424344))
    assert info.value.header is None


@pytest.mark.parametrize("length", [1, 2, 3, 5, 6, 7])
def test_length_not_multiple_of_four_is_rejected(length: int) -> None:
    """The length field is a multiple of 4 because attributes are padded (§5)."""
    data = raw_stun([(AttributeType.SOFTWARE, b"abcd")], length=length)
    with pytest.raises(StunDecodeError, match="multiple of 4") as info:
        decode(data)
    assert info.value.header == Header(Method.BINDING, REQ, TEST_TRANSACTION_ID)


@pytest.mark.parametrize("length", [0, 4, 12, 16])
def test_length_must_match_datagram_size(length: int) -> None:
    """The length field equals the message size minus the 20-byte header (§6.3)."""
    data = raw_stun([(AttributeType.SOFTWARE, b"abcd")], length=length)
    with pytest.raises(StunDecodeError, match="does not match") as info:
        decode(data)
    assert info.value.header is not None


def test_trailing_bytes_after_message_are_rejected() -> None:
    """A datagram longer than the message it carries is not a STUN message (§6.3)."""
    with pytest.raises(StunDecodeError, match="does not match"):
        decode(raw_stun() + bytes(4))


def test_message_larger_than_a_datagram_is_rejected() -> None:
    """Nothing larger than a UDP payload is accepted, whatever the length field says."""
    data = raw_stun([(AttributeType.DATA, bytes(0xFFFC - 4))])
    assert len(data) > MAX_MESSAGE_SIZE
    with pytest.raises(StunDecodeError, match="largest"):
        decode(data)


@pytest.mark.parametrize("claimed", [5, 8, 100, 0xFFFF])
def test_attribute_overrunning_the_message_is_rejected(claimed: int) -> None:
    """An attribute whose length runs past the end of the message is malformed (§14)."""
    data = bytearray(raw_stun([(AttributeType.SOFTWARE, b"abcd")]))
    data[HEADER_SIZE + 2 : HEADER_SIZE + 4] = claimed.to_bytes(2, "big")
    with pytest.raises(StunDecodeError, match="overruns") as info:
        decode(bytes(data))
    assert info.value.header == Header(Method.BINDING, REQ, TEST_TRANSACTION_ID)


def test_empty_message_decodes() -> None:
    """A header with no attributes is a whole message (a plain Binding request)."""
    decoded = decode(raw_stun())
    assert decoded == Message(Method.BINDING, REQ, TEST_TRANSACTION_ID)
    assert decoded.raw == raw_stun()


def test_transaction_id_must_be_twelve_bytes_to_encode() -> None:
    """The encoder refuses a transaction id that is not 96 bits (§5)."""
    with pytest.raises(ValueError, match="12 bytes"):
        encode(Message(Method.BINDING, REQ, b"short"))
