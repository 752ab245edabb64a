"""RFC 5769 §2.1-2.4 and RFC 8489 Appendix B.1 (errata 6268): known-answer vectors.

Every value comes from stun-vectors.json through the ``stun_vector`` / ``stun_vectors`` fixtures.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from stun import Address, MessageClass, Method, StunDecodeError, check_integrity, decode, encode
from stun import attributes as at
from stun.message import message_type
from tests.conftest import StunVector

METHODS = {"Binding": Method.BINDING}
CLASSES = {
    "request": MessageClass.REQUEST,
    "indication": MessageClass.INDICATION,
    "success response": MessageClass.SUCCESS,
    "error response": MessageClass.ERROR,
}


def _address(expected: dict[str, Any]) -> Address:
    return Address(expected["ip"], expected["port"])


#: ``expected`` field -> (attribute class, what to read from it, how to read the JSON value).
ATTRIBUTE_FIELDS: dict[str, tuple[type, Callable[[Any], Any], Callable[[Any], Any]]] = {
    "software": (at.Software, lambda a: a.value, str),
    "priority": (at.Priority, lambda a: a.value, int),
    "ice_controlled_tiebreaker": (at.IceControlled, lambda a: a.tiebreaker, lambda v: int(v, 16)),
    "username": (at.Username, lambda a: a.value, str),
    "username_utf8_hex": (at.Username, lambda a: a.value.encode("utf-8"), bytes.fromhex),
    "xor_mapped_address": (at.XorMappedAddress, lambda a: a.address, _address),
    "userhash": (at.Userhash, lambda a: a.value, bytes.fromhex),
    "message_integrity": (at.MessageIntegrity, lambda a: a.value, bytes.fromhex),
    "message_integrity_sha256": (at.MessageIntegritySha256, lambda a: a.value, bytes.fromhex),
}

#: ``expected`` fields checked elsewhere in this module, or that describe rather than state.
OTHER_FIELDS = {
    "length",
    "message_type",
    "method",
    "class",
    "transaction_id",
    "attributes_in_order",
    "fingerprint",
    "long_term_key_md5",
    "long_term_key_sha256",
    "nonce_cookie",
    "security_feature_bits_b64",
    "userhash_formula",
    "notes",
}


def _attribute_type(text: str) -> int:
    """``"SOFTWARE(0x8022)"`` -> 0x8022."""
    match = re.fullmatch(r"[A-Z0-9-]+\((0x[0-9a-fA-F]{4})\)", text)
    assert match, text
    return int(match.group(1), 16)


def test_vector_header_decodes_as_expected(stun_vector: StunVector) -> None:
    """Method, class, type value, transaction id and size are those the RFC lists."""
    expected = stun_vector.expected
    message = decode(stun_vector.data)
    assert message.method == METHODS[expected["method"]]
    assert message.cls == CLASSES[expected["class"]]
    assert message_type(message.method, message.cls) == int(expected["message_type"], 16)
    assert message.transaction_id == bytes.fromhex(expected["transaction_id"])
    assert len(stun_vector.data) == expected["length"]


def test_vector_attributes_decode_in_order(stun_vector: StunVector) -> None:
    """The attributes come out in wire order, each known to the codec (none unknown)."""
    message = decode(stun_vector.data)
    wanted = [_attribute_type(text) for text in stun_vector.expected["attributes_in_order"]]
    assert [attr.TYPE for attr in message.attributes] == wanted
    assert not any(isinstance(attr, at.UnknownAttribute) for attr in message.attributes)


def test_vector_attribute_values(stun_vector: StunVector) -> None:
    """Every attribute value the vector states decodes to that value."""
    expected = stun_vector.expected
    unchecked = set(expected) - set(ATTRIBUTE_FIELDS) - OTHER_FIELDS
    assert not unchecked, f"expected fields this test does not know: {unchecked}"
    message = decode(stun_vector.data)
    for field, (cls, read, convert) in ATTRIBUTE_FIELDS.items():
        if field in expected:
            attr = message.get(cls)
            assert attr is not None, field
            assert read(attr) == convert(expected[field]), field
    if expected.get("fingerprint") is None:
        assert not message.has(at.Fingerprint)
    else:
        assert message.get(at.Fingerprint) == at.Fingerprint(int(expected["fingerprint"], 16))
    if "xor_mapped_address" in expected:
        family = expected["xor_mapped_address"]["family"]
        assert message.get(at.XorMappedAddress).address.family.name == family.upper()


def test_vector_credentials_attributes(stun_vector: StunVector) -> None:
    """USERNAME, REALM, NONCE and PASSWORD-ALGORITHM carry the vector's credentials."""
    credentials, expected = stun_vector.credentials, stun_vector.expected
    message = decode(stun_vector.data)
    if "realm" in credentials:
        assert message.get(at.Realm) == at.Realm(credentials["realm"])
    if "nonce" in credentials:
        assert message.get(at.Nonce) == at.Nonce(credentials["nonce"])
    if "nonce_cookie" in expected:
        prefix = expected["nonce_cookie"] + expected["security_feature_bits_b64"]
        assert message.get(at.Nonce).value.startswith(prefix)
    if "password_algorithm" in credentials:
        number = re.search(r"\((0x[0-9a-fA-F]+)\)", credentials["password_algorithm"])
        assert number
        assert message.get(at.PasswordAlgorithm) == at.PasswordAlgorithm(int(number.group(1), 16))
    if "username" in credentials and "userhash" not in expected:
        assert message.get(at.Username) == at.Username(credentials["username"])


def test_vector_verifies_with_its_key(stun_vector: StunVector) -> None:
    """The message integrity verifies with the vector's key (short-term password, or the
    long-term MD5 / SHA-256 key)."""
    assert check_integrity(decode(stun_vector.data), stun_vector.key)


def test_vector_fails_with_a_wrong_key(stun_vector: StunVector) -> None:
    """Any other key fails verification."""
    message = decode(stun_vector.data)
    key = stun_vector.key
    assert not check_integrity(message, key[:-1] + bytes([key[-1] ^ 1]))
    assert not check_integrity(message, b"")


def test_vector_reencodes_byte_identical(stun_vector: StunVector) -> None:
    """Re-encoding the decoded message with the same key and padding byte gives the vector."""
    message = decode(stun_vector.data)
    assert encode(message, key=stun_vector.key, pad=stun_vector.pad) == stun_vector.data


def test_published_rfc8489_b1_is_rejected(stun_vectors: dict[str, StunVector]) -> None:
    """The B.1 sample as first published has a length that counts the header: reject it."""
    broken = [vector for vector in stun_vectors.values() if not vector.valid]
    assert [vector.name for vector in broken] == ["rfc8489-b1-as-published-BROKEN"]
    with pytest.raises(StunDecodeError, match="length"):
        decode(broken[0].data)


def test_vector_file_has_every_sample(stun_vectors: dict[str, StunVector]) -> None:
    """The vector file holds the four RFC 5769 samples and the corrected RFC 8489 B.1."""
    sections = {(v.source["rfc"], v.source["section"][:3]) for v in stun_vectors.values()}
    for section in ("2.1", "2.2", "2.3", "2.4"):
        assert ("RFC 5769", section) in sections
    assert any(v.valid and v.source["rfc"] == "RFC 8489" for v in stun_vectors.values())
