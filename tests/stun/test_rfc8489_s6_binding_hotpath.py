"""The hot-path Binding codec agrees with the general codec (RFC 8489 §6.3.1, §14.7).

parse_binding gives what decode() gives for a bare request and declines (None) anything else;
build_binding_success equals encode() of the same response byte for byte.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stun import attributes as at
from stun.addresses import Address
from stun.hotpath import build_binding_success, parse_binding
from stun.message import Message, MessageClass, Method, decode, encode

addresses = st.one_of(
    st.builds(Address, st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
    st.builds(Address, st.ip_addresses(v=6).map(str), st.integers(0, 65535)),
)


def binding(*attributes: object, fingerprint: bool = False, txid: bytes = b"\x09" * 12) -> bytes:
    message = Message(Method.BINDING, MessageClass.REQUEST, txid, tuple(attributes))
    return encode(message, fingerprint=fingerprint)


@settings(derandomize=True, max_examples=200)
@given(txid=st.binary(min_size=12, max_size=12), fingerprint=st.booleans())
def test_bare_binding_parses_as_decode_does(txid: bytes, fingerprint: bool) -> None:
    data = binding(txid=txid, fingerprint=fingerprint)
    message = decode(data)
    assert parse_binding(data) == (message.transaction_id, message.has(at.Fingerprint))


@settings(derandomize=True, max_examples=300)
@given(txid=st.binary(min_size=12, max_size=12), mapped=addresses, fingerprint=st.booleans())
def test_binding_success_is_what_encode_writes(
    txid: bytes, mapped: Address, fingerprint: bool
) -> None:
    response = Message(Method.BINDING, MessageClass.SUCCESS, txid, (at.XorMappedAddress(mapped),))
    expected = encode(response, fingerprint=fingerprint)
    assert build_binding_success(txid, mapped, fingerprint) == expected
    decode(expected)  # and the codec accepts it (FINGERPRINT checked)


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        binding()[:19],
        binding(at.Software("x")),  # an attribute besides FINGERPRINT
        binding(at.Software("x"), fingerprint=True),
        _flip_last(binding(fingerprint=True)),  # FINGERPRINT mismatch
        encode(Message(Method.BINDING, MessageClass.INDICATION, b"\x01" * 12, ())),
        encode(Message(Method.ALLOCATE, MessageClass.REQUEST, b"\x01" * 12, ())),
        b"\x00\x01\x00\x00" + bytes(16),  # no magic cookie
        b"\x00\x01\x00\x08\x21\x12\xa4\x42" + bytes(12),  # length says 8, there is none
        binding()[:2] + b"\x00\x08" + binding()[4:] + b"\x80\x28\x00\x04" + bytes(4),
        binding(fingerprint=True)[:2] + b"\x00\x00" + binding(fingerprint=True)[4:],
    ],
)
def test_anything_but_a_bare_binding_is_declined(data: bytes) -> None:
    assert parse_binding(data) is None
