"""RFC 8489 §6.2.2 and RFC 8656 §12.5: cutting a TCP/TLS stream into STUN and ChannelData."""

from __future__ import annotations

import itertools
import random

import pytest

from stun import (
    Message,
    MessageClass,
    Method,
    StreamDeframer,
    StunDecodeError,
    decode,
    encode,
    frame_channel_data,
    parse_channel_data,
)
from stun import attributes as at
from stun.framing import DEFAULT_MAX_MESSAGE_SIZE
from tests.conftest import TEST_TRANSACTION_ID, FuzzMaterial, StunVector


def _stun(size_hint: int) -> bytes:
    return encode(
        Message(
            Method.SEND,
            MessageClass.INDICATION,
            TEST_TRANSACTION_ID,
            (at.Data(bytes(size_hint)),),
        ),
        fingerprint=True,
    )


def _mixed(vectors: dict[str, StunVector]) -> tuple[bytes, list[bytes]]:
    """A stream of STUN messages and padded ChannelData, and the frames it should yield."""
    frames: list[bytes] = []
    wire = bytearray()
    stun_messages = [v.data for v in vectors.values() if v.valid] + [_stun(n) for n in (0, 5, 64)]
    for index, message in enumerate(stun_messages):
        frames.append(message)
        wire += message
        payload = bytes([index]) * (index * 3)  # lengths 0, 3, 6, ... : every padding amount
        frames.append(frame_channel_data(0x4000 + index, payload))
        wire += frame_channel_data(0x4000 + index, payload, pad=True)
    return bytes(wire), frames


