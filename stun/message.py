"""STUN messages: header, decoding, encoding, integrity and fingerprint.

Theory of operation (RFC 8489 §5, §6, §14.5-§14.7):

* Header: 2 zero bits, 14-bit message type, 16-bit length, magic cookie 0x2112A442, 96-bit
  transaction id. The type interleaves a 12-bit method M and a 2-bit class C as
  ``M11..M7 C1 M6..M4 C0 M3..M0``.
* The length counts the attributes after the header; it is a multiple of 4 and, for a datagram,
  equals the datagram size minus 20.
* Attributes are type, length, value, padded to 4 bytes. Padding content is ignored on receipt.
* MESSAGE-INTEGRITY covers the message up to the attribute, with the header length set as if the
  attribute were last. Only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT may follow it; anything else
  is ignored (§14.5). Only FINGERPRINT may follow MESSAGE-INTEGRITY-SHA256 (§14.6). FINGERPRINT
  is last (§14.7) and is checked here, while decoding.
* Verification is two-phase: :func:`decode` records where the integrity attributes sit, the
  caller looks up the key from USERNAME/REALM, then :func:`check_integrity` compares in constant
  time.

The decoder raises only :class:`~stun.errors.StunDecodeError`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from enum import IntEnum
from typing import TypeVar

import attrs

from stun.addresses import MAGIC_COOKIE, MAGIC_COOKIE_BYTES
from stun.attributes import (
    ATTRIBUTE_CLASSES,
    Attribute,
    AttributeType,
    AttributeValueError,
    Fingerprint,
    MessageIntegrity,
    MessageIntegritySha256,
    UnknownAttribute,
    is_comprehension_required,
)
from stun.errors import StunDecodeError

HEADER_SIZE = 20
FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7
#: Largest message accepted at all: a UDP datagram's payload. Streams set their own lower limit.
MAX_MESSAGE_SIZE = 65535

_HEADER = struct.Struct("!HHI12s")
_ATTR_HEADER = struct.Struct("!HH")
_U32 = struct.Struct("!I")

_MI = AttributeType.MESSAGE_INTEGRITY
_MI256 = AttributeType.MESSAGE_INTEGRITY_SHA256
_FP = AttributeType.FINGERPRINT


class Method(IntEnum):
    """STUN methods (IANA "STUN Methods" registry)."""

    BINDING = 0x001  # RFC 8489 §18.2
    ALLOCATE = 0x003  # RFC 8656 §17
    REFRESH = 0x004  # RFC 8656 §17
    SEND = 0x006  # RFC 8656 §17
    DATA = 0x007  # RFC 8656 §17
    CREATE_PERMISSION = 0x008  # RFC 8656 §17
    CHANNEL_BIND = 0x009  # RFC 8656 §17
    CONNECT = 0x00A  # RFC 6062 §6.1
    CONNECTION_BIND = 0x00B  # RFC 6062 §6.1
    CONNECTION_ATTEMPT = 0x00C  # RFC 6062 §6.1


class MessageClass(IntEnum):
    """The two class bits C1 C0 (RFC 8489 §5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Integrity(IntEnum):
    """Which MESSAGE-INTEGRITY attribute(s) the encoder appends."""

    SHA1 = 1
    SHA256 = 2
    BOTH = 3


_KNOWN_METHODS = {int(m): m for m in Method}


def message_type(method: int, cls: int) -> int:
    """Interleave a 12-bit method and a 2-bit class into the 14-bit type (RFC 8489 §5)."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def split_type(msg_type: int) -> tuple[int, MessageClass]:
    """Inverse of :func:`message_type`: (method, class)."""
    method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
    cls = ((msg_type >> 4) & 0b01) | ((msg_type >> 7) & 0b10)
    return _KNOWN_METHODS.get(method, method), MessageClass(cls)


@attrs.frozen
class Header:
    """The part of a message every reply needs: method, class, transaction id."""

    method: int
    cls: MessageClass
    transaction_id: bytes


A = TypeVar("A")


@attrs.frozen
class Message:
    """A STUN message: method, class, transaction id and attributes in wire order.

    ``raw``, ``mi_offset`` and ``mi256_offset`` are filled in by :func:`decode` so that
    :func:`check_integrity` can verify the bytes as received; they take no part in equality.
    """

    method: int
    cls: MessageClass
    transaction_id: bytes
    attributes: tuple[Attribute | UnknownAttribute, ...] = ()
    raw: bytes | None = attrs.field(default=None, eq=False, repr=False)
    mi_offset: int | None = attrs.field(default=None, eq=False, repr=False)
    mi256_offset: int | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def header(self) -> Header:
        """Method, class and transaction id."""
        return Header(self.method, self.cls, self.transaction_id)

    def get(self, kind: type[A]) -> A | None:
        """The first attribute of class ``kind`` (later duplicates are ignored, RFC 8489 §14)."""
        for attr in self.attributes:
            if type(attr) is kind:
                return attr  # type: ignore[return-value,unused-ignore]
        return None

    def has(self, kind: type) -> bool:
        """Whether an attribute of class ``kind`` is present."""
        return any(type(attr) is kind for attr in self.attributes)

    def unknown_required(self) -> tuple[int, ...]:
        """Comprehension-required types this codec does not know (for a 420, RFC 8489 §6.3.1)."""
        return tuple(
            attr.type
            for attr in self.attributes
            if type(attr) is UnknownAttribute and is_comprehension_required(attr.type)
        )


def decode(data: bytes) -> Message:
    """Decode one whole STUN message (a datagram or a frame cut from a stream).

    Checks the zero bits, the magic cookie, the length, every attribute's framing and value, the
    attribute order rules around integrity, and FINGERPRINT when present.
    """
    size = len(data)
    if size < HEADER_SIZE:
        raise StunDecodeError("shorter than a STUN header")
    if size > MAX_MESSAGE_SIZE:
        raise StunDecodeError("larger than the largest STUN message")
    msg_type, length, cookie, txid = _HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise StunDecodeError("the two leading bits are not zero")
    if cookie != MAGIC_COOKIE:
        raise StunDecodeError("no magic cookie (RFC 3489 messages are not supported)")
    method, cls = split_type(msg_type)
    header = Header(method, cls, txid)
    if length % 4:
        raise StunDecodeError("length is not a multiple of 4", header)
    if length + HEADER_SIZE != size:
        raise StunDecodeError("length field does not match the message size", header)

    xor_key = data[4:20]
    attributes: list[Attribute | UnknownAttribute] = []
    mi_offset: int | None = None
    mi256_offset: int | None = None
    offset = HEADER_SIZE
    # size and every offset are multiples of 4, so a whole attribute header always fits here.
    while offset < size:
        attr_type, attr_len = _ATTR_HEADER.unpack_from(data, offset)
        start = offset + 4
        end = start + attr_len
        padded_end = end + (-attr_len % 4)
        if padded_end > size:
            raise StunDecodeError(f"attribute {attr_type:#06x} overruns the message", header)
        if attr_type == _FP:
            if padded_end != size:
                raise StunDecodeError("FINGERPRINT is not the last attribute", header)
            if attr_len != 4:
                raise StunDecodeError("FINGERPRINT must be 4 bytes", header)
            expected = fingerprint(data[:offset])
            if _U32.unpack_from(data, start)[0] != expected:
                raise StunDecodeError("FINGERPRINT mismatch", header)
        elif mi256_offset is not None or (mi_offset is not None and attr_type != _MI256):
            offset = padded_end  # §14.5, §14.6: ignored after integrity
            continue
        if attr_type == _MI:
            mi_offset = offset
        elif attr_type == _MI256:
            mi256_offset = offset
        cls_ = ATTRIBUTE_CLASSES.get(attr_type)
        value = data[start:end]
        if cls_ is None:
            attributes.append(UnknownAttribute(attr_type, value))
        else:
            try:
                attributes.append(cls_.unpack(value, xor_key))
            except AttributeValueError as exc:
                raise StunDecodeError(str(exc), header) from exc
        offset = padded_end
    return Message(method, cls, txid, tuple(attributes), data, mi_offset, mi256_offset)


def _mac(kind: int, key: bytes, data: bytes | bytearray) -> bytes:
    digest = hashlib.sha1 if kind == _MI else hashlib.sha256
    return hmac.new(key, data, digest).digest()


def _with_length(data: bytes | bytearray, end: int, length: int) -> bytes:
    """``data[:end]`` with the header length field replaced by ``length``."""
    return bytes(data[:2]) + length.to_bytes(2, "big") + bytes(data[4:end])


def check_integrity(message: Message, key: bytes) -> bool:
    """Verify the decoded message's integrity with ``key`` in constant time.

    MESSAGE-INTEGRITY-SHA256 is checked when present (RFC 8489 §9.2.4 prefers it), otherwise
    MESSAGE-INTEGRITY. False when the message carries neither or was not decoded from bytes.
    """
    raw = message.raw
    if raw is None:
        return False
    if message.mi256_offset is not None:
        offset, kind = message.mi256_offset, _MI256
    elif message.mi_offset is not None:
        offset, kind = message.mi_offset, _MI
    else:
        return False
    value_len = _ATTR_HEADER.unpack_from(raw, offset)[1]
    received = raw[offset + 4 : offset + 4 + value_len]
    covered = _with_length(raw, offset, offset - HEADER_SIZE + 4 + value_len)
    return hmac.compare_digest(_mac(kind, key, covered)[:value_len], received)


def _append(buf: bytearray, attr_type: int, value: bytes, pad: bytes) -> None:
    buf += _ATTR_HEADER.pack(attr_type, len(value))
    buf += value
    buf += pad * (-len(value) % 4)


def _append_mac(buf: bytearray, kind: int, key: bytes, size: int) -> None:
    covered = _with_length(buf, len(buf), len(buf) - HEADER_SIZE + 4 + size)
    _append(buf, kind, _mac(kind, key, covered)[:size], b"\x00")


def _append_default_macs(buf: bytearray, key: bytes, integrity: Integrity) -> None:
    if integrity & Integrity.SHA1:
        _append_mac(buf, _MI, key, 20)
    if integrity & Integrity.SHA256:
        _append_mac(buf, _MI256, key, 32)


def fingerprint(covered: bytes | bytearray) -> int:
    """The FINGERPRINT value of the message bytes before it (RFC 8489 §14.7): CRC-32 XOR
    0x5354554e; the header's length must already count the FINGERPRINT attribute."""
    return (zlib.crc32(covered) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def _append_fingerprint(buf: bytearray) -> None:
    struct.pack_into("!H", buf, 2, len(buf) - HEADER_SIZE + 8)
    _append(buf, _FP, _U32.pack(fingerprint(buf)), b"\x00")


def encode(
    message: Message,
    *,
    key: bytes | None = None,
    integrity: Integrity = Integrity.SHA1,
    fingerprint: bool = False,
    pad: bytes = b"\x00",
) -> bytes:
    """Encode ``message``, computing integrity and fingerprint.

    MessageIntegrity / MessageIntegritySha256 / Fingerprint attributes inside
    ``message.attributes`` are computed where they stand (a SHA-256 one keeps its value's length
    as truncation); with ``key`` and none present, ``integrity`` says which to append; with
    ``fingerprint`` and none present, FINGERPRINT is appended last. ``pad`` is the padding byte
    (any value is legal, RFC 8489 §14; RFC 5769 uses spaces).
    """
    txid = message.transaction_id
    if len(txid) != 12:
        raise ValueError("transaction id must be 12 bytes")
    xor_key = MAGIC_COOKIE_BYTES + txid
    buf = bytearray(_HEADER.pack(message_type(message.method, message.cls), 0, MAGIC_COOKIE, txid))
    has_mac = has_fp = False
    for attr in message.attributes:
        kind = type(attr)
        if kind is MessageIntegrity or kind is MessageIntegritySha256:
            if key is None:
                raise ValueError("message has an integrity attribute but no key was given")
            _append_mac(buf, attr.TYPE, key, len(attr.pack(xor_key)))
            has_mac = True
        elif kind is Fingerprint:
            if key is not None and not has_mac:
                _append_default_macs(buf, key, integrity)  # §14.7: FINGERPRINT stays last
                has_mac = True
            _append_fingerprint(buf)
            has_fp = True
        else:
            _append(buf, attr.TYPE, attr.pack(xor_key), pad)
    if key is not None and not has_mac:
        _append_default_macs(buf, key, integrity)
    if fingerprint and not has_fp:
        _append_fingerprint(buf)
    struct.pack_into("!H", buf, 2, len(buf) - HEADER_SIZE)
    return bytes(buf)
