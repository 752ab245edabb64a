"""The messages a relay sees most, read and written without building Message objects.

A TURN relay handles one Send indication (RFC 8656 §10.2) per packet a client relays without a
channel, builds one Data indication (§10.3) per packet a peer sends back, and answers Binding
requests (RFC 8489 §6.3.1) from every ICE agent that uses it as a STUN server. The general codec
(:mod:`stun.message`) builds an attribute object per attribute; these functions read and write
the plain shapes directly and agree with it byte for byte:

* :func:`parse_send` takes a Send indication made of XOR-PEER-ADDRESS and DATA, in either order,
  optionally followed by FINGERPRINT, and returns the peer and the data. For anything else — other
  attributes, repeated ones, bad framing, a FINGERPRINT that does not match — it returns None and
  the caller decodes the message the general way, which judges and counts it.
* :func:`build_data_indication` writes XOR-PEER-ADDRESS then DATA, as
  ``encode(Message(Method.DATA, MessageClass.INDICATION, txid, (XorPeerAddress, Data)))`` does.
* :func:`parse_binding` takes a Binding request with no attribute but an optional FINGERPRINT
  and returns its transaction id and whether it had the FINGERPRINT (None: anything else);
  :func:`build_binding_success` writes the success response with XOR-MAPPED-ADDRESS, and
  FINGERPRINT when the request had one (RFC 8489 §7.3).
"""

from __future__ import annotations

import struct
from functools import lru_cache

from stun.addresses import (
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    Address,
    AddressDecodeError,
    decode_address,
    encode_address,
)
from stun.attributes import AttributeType
from stun.message import HEADER_SIZE, MessageClass, Method, fingerprint, message_type

#: Message types (RFC 8489 §5) and attribute types, as plain ints for the comparisons below.
BINDING_REQUEST = message_type(Method.BINDING, MessageClass.REQUEST)
BINDING_SUCCESS = message_type(Method.BINDING, MessageClass.SUCCESS)
SEND_INDICATION = message_type(Method.SEND, MessageClass.INDICATION)
DATA_INDICATION = message_type(Method.DATA, MessageClass.INDICATION)
_XOR_MAPPED_ADDRESS = int(AttributeType.XOR_MAPPED_ADDRESS)
_XOR_PEER_ADDRESS = int(AttributeType.XOR_PEER_ADDRESS)
_DATA = int(AttributeType.DATA)
_FINGERPRINT = int(AttributeType.FINGERPRINT)
#: The first two bytes of a Binding request and of a Send indication (what adapters test).
BINDING_REQUEST_HEAD = BINDING_REQUEST.to_bytes(2, "big")
SEND_INDICATION_HEAD = SEND_INDICATION.to_bytes(2, "big")
_HEADER = struct.Struct("!HHI12s")
_ATTR_HEADER = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")
_FINGERPRINT_HEADER = _ATTR_HEADER.pack(_FINGERPRINT, 4)
#: IPv4 XOR-PEER-ADDRESS values remembered, read and written: a relay sees the same few peers
#: for every packet.
PEER_CACHE_SIZE = 4096


def parse_send(data: bytes) -> tuple[Address, bytes] | None:
    """(peer, data) of a plain Send indication, or None: decode it the general way."""
    size = len(data)
    if size < HEADER_SIZE or data[0] or data[1] != SEND_INDICATION:
        return None
    if data[4:8] != MAGIC_COOKIE_BYTES or ((data[2] << 8) | data[3]) + HEADER_SIZE != size:
        return None
    if size & 3:
        return None
    peer_value: bytes | None = None
    payload: bytes | None = None
    offset = HEADER_SIZE
    while offset < size:
        kind, length = _ATTR_HEADER.unpack_from(data, offset)
        start = offset + 4
        end = start + length
        offset = end + (-length & 3)
        if offset > size:
            return None
        if kind == _XOR_PEER_ADDRESS and peer_value is None:
            peer_value = data[start:end]
        elif kind == _DATA and payload is None:
            payload = data[start:end]
        elif kind == _FINGERPRINT and offset == size and length == 4:
            if _U32.unpack_from(data, start)[0] != fingerprint(data[: start - 4]):
                return None
        else:
            return None
    if peer_value is None or payload is None:
        return None
    if len(peer_value) == 8:  # IPv4: the XOR key is the cookie alone, so the value names the peer
        peer = _ipv4_peer(peer_value)
    else:
        try:
            peer = decode_address(peer_value, data[4:20])
        except AddressDecodeError:
            return None
    return None if peer is None else (peer, payload)


@lru_cache(maxsize=PEER_CACHE_SIZE)
def _ipv4_peer(value: bytes) -> Address | None:
    try:
        return decode_address(value, MAGIC_COOKIE_BYTES)
    except AddressDecodeError:
        return None


def build_data_indication(txid: bytes, peer: Address, payload: bytes) -> bytes:
    """A Data indication carrying ``payload`` from ``peer`` (no FINGERPRINT, as the codec's)."""
    if ":" in peer.host:
        peer_attribute = _peer_attribute(encode_address(peer, MAGIC_COOKIE_BYTES + txid))
    else:
        peer_attribute = _ipv4_peer_attribute(peer)
    length = len(payload)
    body_size = len(peer_attribute) + 4 + length + (-length & 3)
    return b"".join(
        (
            _HEADER.pack(DATA_INDICATION, body_size, MAGIC_COOKIE, txid),
            peer_attribute,
            _ATTR_HEADER.pack(_DATA, length),
            payload,
            _PADDING[length & 3],
        )
    )


@lru_cache(maxsize=PEER_CACHE_SIZE)
def _ipv4_peer_attribute(peer: Address) -> bytes:
    """XOR-PEER-ADDRESS of an IPv4 peer: its XOR key is the cookie alone, so one per peer."""
    return _peer_attribute(encode_address(peer, MAGIC_COOKIE_BYTES))


def _peer_attribute(value: bytes) -> bytes:
    return _ATTR_HEADER.pack(_XOR_PEER_ADDRESS, len(value)) + value


def parse_binding(data: bytes) -> tuple[bytes, bool] | None:
    """(transaction id, has FINGERPRINT) of a bare Binding request, or None: decode it."""
    size = len(data)
    if size == HEADER_SIZE:
        has_fingerprint = False
    elif size == HEADER_SIZE + 8 and data[20:24] == _FINGERPRINT_HEADER:
        if _U32.unpack_from(data, 24)[0] != fingerprint(data[:HEADER_SIZE]):
            return None
        has_fingerprint = True
    else:
        return None
    if data[:2] != BINDING_REQUEST_HEAD or data[4:8] != MAGIC_COOKIE_BYTES:
        return None
    if ((data[2] << 8) | data[3]) + HEADER_SIZE != size:
        return None
    return data[8:20], has_fingerprint


def build_binding_success(txid: bytes, mapped: Address, has_fingerprint: bool) -> bytes:
    """The success response to a bare Binding request from ``mapped`` (no SOFTWARE: it is only
    sent to authenticated clients)."""
    address = encode_address(mapped, MAGIC_COOKIE_BYTES + txid)
    body_size = 4 + len(address) + (8 if has_fingerprint else 0)
    message = b"".join(
        (
            _HEADER.pack(BINDING_SUCCESS, body_size, MAGIC_COOKIE, txid),
            _ATTR_HEADER.pack(_XOR_MAPPED_ADDRESS, len(address)),
            address,
        )
    )
    if not has_fingerprint:
        return message
    return message + _FINGERPRINT_HEADER + _U32.pack(fingerprint(message))
