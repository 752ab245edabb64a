"""STUN and TURN attributes: one frozen class per attribute, one table mapping type to class.

Theory of operation: every attribute class knows its wire type (``TYPE``) and converts its value
both ways (``unpack`` from the value bytes, ``pack`` to them). ``ATTRIBUTE_CLASSES`` is the single
table the message codec consults; a type missing from it decodes to :class:`UnknownAttribute`,
which keeps the raw value so a server can answer 420 for comprehension-required types
(RFC 8489 §15: types 0x0000-0x7FFF). Malformed values raise :class:`AttributeValueError`, which the
message decoder turns into its own error.

Sources: RFC 8489 §14 (STUN), RFC 8656 §18 (TURN), RFC 6062 §6.2 (CONNECTION-ID), RFC 5780 §7
(NAT behaviour discovery attributes a server may see), RFC 8445 §16.1 (ICE attributes that travel
through the same codec).
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any, ClassVar, Protocol, TypeVar

import attrs

from stun.addresses import Address, AddressDecodeError, decode_address, encode_address


class AttributeType(IntEnum):
    """Attribute type numbers (IANA "STUN Attributes" registry)."""

    MAPPED_ADDRESS = 0x0001  # RFC 8489 §14.1
    CHANGE_REQUEST = 0x0003  # RFC 5780 §7.2
    USERNAME = 0x0006  # RFC 8489 §14.3
    MESSAGE_INTEGRITY = 0x0008  # RFC 8489 §14.5
    ERROR_CODE = 0x0009  # RFC 8489 §14.8
    UNKNOWN_ATTRIBUTES = 0x000A  # RFC 8489 §14.13
    CHANNEL_NUMBER = 0x000C  # RFC 8656 §18.1
    LIFETIME = 0x000D  # RFC 8656 §18.2
    XOR_PEER_ADDRESS = 0x0012  # RFC 8656 §18.3
    DATA = 0x0013  # RFC 8656 §18.4
    REALM = 0x0014  # RFC 8489 §14.9
    NONCE = 0x0015  # RFC 8489 §14.10
    XOR_RELAYED_ADDRESS = 0x0016  # RFC 8656 §18.5
    REQUESTED_ADDRESS_FAMILY = 0x0017  # RFC 8656 §18.6
    EVEN_PORT = 0x0018  # RFC 8656 §18.7
    REQUESTED_TRANSPORT = 0x0019  # RFC 8656 §18.8
    DONT_FRAGMENT = 0x001A  # RFC 8656 §18.9
    MESSAGE_INTEGRITY_SHA256 = 0x001C  # RFC 8489 §14.6
    PASSWORD_ALGORITHM = 0x001D  # RFC 8489 §14.12
    USERHASH = 0x001E  # RFC 8489 §14.4
    XOR_MAPPED_ADDRESS = 0x0020  # RFC 8489 §14.2
    RESERVATION_TOKEN = 0x0022  # RFC 8656 §18.10
    PRIORITY = 0x0024  # RFC 8445 §16.1
    USE_CANDIDATE = 0x0025  # RFC 8445 §16.1
    PADDING = 0x0026  # RFC 5780 §7.6
    RESPONSE_PORT = 0x0027  # RFC 5780 §7.5
    CONNECTION_ID = 0x002A  # RFC 6062 §6.2.1
    ADDITIONAL_ADDRESS_FAMILY = 0x8000  # RFC 8656 §18.11
    ADDRESS_ERROR_CODE = 0x8001  # RFC 8656 §18.12
    PASSWORD_ALGORITHMS = 0x8002  # RFC 8489 §14.11
    ALTERNATE_DOMAIN = 0x8003  # RFC 8489 §14.16
    ICMP = 0x8004  # RFC 8656 §18.13
    SOFTWARE = 0x8022  # RFC 8489 §14.14
    ALTERNATE_SERVER = 0x8023  # RFC 8489 §14.15
    FINGERPRINT = 0x8028  # RFC 8489 §14.7
    ICE_CONTROLLED = 0x8029  # RFC 8445 §16.1
    ICE_CONTROLLING = 0x802A  # RFC 8445 §16.1
    RESPONSE_ORIGIN = 0x802B  # RFC 5780 §7.3
    OTHER_ADDRESS = 0x802C  # RFC 5780 §7.4


def is_comprehension_required(attr_type: int) -> bool:
    """RFC 8489 §15: types below 0x8000 must be understood or the request is refused (420)."""
    return attr_type < 0x8000


# Size limits of RFC 8489 §14, in bytes of the value as received.
MAX_USERNAME = 512  # §14.3: "less than 513 bytes"
MAX_TEXT = 763  # §14.8-§14.10, §14.14: realm, nonce, reason phrase, software: "< 763 bytes"
MAX_DOMAIN = 255  # §14.16: ALTERNATE-DOMAIN is a DNS name (RFC 1035 §2.3.4)


class AttributeValueError(ValueError):
    """An attribute value does not match its type's wire format."""


