"""The decoders' contract on hostile input: parse, or raise StunDecodeError — nothing else.

Exhaustive mutations of every known message (each truncation, each single bit flip), coturn's
seed corpora and dictionary, and hypothesis-generated input with a fixed seed (derandomize), so
that a run is repeatable and takes a few seconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stun import (
    Message,
    StreamDeframer,
    StunDecodeError,
    check_integrity,
    decode,
    encode,
    parse_channel_data,
)
from stun import attributes as at
from stun.channeldata import frame_channel_data, is_valid_channel
from stun.message import message_type
from tests.conftest import FuzzMaterial, StunVector, raw_stun

FUZZ = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

INTEGRITY_TYPES = {
    at.AttributeType.MESSAGE_INTEGRITY,
    at.AttributeType.MESSAGE_INTEGRITY_SHA256,
    at.AttributeType.FINGERPRINT,
}


def decode_or_reject(data: bytes, key: bytes = b"key") -> Message | None:
    """Decode, or return None on StunDecodeError; any other exception fails the test. A decoded
    message must also survive the integrity check and the 420 bookkeeping."""
    try:
        message = decode(data)
    except StunDecodeError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return None
    assert isinstance(check_integrity(message, key), bool)
    message.unknown_required()
    return message


def parse_or_reject(data: bytes) -> tuple[int, bytes] | None:
    """parse_channel_data, or None on StunDecodeError; a result must be consistent."""
    try:
        channel, payload = parse_channel_data(data)
    except StunDecodeError:
        return None
    assert is_valid_channel(channel)
    assert payload == data[4 : 4 + int.from_bytes(data[2:4], "big")]
    return channel, payload


def deframe_or_reject(chunks: list[bytes]) -> tuple[list[bytes], bool]:
    """Feed chunks in order: (frames so far, whether the deframer failed). Once failed it must
    keep failing."""
    deframer = StreamDeframer()
    frames: list[bytes] = []
    for chunk in chunks:
        try:
            frames += deframer.feed(chunk)
        except StunDecodeError:
            for _ in range(2):
                try:
                    deframer.feed(b"\x00\x01\x00\x00")
                except StunDecodeError:
                    continue
                raise AssertionError("the deframer recovered after failing") from None
            return frames, True
    return frames, False


def _mutations(data: bytes) -> Iterator[bytes]:
    """Every strict prefix, then every single bit flip."""
    for size in range(len(data)):
        yield data[:size]
    for position in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[position] ^= 1 << bit
            yield bytes(flipped)


def _known_messages(vectors: dict[str, StunVector], material: FuzzMaterial) -> dict[str, bytes]:
    known = {name: vector.data for name, vector in vectors.items()}
    known.update(material.coturn_seeds())
    for name in ("01_chromeallocreq", "02_chandata"):
        for index, data in enumerate(material.capture(name)):
            known[f"{name}[{index}]"] = data
    return known


# --- exhaustive mutations of known input --------------------------------------------------------


def test_every_truncation_and_bit_flip_decodes_or_is_rejected(
    stun_vectors: dict[str, StunVector], fuzz_material: FuzzMaterial
) -> None:
    """Each prefix and each one-bit change of every vector, seed and capture decodes or raises
    StunDecodeError."""
    known = _known_messages(stun_vectors, fuzz_material)
    keys = {name: vector.key for name, vector in stun_vectors.items() if vector.valid}
    checked = 0
    for name, data in known.items():
        for mutant in _mutations(data):
            decode_or_reject(mutant, keys.get(name, b"key"))
            checked += 1
    assert checked > 10_000


def test_vector_mutants_never_verify(stun_vectors: dict[str, StunVector]) -> None:
    """No one-bit change of a signed vector both decodes and verifies with the vector's key,
    except where the change lands in bytes the MAC does not cover."""
    for vector in stun_vectors.values():
        if not vector.valid:
            continue
        original = decode(vector.data)
        for mutant in _mutations(vector.data):
            message = decode_or_reject(mutant, vector.key)
            if (
                message is not None
                and len(mutant) == len(vector.data)
                and check_integrity(message, vector.key)
            ):
                # Only bytes after the MAC (FINGERPRINT) may change without breaking it.
                first = next(
                    i for i, (a, b) in enumerate(zip(mutant, vector.data, strict=True)) if a != b
                )
                assert first >= _covered_end(original), (vector.name, first)


def _covered_end(message: Message) -> int:
    """Where the bytes protected by the message's MAC end."""
    offset = message.mi256_offset if message.mi256_offset is not None else message.mi_offset
    assert offset is not None and message.raw is not None
    length = int.from_bytes(message.raw[offset + 2 : offset + 4], "big")
    return offset + 4 + length


def test_coturn_seeds_decode_or_are_rejected(fuzz_material: FuzzMaterial) -> None:
    """Every file of coturn's seed corpora decodes or raises StunDecodeError."""
    seeds = fuzz_material.coturn_seeds()
    assert len(seeds) >= 30
    outcomes = {name: decode_or_reject(data) is not None for name, data in seeds.items()}
    assert any(outcomes.values()) and not all(outcomes.values())


def test_coturn_seed_with_unknown_required_attribute(fuzz_material: FuzzMaterial) -> None:
    """coturn's 16.raw carries comprehension-required 0x00AA, which must be reported (§15)."""
    message = decode(fuzz_material.coturn_seed("16.raw"))
    assert message.unknown_required() == (0x00AA,)


