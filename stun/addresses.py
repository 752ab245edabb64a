"""Transport addresses as the core sees them, and their STUN wire forms.

Inside turnd an address is an :class:`Address` — a ``(host, port)`` named tuple whose host is the
canonical text of an IP literal (``ipaddress`` compressed form). Being a plain tuple, an IPv4
address compares equal to what asyncio hands the adapters, and hashing it costs one tuple hash.

Wire forms (RFC 8489 §14.1 MAPPED-ADDRESS, §14.2 XOR-MAPPED-ADDRESS; RFC 8656 §18.3, §18.5 use the
XOR form for XOR-PEER-ADDRESS and XOR-RELAYED-ADDRESS):

    0x00 | family (0x01 IPv4, 0x02 IPv6) | port (16) | address (32 or 128 bits)

The XOR form XORs the port with the top 16 bits of the magic cookie, an IPv4 address with the
cookie, and an IPv6 address with the cookie followed by the 96-bit transaction id.
"""

from __future__ import annotations

import ipaddress
import struct
from enum import IntEnum
from functools import lru_cache
from typing import NamedTuple

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")

_FAMILY_PORT = struct.Struct("!xBH")


class AddressFamily(IntEnum):
    """Address family codes of the address attributes (RFC 8489 §14.1) and of
    REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.8, §18.11)."""

    IPV4 = 0x01
    IPV6 = 0x02


#: The members again as module constants. On Python 3.11 reading ``AddressFamily.IPV4`` runs a
#: Python-level descriptor (about 0.2 µs); the per-datagram paths read these instead.
IPV4 = AddressFamily.IPV4
IPV6 = AddressFamily.IPV6


class Address(NamedTuple):
    """A transport address: canonical IP text and port."""

    host: str
    port: int

    @property
    def family(self) -> AddressFamily:
        """IPv6 if the host contains a colon, else IPv4."""
        return IPV6 if ":" in self.host else IPV4

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def make_address(host: str, port: int) -> Address:
    """Build an :class:`Address`, canonicalising the IP text (drops IPv6 scope ids)."""
    host = host.split("%", 1)[0]
    return Address(str(ipaddress.ip_address(host)), port)


class AddressDecodeError(ValueError):
    """The bytes are not a valid address attribute value."""


def decode_address(value: bytes, xor_key: bytes | None) -> Address:
    """Decode a (XOR-)MAPPED-ADDRESS style value; ``xor_key`` is cookie + transaction id.

    Raises :class:`AddressDecodeError` on a bad length or family.
    """
    if len(value) < 4:
        raise AddressDecodeError("address attribute shorter than 4 bytes")
    family, port = _FAMILY_PORT.unpack_from(value)
    raw = value[4:]
    if family == AddressFamily.IPV4:
        if len(raw) != 4:
            raise AddressDecodeError("IPv4 address attribute must be 8 bytes")
    elif family == AddressFamily.IPV6:
        if len(raw) != 16:
            raise AddressDecodeError("IPv6 address attribute must be 20 bytes")
    else:
        raise AddressDecodeError(f"unknown address family {family:#04x}")
    if xor_key is not None:
        port ^= MAGIC_COOKIE >> 16
        raw = _xor(raw, xor_key)
    return Address(_ip_text(raw), port)


def encode_address(address: Address, xor_key: bytes | None) -> bytes:
    """Encode an address attribute value (XOR form when ``xor_key`` is given)."""
    raw = _ip_bytes(address.host)
    port = address.port
    if xor_key is not None:
        port ^= MAGIC_COOKIE >> 16
        raw = _xor(raw, xor_key)
    return _FAMILY_PORT.pack(IPV4 if len(raw) == 4 else IPV6, port) + raw


#: Distinct IPs remembered by the conversions below. A relay sees few peers per allocation and the
#: same ones for every packet; the cache turns ``ipaddress`` parsing (~2 µs) into a dict lookup.
IP_CACHE_SIZE = 4096


@lru_cache(maxsize=IP_CACHE_SIZE)
def _ip_text(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw))


@lru_cache(maxsize=IP_CACHE_SIZE)
def _ip_bytes(host: str) -> bytes:
    return ipaddress.ip_address(host).packed


def _xor(raw: bytes, key: bytes) -> bytes:
    """``raw`` XOR the first ``len(raw)`` bytes of ``key``."""
    size = len(raw)
    mixed = int.from_bytes(raw, "big") ^ int.from_bytes(key[:size], "big")
    return mixed.to_bytes(size, "big")