class Attribute(Protocol):
    """What every attribute class provides."""

    TYPE: ClassVar[int]

    def pack(self, xor_key: bytes) -> bytes:
        """The value bytes (without type, length or padding)."""
        ...


A = TypeVar("A", bound="Attribute")

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


def _exact(value: bytes, size: int, name: str) -> None:
    if len(value) != size:
        raise AttributeValueError(f"{name} must be {size} bytes, got {len(value)}")


def _text(value: bytes, limit: int, name: str) -> str:
    if len(value) > limit:
        raise AttributeValueError(f"{name} longer than {limit} bytes")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AttributeValueError(f"{name} is not UTF-8") from exc


# --- addresses ---------------------------------------------------------------------------------


def _address(value: bytes, xor_key: bytes | None, name: str) -> Address:
    try:
        return decode_address(value, xor_key)
    except AddressDecodeError as exc:
        raise AttributeValueError(f"{name}: {exc}") from exc


@attrs.frozen
class MappedAddress:
    """MAPPED-ADDRESS (RFC 8489 §14.1): the reflexive address, plain form (RFC 3489 clients)."""

    TYPE: ClassVar[int] = AttributeType.MAPPED_ADDRESS
    address: Address

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> MappedAddress:
        return cls(_address(value, None, "MAPPED-ADDRESS"))

    def pack(self, xor_key: bytes) -> bytes:
        return encode_address(self.address, None)


@attrs.frozen
class XorMappedAddress:
    """XOR-MAPPED-ADDRESS (RFC 8489 §14.2): the client's reflexive transport address."""

    TYPE: ClassVar[int] = AttributeType.XOR_MAPPED_ADDRESS
    address: Address

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> XorMappedAddress:
        return cls(_address(value, xor_key, "XOR-MAPPED-ADDRESS"))

    def pack(self, xor_key: bytes) -> bytes:
        return encode_address(self.address, xor_key)


@attrs.frozen
class XorPeerAddress:
    """XOR-PEER-ADDRESS (RFC 8656 §18.3): a peer's address as seen from the server."""

    TYPE: ClassVar[int] = AttributeType.XOR_PEER_ADDRESS
    address: Address

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> XorPeerAddress:
        return cls(_address(value, xor_key, "XOR-PEER-ADDRESS"))

    def pack(self, xor_key: bytes) -> bytes:
        return encode_address(self.address, xor_key)


@attrs.frozen
class XorRelayedAddress:
    """XOR-RELAYED-ADDRESS (RFC 8656 §18.5): the relayed transport address of an allocation."""

    TYPE: ClassVar[int] = AttributeType.XOR_RELAYED_ADDRESS
    address: Address

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> XorRelayedAddress:
        return cls(_address(value, xor_key, "XOR-RELAYED-ADDRESS"))

    def pack(self, xor_key: bytes) -> bytes:
        return encode_address(self.address, xor_key)


@attrs.frozen
class AlternateServer:
    """ALTERNATE-SERVER (RFC 8489 §14.15): where a 300 Try Alternate sends the client."""

    TYPE: ClassVar[int] = AttributeType.ALTERNATE_SERVER
    address: Address

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> AlternateServer:
        return cls(_address(value, None, "ALTERNATE-SERVER"))

    def pack(self, xor_key: bytes) -> bytes:
        return encode_address(self.address, None)


