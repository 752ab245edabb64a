"""RFC 8489 §14.5 MESSAGE-INTEGRITY, §14.6 MESSAGE-INTEGRITY-SHA256, §14.7 FINGERPRINT."""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib

import attrs
import pytest

from stun import (
    Integrity,
    Message,
    MessageClass,
    Method,
    StunDecodeError,
    check_integrity,
    decode,
    encode,
)
from stun import attributes as at
from stun.attributes import AttributeType as T
from stun.message import HEADER_SIZE
from tests.conftest import TEST_TRANSACTION_ID

KEY = b"VOkJxbRl1RmTxUk/WvJxBt"
BASE_ATTRIBUTES = (at.Username("evtj:h6vY"), at.Software("turnd tests"))


def _message(*attributes: object) -> Message:
    return Message(
        Method.ALLOCATE,
        MessageClass.REQUEST,
        TEST_TRANSACTION_ID,
        tuple(attributes) or BASE_ATTRIBUTES,  # type: ignore[arg-type]
    )


def _offsets(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, type, value length) of each attribute, walking the raw bytes."""
    found, offset = [], HEADER_SIZE
    while offset < len(data):
        attr_type, length = struct.unpack_from("!HH", data, offset)
        found.append((offset, attr_type, length))
        offset += 4 + length + (-length % 4)
    return found


def _mac_as_rfc_says(data: bytes, offset: int, size: int, digest: str) -> bytes:
    """HMAC over the message up to the attribute, length field as if it were last (§14.5)."""
    covered = data[:2] + (offset - HEADER_SIZE + 4 + size).to_bytes(2, "big") + data[4:offset]
    return hmac.new(KEY, covered, digest).digest()[:size]


def _append_raw(data: bytes, *attributes: tuple[int, bytes], fingerprint: bool = False) -> bytes:
    """Append attributes after whatever ``data`` ends with, fixing the length (and a
    FINGERPRINT computed as §14.7 says)."""
    buf = bytearray(data)
    for attr_type, value in attributes:
        buf += struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)
    if fingerprint:
        struct.pack_into("!H", buf, 2, len(buf) - HEADER_SIZE + 8)
        crc = zlib.crc32(buf) ^ 0x5354554E
        buf += struct.pack("!HHI", T.FINGERPRINT, 4, crc)
    struct.pack_into("!H", buf, 2, len(buf) - HEADER_SIZE)
    return bytes(buf)


def test_message_integrity_is_hmac_sha1_over_preceding_bytes() -> None:
    """MESSAGE-INTEGRITY is HMAC-SHA1 of the message up to it, length set as if it were last."""
    data = encode(_message(), key=KEY)
    offset, attr_type, size = _offsets(data)[-1]
    assert (attr_type, size) == (T.MESSAGE_INTEGRITY, 20)
    assert data[offset + 4 :] == _mac_as_rfc_says(data, offset, 20, "sha1")
    decoded = decode(data)
    assert check_integrity(decoded, KEY)
    assert not check_integrity(decoded, KEY + b"x")


def test_sha256_integrity_alone() -> None:
    """Integrity.SHA256 appends only MESSAGE-INTEGRITY-SHA256, 32 bytes, which verifies."""
    data = encode(_message(), key=KEY, integrity=Integrity.SHA256)
    types = [t for _, t, _ in _offsets(data)]
    assert T.MESSAGE_INTEGRITY not in types
    offset, attr_type, size = _offsets(data)[-1]
    assert (attr_type, size) == (T.MESSAGE_INTEGRITY_SHA256, 32)
    assert data[offset + 4 :] == _mac_as_rfc_says(data, offset, 32, "sha256")
    assert check_integrity(decode(data), KEY)
    assert not check_integrity(decode(data), b"wrong")


@pytest.mark.parametrize("size", [16, 20, 24, 28, 32])
def test_sha256_truncation_computes_and_verifies(size: int) -> None:
    """MESSAGE-INTEGRITY-SHA256 may be truncated to 16-32 bytes in steps of 4 (§14.6)."""
    message = _message(*BASE_ATTRIBUTES, at.MessageIntegritySha256(bytes(size)))
    data = encode(message, key=KEY)
    offset, attr_type, length = _offsets(data)[-1]
    assert (attr_type, length) == (T.MESSAGE_INTEGRITY_SHA256, size)
    assert data[offset + 4 :] == _mac_as_rfc_says(data, offset, size, "sha256")
    decoded = decode(data)
    assert check_integrity(decoded, KEY)
    assert not check_integrity(decoded, KEY[:-1])


def test_both_integrities_and_fingerprint_are_in_order_and_verify() -> None:
    """Integrity.BOTH puts MI, then MI-SHA256, then FINGERPRINT last; both MACs verify."""
    data = encode(_message(), key=KEY, integrity=Integrity.BOTH, fingerprint=True)
    types = [t for _, t, _ in _offsets(data)]
    assert types[-3:] == [T.MESSAGE_INTEGRITY, T.MESSAGE_INTEGRITY_SHA256, T.FINGERPRINT]
    decoded = decode(data)
    assert [type(a) for a in decoded.attributes[-3:]] == [
        at.MessageIntegrity,
        at.MessageIntegritySha256,
        at.Fingerprint,
    ]
    assert check_integrity(decoded, KEY)  # the SHA-256 one
    assert check_integrity(attrs.evolve(decoded, mi256_offset=None), KEY)  # the SHA-1 one
    assert not check_integrity(decoded, b"wrong")


def test_sha256_is_the_one_checked_when_both_are_present() -> None:
    """With both MACs present the SHA-256 one decides (RFC 8489 §9.2.4)."""
    data = bytearray(encode(_message(), key=KEY, integrity=Integrity.BOTH))
    data[-1] ^= 1  # spoil the last byte of MI-SHA256; MI is untouched
    decoded = decode(bytes(data))
    assert not check_integrity(decoded, KEY)
    assert check_integrity(attrs.evolve(decoded, mi256_offset=None), KEY)


def test_any_change_before_integrity_fails_verification() -> None:
    """MESSAGE-INTEGRITY covers the header and every attribute before it."""
    data = encode(_message(), key=KEY)
    mi_offset = _offsets(data)[-1][0]
    for position in [0, 1, *range(8, mi_offset)]:  # type, cookie-less header, attributes
        tampered = bytearray(data)
        tampered[position] ^= 0x01
        try:
            decoded = decode(bytes(tampered))
        except StunDecodeError:
            continue
        assert not check_integrity(decoded, KEY), position


def _signed_then_appended(integrity: Integrity, *appended: tuple[int, bytes]) -> Message:
    """The test message signed with ``integrity``, ``appended`` after it and a FINGERPRINT
    last, decoded."""
    signed = encode(_message(), key=KEY, integrity=integrity)
    return decode(_append_raw(signed, *appended, fingerprint=True))


def _kinds(message: Message) -> list[type]:
    return [type(a) for a in message.attributes]


def test_attributes_after_integrity_are_ignored() -> None:
    """Attributes after MESSAGE-INTEGRITY other than MI-SHA256 and FINGERPRINT are ignored,
    and do not spoil the MAC (§14.5)."""
    decoded = _signed_then_appended(
        Integrity.SHA1,
        (T.SOFTWARE, b"appended"),
        (T.MESSAGE_INTEGRITY, bytes(20)),
        (0x0055, b"unknown but ignored"),
        (T.LIFETIME, b"bad"),  # malformed, but ignored, so no error
    )
    assert _kinds(decoded) == [at.Username, at.Software, at.MessageIntegrity, at.Fingerprint]
    assert decoded.unknown_required() == ()
    assert check_integrity(decoded, KEY)


def test_only_fingerprint_follows_sha256_integrity() -> None:
    """After MESSAGE-INTEGRITY-SHA256 everything but FINGERPRINT is ignored, even MI (§14.6)."""
    decoded = _signed_then_appended(
        Integrity.SHA256,
        (T.MESSAGE_INTEGRITY, bytes(20)),
        (T.MESSAGE_INTEGRITY_SHA256, bytes(32)),
        (T.USERNAME, b"other"),
    )
    kinds = [at.Username, at.Software, at.MessageIntegritySha256, at.Fingerprint]
    assert _kinds(decoded) == kinds
    assert decoded.get(at.Username) == at.Username("evtj:h6vY")
    assert check_integrity(decoded, KEY)


def test_message_without_integrity_does_not_verify() -> None:
    """check_integrity is False without an integrity attribute or without received bytes."""
    assert not check_integrity(decode(encode(_message())), KEY)
    assert not check_integrity(_message(*BASE_ATTRIBUTES, at.MessageIntegrity()), KEY)


def test_integrity_attribute_without_key_is_refused() -> None:
    """The encoder computes MACs itself, so it needs the key."""
    for attr in (at.MessageIntegrity(), at.MessageIntegritySha256()):
        with pytest.raises(ValueError, match="no key"):
            encode(_message(*BASE_ATTRIBUTES, attr))


def test_explicit_integrity_is_computed_where_it_stands() -> None:
    """An integrity placeholder is computed in place and not added again."""
    message = _message(at.Username("u"), at.MessageIntegrity(), at.Fingerprint())
    data = encode(message, key=KEY, fingerprint=True, integrity=Integrity.BOTH)
    assert [t for _, t, _ in _offsets(data)] == [T.USERNAME, T.MESSAGE_INTEGRITY, T.FINGERPRINT]
    assert check_integrity(decode(data), KEY)


def test_fingerprint_placeholder_stays_last_when_integrity_is_added() -> None:
    """With a key and a FINGERPRINT placeholder, the MACs go before it: FINGERPRINT is last
    (§14.7)."""
    message = _message(*BASE_ATTRIBUTES, at.Fingerprint())
    data = encode(message, key=KEY, integrity=Integrity.BOTH)
    assert [t for _, t, _ in _offsets(data)][-3:] == [
        T.MESSAGE_INTEGRITY,
        T.MESSAGE_INTEGRITY_SHA256,
        T.FINGERPRINT,
    ]
    assert check_integrity(decode(data), KEY)


def test_fingerprint_is_crc32_xor_stun() -> None:
    """FINGERPRINT is CRC-32 of the message up to it XOR 0x5354554e (§14.7)."""
    data = encode(_message(), fingerprint=True)
    offset, attr_type, size = _offsets(data)[-1]
    assert (attr_type, size) == (T.FINGERPRINT, 4)
    value = int.from_bytes(data[offset + 4 :], "big")
    assert value == zlib.crc32(data[:offset]) ^ 0x5354554E
    assert decode(data).get(at.Fingerprint) == at.Fingerprint(value)
    assert at.Fingerprint(value).pack(b"") == data[offset + 4 :]
    assert decode(encode(_message(*BASE_ATTRIBUTES, at.Fingerprint()))) == decode(data)


def test_fingerprint_mismatch_is_rejected() -> None:
    """A FINGERPRINT that does not match the bytes makes the message invalid (§14.7)."""
    data = bytearray(encode(_message(), fingerprint=True))
    data[-1] ^= 0x80
    with pytest.raises(StunDecodeError, match="mismatch") as info:
        decode(bytes(data))
    assert info.value.header is not None


def test_fingerprint_must_be_last() -> None:
    """FINGERPRINT followed by any attribute is malformed (§14.7)."""
    data = _append_raw(encode(_message(), fingerprint=True), (T.SOFTWARE, b"late"))
    with pytest.raises(StunDecodeError, match="last"):
        decode(data)


def test_fingerprint_change_in_any_byte_is_detected() -> None:
    """Any single-bit change in a fingerprinted message is rejected, except in FINGERPRINT's
    own type field (which turns it into an attribute ignored after MESSAGE-INTEGRITY)."""
    data = encode(_message(), key=KEY, fingerprint=True)
    fp_offset = _offsets(data)[-1][0]
    for position in [*range(fp_offset), *range(fp_offset + 2, len(data))]:
        tampered = bytearray(data)
        tampered[position] ^= 0x04
        with pytest.raises(StunDecodeError):
            decode(bytes(tampered))


def test_long_term_style_key_works_like_any_key() -> None:
    """The MAC takes any key bytes: a 16-byte MD5 or 32-byte SHA-256 long-term key."""
    for key in (hashlib.md5(b"u:r:p").digest(), hashlib.sha256(b"u:r:p").digest()):
        decoded = decode(encode(_message(), key=key, integrity=Integrity.BOTH))
        assert check_integrity(decoded, key)
        assert not check_integrity(decoded, KEY)
