"""The hot-path Send/Data indication codec agrees with the general codec (RFC 8656 §10).

parse_send must give exactly what decode() gives for the plain shape and decline (None) whatever
else — then the general path judges it; build_data_indication must equal encode() byte for byte.
"""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stun import attributes as at
from stun.addresses import Address
from stun.errors import StunDecodeError
from stun.hotpath import build_data_indication, parse_send
from stun.message import Message, MessageClass, Method, decode, encode

PEER4 = Address("198.51.100.7", 40000)
PEER6 = Address("2001:db8::7", 40001)

addresses = st.one_of(
    st.builds(
        Address,
        st.ip_addresses(v=4).map(str),
        st.integers(0, 65535),
    ),
    st.builds(Address, st.ip_addresses(v=6).map(str), st.integers(0, 65535)),
)


def send(*attributes: object, fingerprint: bool = False, txid: bytes = b"\x07" * 12) -> bytes:
    message = Message(Method.SEND, MessageClass.INDICATION, txid, tuple(attributes))
    return encode(message, fingerprint=fingerprint)


@settings(derandomize=True, max_examples=300)
@given(
    peer=addresses, payload=st.binary(max_size=300), fingerprint=st.booleans(), flip=st.booleans()
)
def test_plain_send_parses_as_decode_does(
    peer: Address, payload: bytes, fingerprint: bool, flip: bool
) -> None:
    attributes = [at.XorPeerAddress(peer), at.Data(payload)]
    if flip:
        attributes.reverse()
    data = send(*attributes, fingerprint=fingerprint)
    message = decode(data)
    peer_attr, data_attr = message.get(at.XorPeerAddress), message.get(at.Data)
    assert peer_attr is not None and data_attr is not None
    assert parse_send(data) == (peer_attr.address, data_attr.value)


@settings(derandomize=True, max_examples=300)
@given(txid=st.binary(min_size=12, max_size=12), peer=addresses, payload=st.binary(max_size=300))
def test_data_indication_is_what_encode_writes(txid: bytes, peer: Address, payload: bytes) -> None:
    expected = encode(
        Message(
            Method.DATA,
            MessageClass.INDICATION,
            txid,
            (at.XorPeerAddress(peer), at.Data(payload)),
        )
    )
    assert build_data_indication(txid, peer, payload) == expected


def _corrupt_fingerprint(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _bad_family(data: bytes) -> bytes:
    raw = bytearray(data)
    raw[25] = 0x03  # XOR-PEER-ADDRESS family byte (attribute at offset 20, value at 24)
    return bytes(raw)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x16" + bytes(17),  # shorter than a header
        send(at.XorPeerAddress(PEER4)),  # no DATA
        send(at.Data(b"x")),  # no XOR-PEER-ADDRESS
        send(at.XorPeerAddress(PEER4), at.Data(b"x"), at.Software("s")),  # another attribute
        send(at.XorPeerAddress(PEER4), at.XorPeerAddress(PEER6), at.Data(b"x")),  # repeated
        send(at.XorPeerAddress(PEER4), at.Data(b"x"), at.Data(b"y")),  # repeated DATA
        _corrupt_fingerprint(send(at.XorPeerAddress(PEER4), at.Data(b"x"), fingerprint=True)),
        _bad_family(send(at.XorPeerAddress(PEER4), at.Data(b"x"))),
        _bad_family(send(at.XorPeerAddress(PEER6), at.Data(b"x"))),  # 20 bytes, not IPv6
        encode(Message(Method.DATA, MessageClass.INDICATION, b"\x01" * 12, ())),  # not Send
        encode(Message(Method.SEND, MessageClass.REQUEST, b"\x01" * 12, ())),  # not an indication
        send(at.XorPeerAddress(PEER4), at.Data(b"x"))[:-4],  # length field disagrees
        b"\x00\x16\x00\x02\x21\x12\xa4\x42" + bytes(12) + b"\x00\x00",  # length % 4
        b"\x00\x16\x00\x00\x00\x00\x00\x00" + bytes(12),  # no magic cookie
        b"\x00\x16\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x00\x12\x00\x08\x00\x01\x00\x00",
    ],
)
def test_anything_but_the_plain_shape_is_declined(data: bytes) -> None:
    """None sends the datagram down the general path, which decides and counts."""
    assert parse_send(data) is None


def test_declined_fingerprint_is_one_the_general_codec_refuses_too() -> None:
    data = _corrupt_fingerprint(send(at.XorPeerAddress(PEER4), at.Data(b"x"), fingerprint=True))
    with pytest.raises(StunDecodeError):
        decode(data)
    assert (zlib.crc32(data[:-8]) ^ 0x5354554E) & 0xFFFFFFFF != int.from_bytes(data[-4:], "big")