@attrs.frozen
class ResponseOrigin:
    """RESPONSE-ORIGIN (RFC 5780 §7.3): the address a response was sent from."""

    TYPE: ClassVar[int] = AttributeType.RESPONSE_ORIGIN
    address: Address

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> ResponseOrigin:
        return cls(_address(value, None, "RESPONSE-ORIGIN"))

    def pack(self, xor_key: bytes) -> bytes:
        return encode_address(self.address, None)


@attrs.frozen
class OtherAddress:
    """OTHER-ADDRESS (RFC 5780 §7.4): the server's alternate address for NAT discovery."""

    TYPE: ClassVar[int] = AttributeType.OTHER_ADDRESS
    address: Address

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> OtherAddress:
        return cls(_address(value, None, "OTHER-ADDRESS"))

    def pack(self, xor_key: bytes) -> bytes:
        return encode_address(self.address, None)


# --- text --------------------------------------------------------------------------------------


@attrs.frozen
class Username:
    """USERNAME (RFC 8489 §14.3): UTF-8, fewer than 513 bytes."""

    TYPE: ClassVar[int] = AttributeType.USERNAME
    value: str

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> Username:
        return cls(_text(value, MAX_USERNAME, "USERNAME"))

    def pack(self, xor_key: bytes) -> bytes:
        return self.value.encode("utf-8")


@attrs.frozen
class Realm:
    """REALM (RFC 8489 §14.9): UTF-8 quoted-string contents, fewer than 763 bytes."""

    TYPE: ClassVar[int] = AttributeType.REALM
    value: str

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> Realm:
        return cls(_text(value, MAX_TEXT, "REALM"))

    def pack(self, xor_key: bytes) -> bytes:
        return self.value.encode("utf-8")


@attrs.frozen
class Nonce:
    """NONCE (RFC 8489 §14.10): opaque server text, fewer than 763 bytes."""

    TYPE: ClassVar[int] = AttributeType.NONCE
    value: str

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> Nonce:
        return cls(_text(value, MAX_TEXT, "NONCE"))

    def pack(self, xor_key: bytes) -> bytes:
        return self.value.encode("utf-8")


@attrs.frozen
class Software:
    """SOFTWARE (RFC 8489 §14.14): agent description, fewer than 763 bytes."""

    TYPE: ClassVar[int] = AttributeType.SOFTWARE
    value: str

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> Software:
        return cls(_text(value, MAX_TEXT, "SOFTWARE"))

    def pack(self, xor_key: bytes) -> bytes:
        return self.value.encode("utf-8")


@attrs.frozen
class AlternateDomain:
    """ALTERNATE-DOMAIN (RFC 8489 §14.16): the TLS name of the ALTERNATE-SERVER."""

    TYPE: ClassVar[int] = AttributeType.ALTERNATE_DOMAIN
    value: str

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> AlternateDomain:
        return cls(_text(value, MAX_DOMAIN, "ALTERNATE-DOMAIN"))

    def pack(self, xor_key: bytes) -> bytes:
        return self.value.encode("utf-8")


# --- integrity ---------------------------------------------------------------------------------


@attrs.frozen
class Userhash:
    """USERHASH (RFC 8489 §14.4): SHA-256 of username and realm, 32 bytes."""

    TYPE: ClassVar[int] = AttributeType.USERHASH
    value: bytes

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> Userhash:
        _exact(value, 32, "USERHASH")
        return cls(value)

    def pack(self, xor_key: bytes) -> bytes:
        return self.value


@attrs.frozen
class MessageIntegrity:
    """MESSAGE-INTEGRITY (RFC 8489 §14.5): HMAC-SHA1, 20 bytes. The encoder computes it."""

    TYPE: ClassVar[int] = AttributeType.MESSAGE_INTEGRITY
    value: bytes = bytes(20)

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> MessageIntegrity:
        _exact(value, 20, "MESSAGE-INTEGRITY")
        return cls(value)

    def pack(self, xor_key: bytes) -> bytes:
        return self.value


