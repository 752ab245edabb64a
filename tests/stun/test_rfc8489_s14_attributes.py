"""RFC 8489 §14-§15, RFC 8656 §18, RFC 6062 §6.2, RFC 5780 §7, RFC 8445 §16.1: attribute values.

One table of attribute values drives the round trip; one table of malformed values drives the
rejections. Integrity and fingerprint attributes are computed by the encoder and have their own
module (test_rfc8489_s14_integrity.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from stun import (
    Address,
    AddressFamily,
    Message,
    MessageClass,
    Method,
    StunDecodeError,
    decode,
    encode,
    make_address,
)
from stun import attributes as at
from stun.addresses import MAGIC_COOKIE_BYTES, encode_address
from stun.attributes import AttributeType as T
from stun.message import HEADER_SIZE
from tests.conftest import TEST_TRANSACTION_ID, raw_stun

V4 = Address("192.0.2.1", 32853)
V6 = Address("2001:db8:1234:5678:11:2233:4455:6677", 3478)

ADDRESS_CLASSES = [
    at.MappedAddress,
    at.XorMappedAddress,
    at.XorPeerAddress,
    at.XorRelayedAddress,
    at.AlternateServer,
    at.ResponseOrigin,
    at.OtherAddress,
]

#: One or more values per attribute class: (test id, attribute).
ROUND_TRIP: list[Any] = [
    *(
        pytest.param(cls(addr), id=f"{cls.__name__}-{fam}")
        for cls in ADDRESS_CLASSES
        for fam, addr in (("v4", V4), ("v6", V6))
    ),
    pytest.param(at.Username("evtj:h6vY"), id="Username"),
    pytest.param(at.Username("\u30de\u30c8\u30ea\u30c3\u30af\u30b9"), id="Username-utf8"),
    pytest.param(at.Realm("example.org"), id="Realm"),
    pytest.param(at.Nonce("f//499k954d6OL34oL9FSTvy64sA"), id="Nonce"),
    pytest.param(at.Software("turnd 0.1"), id="Software"),
    pytest.param(at.AlternateDomain("turn.example.org"), id="AlternateDomain"),
    pytest.param(at.Userhash(bytes(range(32))), id="Userhash"),
    pytest.param(
        at.PasswordAlgorithms(
            (
                at.PasswordAlgorithmEntry(1),
                at.PasswordAlgorithmEntry(2),
                at.PasswordAlgorithmEntry(0x7777, b"abc"),
            )
        ),
        id="PasswordAlgorithms",
    ),
    pytest.param(at.PasswordAlgorithm(2), id="PasswordAlgorithm"),
    pytest.param(at.PasswordAlgorithm(9, b"param"), id="PasswordAlgorithm-params"),
    pytest.param(at.ErrorCode(401, "Unauthenticated"), id="ErrorCode"),
    pytest.param(at.ErrorCode(699, "\u00e9t\u00e9"), id="ErrorCode-699-utf8"),
    pytest.param(at.ErrorCode(300), id="ErrorCode-no-reason"),
    pytest.param(at.AddressErrorCode(AddressFamily.IPV6, 440, "no v6"), id="AddressErrorCode"),
    pytest.param(at.UnknownAttributes((0x0001, 0x00AA, 0x7FFF)), id="UnknownAttributes"),
    pytest.param(at.UnknownAttributes(()), id="UnknownAttributes-empty"),
    pytest.param(at.ChannelNumber(0x4000), id="ChannelNumber"),
    pytest.param(at.Lifetime(600), id="Lifetime"),
    pytest.param(at.Data(b"\x00\x01payload"), id="Data"),
    pytest.param(at.Data(b""), id="Data-empty"),
    pytest.param(at.RequestedAddressFamily(AddressFamily.IPV6), id="RequestedAddressFamily"),
    pytest.param(at.AdditionalAddressFamily(AddressFamily.IPV6), id="AdditionalAddressFamily"),
    pytest.param(at.EvenPort(reserve=True), id="EvenPort-R"),
    pytest.param(at.EvenPort(reserve=False), id="EvenPort"),
    pytest.param(at.RequestedTransport(17), id="RequestedTransport"),
    pytest.param(at.DontFragment(), id="DontFragment"),
    pytest.param(at.ReservationToken(b"token-08"), id="ReservationToken"),
    pytest.param(at.Icmp(3, 4, 1500), id="Icmp"),
    pytest.param(at.ConnectionId(0xDEADBEEF), id="ConnectionId"),
    pytest.param(at.ChangeRequest(0x06), id="ChangeRequest"),
    pytest.param(at.ResponsePort(3478), id="ResponsePort"),
    pytest.param(at.Padding(bytes(7)), id="Padding"),
    pytest.param(at.Priority(1845494271), id="Priority"),
    pytest.param(at.UseCandidate(), id="UseCandidate"),
    pytest.param(at.IceControlled(2**64 - 1), id="IceControlled"),
    pytest.param(at.IceControlling(1), id="IceControlling"),
]

#: Computed by the encoder, checked in test_rfc8489_s14_integrity.py.
COMPUTED = {at.MessageIntegrity, at.MessageIntegritySha256, at.Fingerprint}

#: Value sizes of the fixed-size attributes (EVEN-PORT and MI-SHA256 have their own rules).
FIXED_SIZES: dict[type, int] = {
    at.Userhash: 32,
    at.MessageIntegrity: 20,
    at.Fingerprint: 4,
    at.ChannelNumber: 4,
    at.Lifetime: 4,
    at.RequestedAddressFamily: 4,
    at.AdditionalAddressFamily: 4,
    at.RequestedTransport: 4,
    at.DontFragment: 0,
    at.ReservationToken: 8,
    at.Icmp: 8,
    at.ConnectionId: 4,
    at.ChangeRequest: 4,
    at.ResponsePort: 4,
    at.Priority: 4,
    at.UseCandidate: 0,
    at.IceControlled: 8,
    at.IceControlling: 8,
}


def _wrong_sizes() -> list[Any]:
    params = []
    for cls, size in FIXED_SIZES.items():
        for bad in sorted({0, size - 1, size + 1, size + 4} - {size, -1}):
            params.append(pytest.param(cls.TYPE, bytes(bad), id=f"{cls.__name__}-{bad}"))
    params += [pytest.param(T.EVEN_PORT, bytes(n), id=f"EvenPort-{n}") for n in (0, 2, 3, 5, 8)]
    params += [
        pytest.param(T.MESSAGE_INTEGRITY_SHA256, bytes(n), id=f"MI-SHA256-{n}")
        for n in (0, 12, 15, 17, 30, 36)
    ]
    for cls in ADDRESS_CLASSES:
        for family, size in (
            (1, 0),
            (1, 3),
            (1, 7),
            (1, 9),
            (2, 8),
            (2, 19),
            (2, 21),
            (0, 8),
            (3, 20),
        ):
            value = bytes((0, family)) + bytes(max(size - 2, 0)) if size >= 2 else bytes(size)
            params.append(pytest.param(cls.TYPE, value, id=f"{cls.__name__}-family{family}-{size}"))
    return params


#: Malformed values of variable-size attributes: (type, value).
MALFORMED: list[Any] = [
    pytest.param(T.USERNAME, b"u" * 513, id="Username-513-bytes"),
    pytest.param(T.USERNAME, b"\xff\xfe", id="Username-not-utf8"),
    pytest.param(T.REALM, b"r" * 764, id="Realm-764-bytes"),
    pytest.param(T.NONCE, b"n" * 764, id="Nonce-764-bytes"),
    pytest.param(T.SOFTWARE, b"s" * 764, id="Software-764-bytes"),
    pytest.param(T.SOFTWARE, b"\xc3", id="Software-truncated-utf8"),
    pytest.param(T.ALTERNATE_DOMAIN, b"d" * 256, id="AlternateDomain-256-bytes"),
    pytest.param(T.ERROR_CODE, b"\x00\x00\x04", id="ErrorCode-short"),
    pytest.param(T.ERROR_CODE, b"\x00\x00\x02\x00", id="ErrorCode-class-2"),
    pytest.param(T.ERROR_CODE, b"\x00\x00\x07\x00", id="ErrorCode-class-7"),
    pytest.param(T.ERROR_CODE, b"\x00\x00\x04\x64", id="ErrorCode-number-100"),
    pytest.param(T.ERROR_CODE, b"\x00\x00\x04\x01\xff", id="ErrorCode-reason-not-utf8"),
    pytest.param(T.ADDRESS_ERROR_CODE, b"\x01\x00", id="AddressErrorCode-short"),
    pytest.param(T.UNKNOWN_ATTRIBUTES, b"\x00\x01\x00", id="UnknownAttributes-odd"),
    pytest.param(T.PASSWORD_ALGORITHMS, b"\x00\x01", id="PasswordAlgorithms-truncated"),
    pytest.param(
        T.PASSWORD_ALGORITHMS, b"\x00\x01\x00\x00\x00\x02", id="PasswordAlgorithms-half-entry"
    ),
    pytest.param(
        T.PASSWORD_ALGORITHMS, b"\x00\x01\x00\x08abcd", id="PasswordAlgorithms-params-overrun"
    ),
    pytest.param(T.PASSWORD_ALGORITHM, b"", id="PasswordAlgorithm-none"),
    pytest.param(
        T.PASSWORD_ALGORITHM, b"\x00\x01\x00\x00\x00\x02\x00\x00", id="PasswordAlgorithm-two"
    ),
]


def _round_trip(attr: Any) -> Message:
    message = Message(Method.ALLOCATE, MessageClass.REQUEST, TEST_TRANSACTION_ID, (attr,))
    data = encode(message)
    assert int.from_bytes(data[HEADER_SIZE : HEADER_SIZE + 2], "big") == attr.TYPE
    decoded = decode(data)
    assert decoded == message
    return decoded


def test_round_trip_table_covers_every_attribute_class() -> None:
    """Every class of ATTRIBUTE_CLASSES has a row (or is computed by the encoder)."""
    covered = {type(p.values[0]) for p in ROUND_TRIP} | COMPUTED
    assert covered == set(at.ATTRIBUTE_CLASSES.values())


def test_malformed_table_covers_every_address_and_fixed_size_class() -> None:
    """Every fixed-size attribute class has wrong-size rows."""
    fixed = {cls for cls in at.ATTRIBUTE_CLASSES.values() if cls in FIXED_SIZES}
    assert fixed == set(FIXED_SIZES)
    assert set(ADDRESS_CLASSES) == {
        cls for cls in at.ATTRIBUTE_CLASSES.values() if "address" in cls.__annotations__
    }


@pytest.mark.parametrize("attr", ROUND_TRIP)
def test_attribute_round_trips(attr: Any) -> None:
    """Encoding an attribute in a message and decoding it gives back an equal attribute."""
    decoded = _round_trip(attr)
    assert decoded.get(type(attr)) == attr


@pytest.mark.parametrize(("attr_type", "value"), [*_wrong_sizes(), *MALFORMED])
def test_malformed_value_is_rejected_with_header(attr_type: int, value: bytes) -> None:
    """A malformed attribute value makes the message malformed; the header is still reported
    so a request can be answered with 400 (RFC 8489 §6.3.1)."""
    with pytest.raises(StunDecodeError) as info:
        decode(raw_stun([(attr_type, value)]))
    header = info.value.header
    assert header is not None
    assert (header.method, header.cls, header.transaction_id) == (
        Method.BINDING,
        MessageClass.REQUEST,
        TEST_TRANSACTION_ID,
    )
    assert info.value.reason == str(info.value)


@pytest.mark.parametrize(
    ("attr_type", "size"),
    [
        (T.USERNAME, 512),
        (T.REALM, 763),
        (T.NONCE, 763),
        (T.SOFTWARE, 763),
        (T.ALTERNATE_DOMAIN, 255),
    ],
)
def test_text_at_its_size_limit_is_accepted(attr_type: int, size: int) -> None:
    """Text attributes may be as long as their limit (§14.3, §14.9, §14.10, §14.14, §14.16)."""
    decoded = decode(raw_stun([(attr_type, b"x" * size)]))
    assert len(decoded.attributes[0].value) == size


def test_address_xor_uses_cookie_and_transaction_id() -> None:
    """XOR addresses mix the port and IPv4 address with the cookie, IPv6 also with the
    transaction id (§14.2); the plain forms are left as they are (§14.1)."""
    key = MAGIC_COOKIE_BYTES + TEST_TRANSACTION_ID
    plain6 = encode_address(V6, None)
    xored6 = encode_address(V6, key)
    assert plain6[:2] == xored6[:2] == b"\x00\x02"
    assert int.from_bytes(xored6[2:4], "big") == V6.port ^ 0x2112
    assert bytes(a ^ b for a, b in zip(plain6[4:], xored6[4:], strict=True)) == key
    xored4 = encode_address(V4, key)
    assert bytes(a ^ b for a, b in zip(encode_address(V4, None)[4:], xored4[4:], strict=True)) == (
        MAGIC_COOKIE_BYTES
    )


def test_address_reserved_byte_is_ignored() -> None:
    """The first byte of an address value is reserved and ignored by receivers (§14.1)."""
    value = b"\xff" + encode_address(V4, None)[1:]
    assert decode(raw_stun([(T.MAPPED_ADDRESS, value)])).get(at.MappedAddress) == (
        at.MappedAddress(V4)
    )


def test_reserved_bits_of_numbers_are_ignored() -> None:
    """RFFU bits of CHANNEL-NUMBER and ERROR-CODE are ignored on receipt (§14.8, RFC 8656
    §18.1), and EVEN-PORT keeps only its R bit (§18.7)."""
    decoded = decode(
        raw_stun(
            [
                (T.CHANNEL_NUMBER, b"\x40\x01\xff\xff"),
                (T.ERROR_CODE, b"\xff\xff\xfc\x01Bad"),
                (T.EVEN_PORT, b"\x7f"),
                (T.EVEN_PORT, b"\xff\x00\x00\x00"),
            ]
        )
    )
    assert decoded.attributes == (
        at.ChannelNumber(0x4001),
        at.ErrorCode(401, "Bad"),
        at.EvenPort(False),
        at.EvenPort(True),
    )


def test_padding_content_is_ignored() -> None:
    """Padding bytes may hold anything and are ignored (§14)."""
    decoded = decode(raw_stun([(T.USERNAME, b"abcde"), (T.LIFETIME, bytes(4))], pad=b"\xee"))
    assert decoded.attributes == (at.Username("abcde"), at.Lifetime(0))


def test_password_algorithm_parameters_are_padded() -> None:
    """PASSWORD-ALGORITHMS entries pad their parameters to 4 bytes (§14.11)."""
    attr = at.PasswordAlgorithms(
        (at.PasswordAlgorithmEntry(1, b"abcde"), at.PasswordAlgorithmEntry(2))
    )
    value = attr.pack(b"")
    assert len(value) == 4 + 8 + 4
    assert at.PasswordAlgorithms.unpack(value, b"") == attr


def test_unknown_attributes_are_kept_with_their_value() -> None:
    """Attributes the codec does not know are kept, in order, with their raw value (§15)."""
    decoded = decode(raw_stun([(0x00AA, b"abc"), (T.USERNAME, b"u"), (0xC057, b"\x00\x01")]))
    assert decoded.attributes == (
        at.UnknownAttribute(0x00AA, b"abc"),
        at.Username("u"),
        at.UnknownAttribute(0xC057, b"\x00\x01"),
    )
    assert decoded.attributes[0].TYPE == 0x00AA


def test_unknown_comprehension_required_are_reported() -> None:
    """Unknown types 0x0000-0x7FFF are listed for a 420; unknown 0x8000-0xFFFF are not (§15)."""
    decoded = decode(
        raw_stun([(0x7FFF, b""), (0x8FFF, b""), (0x0000, b"x"), (0xFFFF, b""), (0x0002, b"")])
    )
    assert decoded.unknown_required() == (0x7FFF, 0x0000, 0x0002)
    assert decode(raw_stun([(0x802F, b"http://origin/")])).unknown_required() == ()


def test_comprehension_range_boundary() -> None:
    """0x7FFF is comprehension-required and 0x8000 comprehension-optional (§15)."""
    assert at.is_comprehension_required(0x0000)
    assert at.is_comprehension_required(0x7FFF)
    assert not at.is_comprehension_required(0x8000)
    assert not at.is_comprehension_required(0xFFFF)


def test_unknown_attribute_is_encoded_as_given() -> None:
    """An UnknownAttribute re-encodes with its own type and value (a proxy can pass it on)."""
    message = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        TEST_TRANSACTION_ID,
        (at.UnknownAttribute(0x8123, b"hello"),),
    )
    assert encode(message) == raw_stun([(0x8123, b"hello")])
    assert decode(encode(message)) == message


def test_get_returns_first_of_duplicates_and_has_tells_presence() -> None:
    """Of repeated attributes the first one counts (§14); absent ones are None."""
    decoded = decode(raw_stun([(T.LIFETIME, b"\x00\x00\x00\x01"), (T.LIFETIME, bytes(4))]))
    assert decoded.get(at.Lifetime) == at.Lifetime(1)
    assert decoded.has(at.Lifetime)
    assert decoded.get(at.Username) is None
    assert not decoded.has(at.Username)


def test_make_address_canonicalises() -> None:
    """Addresses are canonical IP text: IPv6 compressed and lower case, scope id dropped."""
    assert make_address("2001:DB8:0::0001", 5) == Address("2001:db8::1", 5)
    assert make_address("fe80::1%eth0", 6) == Address("fe80::1", 6)
    assert make_address("192.0.2.1", 7) == Address("192.0.2.1", 7)
    assert make_address("192.0.2.1", 7) == ("192.0.2.1", 7)


def test_address_family_and_text() -> None:
    """An address knows its family and prints as host:port, IPv6 in brackets."""
    assert V4.family is AddressFamily.IPV4
    assert V6.family is AddressFamily.IPV6
    assert str(V4) == "192.0.2.1:32853"
    assert str(Address("::1", 3478)) == "[::1]:3478"