def test_coturn_seed_with_wrong_cookie_is_rejected(fuzz_material: FuzzMaterial) -> None:
    """coturn's 9.raw has cookie 0x41424344 and must be rejected (RFC 8489 §5)."""
    try:
        decode(fuzz_material.coturn_seed("9.raw"))
    except StunDecodeError as exc:
        assert "cookie" in exc.reason
    else:
        raise AssertionError("9.raw decoded")


def test_channel_data_mutations_parse_or_are_rejected(fuzz_material: FuzzMaterial) -> None:
    """Each prefix and bit flip of pion's corpus and the captured frames parses or raises."""
    inputs = [*fuzz_material.pion_channel_data().values(), *fuzz_material.capture("02_chandata")]
    for data in inputs:
        parse_or_reject(data)
        for mutant in _mutations(data[:64]):
            parse_or_reject(mutant)
            deframe_or_reject([mutant])


# --- generated input -----------------------------------------------------------------------------

_ATTR_TYPES = st.sampled_from(
    [*sorted(at.ATTRIBUTE_CLASSES), 0x0000, 0x0002, 0x00AA, 0x7FFF, 0x802F, 0xC057, 0xFFFF]
)
_VALUES = st.one_of(
    st.binary(max_size=48),
    st.sampled_from([0, 1, 4, 8, 16, 20, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    st.sampled_from([b"\x00\x01", b"\x00\x02"]).flatmap(
        lambda family: st.binary(min_size=2, max_size=18).map(lambda rest: family + rest)
    ),
)
_ATTRIBUTES = st.lists(st.tuples(_ATTR_TYPES, _VALUES), max_size=8)
_PLAIN_ATTRIBUTES = st.lists(
    st.tuples(_ATTR_TYPES.filter(lambda t: t not in INTEGRITY_TYPES), _VALUES), max_size=8
)
_MSG_TYPES = st.integers(0, 0x3FFF)


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_decode_or_are_rejected(data: bytes) -> None:
    """Arbitrary bytes decode or raise StunDecodeError."""
    decode_or_reject(data)


@FUZZ
@given(_ATTRIBUTES, _MSG_TYPES, st.binary(min_size=1, max_size=1))
def test_well_framed_messages_decode_or_are_rejected(
    attributes: list[tuple[int, bytes]], msg_type: int, pad: bytes
) -> None:
    """Messages with a valid header and framing but random attribute values decode or raise
    StunDecodeError with the header set."""
    data = raw_stun(attributes, msg_type=msg_type, pad=pad)
    try:
        decode(data)
    except StunDecodeError as exc:
        assert exc.header is not None
        assert message_type(exc.header.method, exc.header.cls) == msg_type


@FUZZ
@given(_PLAIN_ATTRIBUTES, _MSG_TYPES)
def test_decoded_messages_reencode_to_equal_messages(
    attributes: list[tuple[int, bytes]], msg_type: int
) -> None:
    """Whatever decodes re-encodes to bytes that decode to an equal message."""
    message = decode_or_reject(raw_stun(attributes, msg_type=msg_type))
    if message is not None:
        assert decode(encode(message)) == message


@FUZZ
@given(st.data())
def test_dictionary_built_input_decodes_or_is_rejected(
    fuzz_material: FuzzMaterial, data: st.DataObject
) -> None:
    """Input spliced from coturn's fuzzer dictionary and random bytes decodes or raises."""
    tokens = fuzz_material.coturn_dictionary()
    pieces = data.draw(
        st.lists(st.one_of(st.sampled_from(tokens), st.binary(max_size=8)), max_size=24)
    )
    blob = b"".join(pieces)
    decode_or_reject(blob)
    parse_or_reject(blob)
    deframe_or_reject([blob])
    if len(blob) >= 4:  # also as the body of a well-framed message
        decode_or_reject(raw_stun([(int.from_bytes(blob[:2], "big"), blob[4:])]))


@FUZZ
@given(st.binary(max_size=128))
def test_random_bytes_parse_as_channel_data_or_are_rejected(data: bytes) -> None:
    """Arbitrary bytes parse as ChannelData or raise StunDecodeError."""
    parse_or_reject(data)
    parse_or_reject(b"\x40" + data)


_FRAMES = st.one_of(
    st.builds(
        lambda attributes, msg_type: raw_stun(attributes, msg_type=msg_type),
        _ATTRIBUTES,
        _MSG_TYPES,
    ),
    st.builds(
        lambda channel, payload: frame_channel_data(channel, payload, pad=True),
        st.integers(0x4000, 0x4FFF),
        st.binary(max_size=40),
    ),
    st.binary(max_size=8),
)


@FUZZ
@given(st.lists(_FRAMES, max_size=8), st.lists(st.integers(0, 400), max_size=10))
def test_deframer_is_chunking_independent(pieces: list[bytes], cuts: list[int]) -> None:
    """Any stream, cut anywhere, gives the same frames and the same failure as fed whole; every
    frame decodes or is rejected with StunDecodeError."""
    stream = b"".join(pieces)
    bounds = sorted({0, len(stream), *(min(c, len(stream)) for c in cuts)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    whole_frames, whole_failed = deframe_or_reject([stream])
    chunk_frames, chunk_failed = deframe_or_reject(chunks)
    assert chunk_failed == whole_failed
    if not whole_failed:
        assert chunk_frames == whole_frames
    for frame in chunk_frames:
        if frame[0] < 0x40:
            decode_or_reject(frame)
        else:
            assert parse_or_reject(frame) is not None


@FUZZ
@given(st.lists(st.binary(max_size=32), max_size=10))
def test_deframer_on_random_chunks_frames_or_fails(chunks: list[bytes]) -> None:
    """Random chunks give frames or StunDecodeError, and a failed deframer stays failed."""
    deframe_or_reject(chunks)