@attrs.frozen
class MessageIntegritySha256:
    """MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6): HMAC-SHA256, truncated to 16-32 bytes in steps
    of 4. The length of ``value`` is the truncation the encoder keeps."""

    TYPE: ClassVar[int] = AttributeType.MESSAGE_INTEGRITY_SHA256
    value: bytes = bytes(32)

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> MessageIntegritySha256:
        if not 16 <= len(value) <= 32 or len(value) % 4:
            raise AttributeValueError(
                "MESSAGE-INTEGRITY-SHA256 must be 16-32 bytes, a multiple of 4"
            )
        return cls(value)

    def pack(self, xor_key: bytes) -> bytes:
        return self.value


@attrs.frozen
class Fingerprint:
    """FINGERPRINT (RFC 8489 §14.7): CRC-32 of the message XOR 0x5354554e. The encoder computes
    it; the decoder checks it."""

    TYPE: ClassVar[int] = AttributeType.FINGERPRINT
    value: int = 0

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> Fingerprint:
        _exact(value, 4, "FINGERPRINT")
        return cls(_U32.unpack(value)[0])

    def pack(self, xor_key: bytes) -> bytes:
        return _U32.pack(self.value)


@attrs.frozen
class PasswordAlgorithmEntry:
    """One algorithm of PASSWORD-ALGORITHM(S): number and parameters."""

    algorithm: int
    parameters: bytes = b""


def _unpack_algorithms(value: bytes, name: str) -> tuple[PasswordAlgorithmEntry, ...]:
    entries = []
    offset = 0
    while offset < len(value):
        if offset + 4 > len(value):
            raise AttributeValueError(f"{name}: truncated algorithm entry")
        algorithm, length = struct.unpack_from("!HH", value, offset)
        end = offset + 4 + length
        if end > len(value):
            raise AttributeValueError(f"{name}: parameters overrun the attribute")
        entries.append(PasswordAlgorithmEntry(algorithm, value[offset + 4 : end]))
        offset = end + (-length % 4)
    return tuple(entries)


def _pack_algorithm(entry: PasswordAlgorithmEntry) -> bytes:
    params = entry.parameters
    return struct.pack("!HH", entry.algorithm, len(params)) + params + bytes(-len(params) % 4)


@attrs.frozen
class PasswordAlgorithms:
    """PASSWORD-ALGORITHMS (RFC 8489 §14.11): the algorithms the server offers, in its order."""

    TYPE: ClassVar[int] = AttributeType.PASSWORD_ALGORITHMS
    algorithms: tuple[PasswordAlgorithmEntry, ...]

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> PasswordAlgorithms:
        return cls(_unpack_algorithms(value, "PASSWORD-ALGORITHMS"))

    def pack(self, xor_key: bytes) -> bytes:
        return b"".join(_pack_algorithm(entry) for entry in self.algorithms)


@attrs.frozen
class PasswordAlgorithm:
    """PASSWORD-ALGORITHM (RFC 8489 §14.12): the algorithm the client chose."""

    TYPE: ClassVar[int] = AttributeType.PASSWORD_ALGORITHM
    algorithm: int
    parameters: bytes = b""

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> PasswordAlgorithm:
        entries = _unpack_algorithms(value, "PASSWORD-ALGORITHM")
        if len(entries) != 1:
            raise AttributeValueError("PASSWORD-ALGORITHM must hold exactly one algorithm")
        return cls(entries[0].algorithm, entries[0].parameters)

    def pack(self, xor_key: bytes) -> bytes:
        return _pack_algorithm(PasswordAlgorithmEntry(self.algorithm, self.parameters))


# --- errors ------------------------------------------------------------------------------------


def _unpack_code(value: bytes, name: str) -> tuple[int, int, str]:
    """Shared layout of ERROR-CODE and ADDRESS-ERROR-CODE: (first byte, code, reason)."""
    if len(value) < 4:
        raise AttributeValueError(f"{name} shorter than 4 bytes")
    klass = value[2] & 0x07
    number = value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise AttributeValueError(f"{name}: class {klass} number {number} out of range")
    return value[0], klass * 100 + number, _text(value[4:], MAX_TEXT, f"{name} reason")