def _feed_all(deframer: StreamDeframer, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out += deframer.feed(chunk)
    return out


def test_whole_stream_yields_every_frame(stun_vectors: dict[str, StunVector]) -> None:
    """Fed in one piece, the stream gives each frame, ChannelData without its padding."""
    wire, frames = _mixed(stun_vectors)
    deframer = StreamDeframer()
    assert deframer.feed(wire) == frames
    assert deframer.buffered == 0


def test_byte_by_byte_yields_the_same_frames(stun_vectors: dict[str, StunVector]) -> None:
    """Fed one byte at a time, the stream gives the same frames."""
    wire, frames = _mixed(stun_vectors)
    deframer = StreamDeframer()
    assert _feed_all(deframer, [wire[i : i + 1] for i in range(len(wire))]) == frames
    assert deframer.buffered == 0


@pytest.mark.parametrize("seed", range(20))
def test_random_chunks_yield_the_same_frames(
    seed: int, stun_vectors: dict[str, StunVector]
) -> None:
    """Fed in random chunks (some empty), the stream gives the same frames."""
    wire, frames = _mixed(stun_vectors)
    rng = random.Random(seed)
    cuts = sorted(rng.randrange(len(wire) + 1) for _ in range(rng.randrange(1, 40)))
    bounds = [0, *cuts, len(wire)]
    chunks = [wire[a:b] for a, b in itertools.pairwise(bounds)]
    assert _feed_all(StreamDeframer(), chunks) == frames


def test_frames_decode_to_what_was_sent(stun_vectors: dict[str, StunVector]) -> None:
    """Frames cut from the stream are whole messages for decode / parse_channel_data."""
    wire, _ = _mixed(stun_vectors)
    for frame in StreamDeframer().feed(wire):
        if frame[0] < 0x40:
            assert decode(frame).raw == frame
        else:
            _, data = parse_channel_data(frame)
            assert len(data) == int.from_bytes(frame[2:4], "big")


def test_incomplete_frame_is_buffered() -> None:
    """Bytes of an incomplete frame are kept until the rest arrives."""
    message = _stun(10)
    deframer = StreamDeframer()
    assert deframer.feed(message[:3]) == []
    assert deframer.buffered == 3
    assert deframer.feed(message[3:-1]) == []
    assert deframer.buffered == len(message) - 1
    assert deframer.feed(message[-1:] + message[:2]) == [message]
    assert deframer.buffered == 2


def test_channel_data_waits_for_its_padding() -> None:
    """A ChannelData frame is complete only once its padding has arrived (§12.5)."""
    padded = frame_channel_data(0x4000, b"abcde", pad=True)
    deframer = StreamDeframer()
    assert deframer.feed(padded[:-1]) == []
    assert deframer.feed(padded[-1:]) == [frame_channel_data(0x4000, b"abcde")]


@pytest.mark.parametrize("first", [0x80, 0xBF, 0xC0, 0xFF])
def test_garbage_first_bits_fail_for_good(first: int) -> None:
    """First bits 10 or 11 are neither STUN nor ChannelData: the stream is lost, and every
    later call raises too."""
    deframer = StreamDeframer()
    with pytest.raises(StunDecodeError, match="neither"):
        deframer.feed(bytes([first, 0, 0, 0]))
    for later in (_stun(0), b"", frame_channel_data(0x4000, b"")):
        with pytest.raises(StunDecodeError, match="neither"):
            deframer.feed(later)


def test_rfc5766_channel_numbers_are_framed() -> None:
    """Channels 0x5000-0x7FFF (RFC 5766 §11) are cut like any other ChannelData frame."""
    frames = [frame_channel_data(c, b"abcde", pad=True) for c in (0x5000, 0x7FFF)]
    assert StreamDeframer().feed(b"".join(frames)) == [f[:9] for f in frames]


@pytest.mark.parametrize(
    "header",
    [
        # STUN header: type, length 8173 -> 8193 bytes with the header
        b"\x00\x01\x1f\xed",
        # ChannelData: channel, length 8189 -> 8193 bytes with the header
        b"\x40\x00\x1f\xfd",
    ],
)
def test_over_limit_frame_fails_as_soon_as_header_is_seen(header: bytes) -> None:
    """A frame larger than the limit is refused from its first 4 bytes: nothing is buffered
    waiting for it."""
    deframer = StreamDeframer()
    with pytest.raises(StunDecodeError, match="exceeds"):
        deframer.feed(header)
    with pytest.raises(StunDecodeError, match="exceeds"):
        deframer.feed(_stun(0))


def test_frame_at_the_limit_is_accepted() -> None:
    """A frame of exactly max_message_size bytes passes."""
    message = _stun(100)
    deframer = StreamDeframer(max_message_size=len(message))
    assert deframer.feed(message) == [message]
    assert StreamDeframer().max_message_size == DEFAULT_MAX_MESSAGE_SIZE
    with pytest.raises(StunDecodeError):
        StreamDeframer(max_message_size=len(message) - 1).feed(message)


def test_short_garbage_waits_for_a_header() -> None:
    """Fewer than 4 bytes cannot be judged yet: the deframer waits."""
    deframer = StreamDeframer()
    assert deframer.feed(b"\xff\xff\xff") == []
    assert deframer.buffered == 3


@pytest.mark.parametrize("name", ["seed_http_get.raw", "seed_http_post_clen.raw"])
def test_http_on_the_stun_port_fails_or_waits(fuzz_material: FuzzMaterial, name: str) -> None:
    """An HTTP request on a STUN stream gives an error or waits for more; no frame, no crash,
    whether fed whole or byte by byte."""
    request = fuzz_material.coturn_seed(name)
    assert request[:4] in (b"GET ", b"POST")
    for chunks in ([request], [request[i : i + 1] for i in range(len(request))]):
        deframer = StreamDeframer()
        try:
            frames = _feed_all(deframer, chunks)
        except StunDecodeError:
            continue
        assert frames == []
        assert deframer.buffered == len(request)


def test_coturn_client_corpus_streams(fuzz_material: FuzzMaterial) -> None:
    """coturn's client seeds, read as streams, give frames that re-join to the input, each of
    which decodes or is rejected with StunDecodeError; or the stream is refused."""
    seeds = fuzz_material.coturn_seeds()
    assert seeds
    for name, data in seeds.items():
        deframer = StreamDeframer()
        try:
            frames = deframer.feed(data)
        except StunDecodeError:
            continue
        if all(frame[0] < 0x40 for frame in frames):
            assert b"".join(frames) + data[len(data) - deframer.buffered :] == data, name
        for frame in frames:
            try:
                if frame[0] < 0x40:
                    decode(frame)
                else:
                    parse_channel_data(frame)
            except StunDecodeError:
                pass


def test_pop_hands_out_one_frame_at_a_time_and_take_rest_returns_the_remainder() -> None:
    """After any frame the caller may stop parsing: take_rest gives the unparsed bytes as sent."""
    deframer = StreamDeframer()
    first = frame_channel_data(0x4000, b"abc", pad=True)
    raw = b"\xff\xfe application bytes, not STUN"
    deframer.push(first + raw)
    assert deframer.pop() == first[:7]
    assert deframer.take_rest() == raw
    assert deframer.buffered == 0
    assert deframer.pop() is None


def test_buffer_is_compacted_while_streaming() -> None:
    """A long stream of small frames does not keep every byte it ever received."""
    deframer = StreamDeframer()
    frame = frame_channel_data(0x4000, b"x" * 100, pad=True)
    for _ in range(1000):
        assert deframer.feed(frame) == [frame]
    assert len(deframer._buffer) < 4 * len(frame)