def _pack_code(first: int, code: int, reason: str) -> bytes:
    return bytes((first, 0, code // 100, code % 100)) + reason.encode("utf-8")


@attrs.frozen
class ErrorCode:
    """ERROR-CODE (RFC 8489 §14.8): code 300-699 and a reason phrase."""

    TYPE: ClassVar[int] = AttributeType.ERROR_CODE
    code: int
    reason: str = ""

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> ErrorCode:
        _, code, reason = _unpack_code(value, "ERROR-CODE")
        return cls(code, reason)

    def pack(self, xor_key: bytes) -> bytes:
        return _pack_code(0, self.code, self.reason)


@attrs.frozen
class AddressErrorCode:
    """ADDRESS-ERROR-CODE (RFC 8656 §18.12): why one family of a dual allocation failed."""

    TYPE: ClassVar[int] = AttributeType.ADDRESS_ERROR_CODE
    family: int
    code: int
    reason: str = ""

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> AddressErrorCode:
        family, code, reason = _unpack_code(value, "ADDRESS-ERROR-CODE")
        return cls(family, code, reason)

    def pack(self, xor_key: bytes) -> bytes:
        return _pack_code(self.family, self.code, self.reason)


@attrs.frozen
class UnknownAttributes:
    """UNKNOWN-ATTRIBUTES (RFC 8489 §14.13): the types that caused a 420."""

    TYPE: ClassVar[int] = AttributeType.UNKNOWN_ATTRIBUTES
    types: tuple[int, ...]

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> UnknownAttributes:
        if len(value) % 2:
            raise AttributeValueError("UNKNOWN-ATTRIBUTES length must be even")
        return cls(tuple(t for (t,) in _U16.iter_unpack(value)))

    def pack(self, xor_key: bytes) -> bytes:
        return b"".join(_U16.pack(t) for t in self.types)


# --- TURN --------------------------------------------------------------------------------------


@attrs.frozen
class ChannelNumber:
    """CHANNEL-NUMBER (RFC 8656 §18.1): 16-bit number then 16 bits RFFU."""

    TYPE: ClassVar[int] = AttributeType.CHANNEL_NUMBER
    number: int

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> ChannelNumber:
        _exact(value, 4, "CHANNEL-NUMBER")
        return cls(_U16.unpack_from(value)[0])

    def pack(self, xor_key: bytes) -> bytes:
        return _U16.pack(self.number) + b"\x00\x00"


@attrs.frozen
class Lifetime:
    """LIFETIME (RFC 8656 §18.2): seconds until the allocation expires."""

    TYPE: ClassVar[int] = AttributeType.LIFETIME
    seconds: int

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> Lifetime:
        _exact(value, 4, "LIFETIME")
        return cls(_U32.unpack(value)[0])

    def pack(self, xor_key: bytes) -> bytes:
        return _U32.pack(self.seconds)


@attrs.frozen
class Data:
    """DATA (RFC 8656 §18.4): the application data of a Send or Data indication."""

    TYPE: ClassVar[int] = AttributeType.DATA
    value: bytes

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> Data:
        return cls(bytes(value))

    def pack(self, xor_key: bytes) -> bytes:
        return self.value


def _family_byte(value: bytes, name: str) -> int:
    _exact(value, 4, name)
    return value[0]


@attrs.frozen
class RequestedAddressFamily:
    """REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6): family byte then 24 bits RFFU."""

    TYPE: ClassVar[int] = AttributeType.REQUESTED_ADDRESS_FAMILY
    family: int

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> RequestedAddressFamily:
        return cls(_family_byte(value, "REQUESTED-ADDRESS-FAMILY"))

    def pack(self, xor_key: bytes) -> bytes:
        return bytes((self.family, 0, 0, 0))


@attrs.frozen
class AdditionalAddressFamily:
    """ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11): asks for an IPv6 relay beside the IPv4 one."""

    TYPE: ClassVar[int] = AttributeType.ADDITIONAL_ADDRESS_FAMILY
    family: int

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> AdditionalAddressFamily:
        return cls(_family_byte(value, "ADDITIONAL-ADDRESS-FAMILY"))

    def pack(self, xor_key: bytes) -> bytes:
        return bytes((self.family, 0, 0, 0))


@attrs.frozen
class EvenPort:
    """EVEN-PORT (RFC 8656 §18.7): one byte whose top bit R asks to reserve the next port."""

    TYPE: ClassVar[int] = AttributeType.EVEN_PORT
    reserve: bool = False

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> EvenPort:
        # §18.7: the value is 1 byte; some clients pad the value itself to 4 — accept both.
        if len(value) not in (1, 4):
            raise AttributeValueError("EVEN-PORT must be 1 byte")
        return cls(bool(value[0] & 0x80))

    def pack(self, xor_key: bytes) -> bytes:
        return b"\x80" if self.reserve else b"\x00"


@attrs.frozen
class RequestedTransport:
    """REQUESTED-TRANSPORT (RFC 8656 §18.8): IANA protocol number (17 UDP, 6 TCP per RFC 6062)."""

    TYPE: ClassVar[int] = AttributeType.REQUESTED_TRANSPORT
    protocol: int

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> RequestedTransport:
        _exact(value, 4, "REQUESTED-TRANSPORT")
        return cls(value[0])

    def pack(self, xor_key: bytes) -> bytes:
        return bytes((self.protocol, 0, 0, 0))


@attrs.frozen
class DontFragment:
    """DONT-FRAGMENT (RFC 8656 §18.9): no value."""

    TYPE: ClassVar[int] = AttributeType.DONT_FRAGMENT

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> DontFragment:
        _exact(value, 0, "DONT-FRAGMENT")
        return cls()

    def pack(self, xor_key: bytes) -> bytes:
        return b""


@attrs.frozen
class ReservationToken:
    """RESERVATION-TOKEN (RFC 8656 §18.10): 8 opaque bytes naming a reserved relay port."""

    TYPE: ClassVar[int] = AttributeType.RESERVATION_TOKEN
    token: bytes

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> ReservationToken:
        _exact(value, 8, "RESERVATION-TOKEN")
        return cls(value)

    def pack(self, xor_key: bytes) -> bytes:
        return self.token


@attrs.frozen
class Icmp:
    """ICMP (RFC 8656 §18.13): an ICMP error a relay saw, passed on in a Data indication."""

    TYPE: ClassVar[int] = AttributeType.ICMP
    icmp_type: int
    icmp_code: int
    error_data: int = 0

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> Icmp:
        _exact(value, 8, "ICMP")
        return cls(value[2], value[3], _U32.unpack_from(value, 4)[0])

    def pack(self, xor_key: bytes) -> bytes:
        return bytes((0, 0, self.icmp_type, self.icmp_code)) + _U32.pack(self.error_data)


@attrs.frozen
class ConnectionId:
    """CONNECTION-ID (RFC 6062 §6.2.1): names a peer TCP connection of a TCP allocation."""

    TYPE: ClassVar[int] = AttributeType.CONNECTION_ID
    value: int

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> ConnectionId:
        _exact(value, 4, "CONNECTION-ID")
        return cls(_U32.unpack(value)[0])

    def pack(self, xor_key: bytes) -> bytes:
        return _U32.pack(self.value)


# --- RFC 5780 and ICE --------------------------------------------------------------------------


@attrs.frozen
class ChangeRequest:
    """CHANGE-REQUEST (RFC 5780 §7.2): flags A (change IP, 0x4) and B (change port, 0x2)."""

    TYPE: ClassVar[int] = AttributeType.CHANGE_REQUEST
    flags: int

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> ChangeRequest:
        _exact(value, 4, "CHANGE-REQUEST")
        return cls(_U32.unpack(value)[0])

    def pack(self, xor_key: bytes) -> bytes:
        return _U32.pack(self.flags)


@attrs.frozen
class ResponsePort:
    """RESPONSE-PORT (RFC 5780 §7.5): 16-bit port then 16 bits of padding."""

    TYPE: ClassVar[int] = AttributeType.RESPONSE_PORT
    port: int

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> ResponsePort:
        _exact(value, 4, "RESPONSE-PORT")
        return cls(_U16.unpack_from(value)[0])

    def pack(self, xor_key: bytes) -> bytes:
        return _U16.pack(self.port) + b"\x00\x00"


@attrs.frozen
class Padding:
    """PADDING (RFC 5780 §7.6): bytes a client adds to test fragmentation."""

    TYPE: ClassVar[int] = AttributeType.PADDING
    value: bytes

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> Padding:
        return cls(bytes(value))

    def pack(self, xor_key: bytes) -> bytes:
        return self.value


@attrs.frozen
class Priority:
    """PRIORITY (RFC 8445 §16.1): the ICE candidate priority."""

    TYPE: ClassVar[int] = AttributeType.PRIORITY
    value: int

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> Priority:
        _exact(value, 4, "PRIORITY")
        return cls(_U32.unpack(value)[0])

    def pack(self, xor_key: bytes) -> bytes:
        return _U32.pack(self.value)


@attrs.frozen
class UseCandidate:
    """USE-CANDIDATE (RFC 8445 §16.1): no value."""

    TYPE: ClassVar[int] = AttributeType.USE_CANDIDATE

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> UseCandidate:
        _exact(value, 0, "USE-CANDIDATE")
        return cls()

    def pack(self, xor_key: bytes) -> bytes:
        return b""


@attrs.frozen
class IceControlled:
    """ICE-CONTROLLED (RFC 8445 §16.1): 64-bit tie-breaker."""

    TYPE: ClassVar[int] = AttributeType.ICE_CONTROLLED
    tiebreaker: int

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> IceControlled:
        _exact(value, 8, "ICE-CONTROLLED")
        return cls(_U64.unpack(value)[0])

    def pack(self, xor_key: bytes) -> bytes:
        return _U64.pack(self.tiebreaker)


@attrs.frozen
class IceControlling:
    """ICE-CONTROLLING (RFC 8445 §16.1): 64-bit tie-breaker."""

    TYPE: ClassVar[int] = AttributeType.ICE_CONTROLLING
    tiebreaker: int

    @classmethod
    def unpack(cls, value: bytes, xor_key: bytes) -> IceControlling:
        _exact(value, 8, "ICE-CONTROLLING")
        return cls(_U64.unpack(value)[0])

    def pack(self, xor_key: bytes) -> bytes:
        return _U64.pack(self.tiebreaker)


@attrs.frozen
class UnknownAttribute:
    """An attribute this codec does not know: its type and raw value, kept for 420 answers."""

    type: int
    value: bytes

    @property
    def TYPE(self) -> int:  # mirrors the ClassVar of known attributes
        return self.type

    def pack(self, xor_key: bytes) -> bytes:
        return self.value


#: The one table of known attributes: wire type -> class.
ATTRIBUTE_CLASSES: dict[int, Any] = {
    cls.TYPE: cls
    for cls in (
        MappedAddress,
        XorMappedAddress,
        XorPeerAddress,
        XorRelayedAddress,
        AlternateServer,
        ResponseOrigin,
        OtherAddress,
        Username,
        Realm,
        Nonce,
        Software,
        AlternateDomain,
        Userhash,
        MessageIntegrity,
        MessageIntegritySha256,
        Fingerprint,
        PasswordAlgorithms,
        PasswordAlgorithm,
        ErrorCode,
        AddressErrorCode,
        UnknownAttributes,
        ChannelNumber,
        Lifetime,
        Data,
        RequestedAddressFamily,
        AdditionalAddressFamily,
        EvenPort,
        RequestedTransport,
        DontFragment,
        ReservationToken,
        Icmp,
        ConnectionId,
        ChangeRequest,
        ResponsePort,
        Padding,
        Priority,
        UseCandidate,
        IceControlled,
        IceControlling,
    )
}
