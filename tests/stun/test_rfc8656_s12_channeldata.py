"""RFC 8656 §12: ChannelData messages — channel range, length, padding over UDP."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stun import (
    PacketKind,
    StunDecodeError,
    classify,
    decode,
    frame_channel_data,
    parse_channel_data,
)
from stun import attributes as at
from stun.channeldata import CHANNEL_MAX, CHANNEL_MIN, is_valid_channel
from tests.conftest import FuzzMaterial


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 100, 1500, 0xFFFF])
def test_frame_then_parse_round_trips(size: int) -> None:
    """A framed message parses back to its channel and exact data, whatever the length."""
    payload = bytes(i & 0xFF for i in range(size))
    frame = frame_channel_data(0x4ABC, payload)
    assert len(frame) == 4 + size
    assert frame[:2] == b"\x4a\xbc"
    assert int.from_bytes(frame[2:4], "big") == size
    assert parse_channel_data(frame) == (0x4ABC, payload)


@pytest.mark.parametrize("size", range(9))
def test_stream_framing_pads_to_four(size: int) -> None:
    """Over a stream the message is padded to a multiple of 4 with the length unchanged
    (§12.5); the padded frame still parses to the same data."""
    frame = frame_channel_data(CHANNEL_MIN, b"x" * size, pad=True)
    assert len(frame) % 4 == 0
    assert len(frame) - (4 + size) == -size % 4
    assert parse_channel_data(frame) == (CHANNEL_MIN, b"x" * size)


@pytest.mark.parametrize("padding", [b"\x00", b"\x00\x00", b"\xff\xff\xff"])
def test_udp_padding_is_ignored(padding: bytes) -> None:
    """Over UDP up to 3 bytes of padding may follow the data; they are not part of it (§12.5)."""
    assert parse_channel_data(frame_channel_data(0x4001, b"hello") + padding) == (
        0x4001,
        b"hello",
    )


@pytest.mark.parametrize("size", range(4))
def test_datagram_shorter_than_header_is_rejected(size: int) -> None:
    """Fewer than 4 bytes is not a ChannelData message."""
    with pytest.raises(StunDecodeError, match="header"):
        parse_channel_data(frame_channel_data(0x4000, b"")[:size])


@pytest.mark.parametrize("missing", [1, 2, 5])
def test_datagram_shorter_than_length_is_rejected(missing: int) -> None:
    """A datagram shorter than its length field claims is discarded (§12.4)."""
    frame = frame_channel_data(0x4000, b"12345")
    with pytest.raises(StunDecodeError, match="length"):
        parse_channel_data(frame[:-missing])


@pytest.mark.parametrize("channel", [0x0000, 0x3FFF, 0x8000, 0xFFFF])
def test_channel_outside_range_is_rejected(channel: int) -> None:
    """Only channel numbers 0x4000-0x7FFF are valid (RFC 5766 §11; RFC 8656 §12 uses 0x4FFF)."""
    assert not is_valid_channel(channel)
    with pytest.raises(StunDecodeError, match="outside"):
        parse_channel_data(channel.to_bytes(2, "big") + b"\x00\x00")


@pytest.mark.parametrize("channel", [CHANNEL_MIN, 0x4567, 0x4FFF, 0x5000, CHANNEL_MAX])
def test_channel_range_boundaries_are_valid(channel: int) -> None:
    """0x4000 and 0x7FFF are the first and last accepted channels, RFC 8656's 0x4FFF within."""
    assert is_valid_channel(channel)
    assert parse_channel_data(frame_channel_data(channel, b"")) == (channel, b"")


def test_go_string_literal_escapes(go_literal: Callable[[str], bytes]) -> None:
    """The Go literal reader decodes every escape Go's %q produces (and UTF-8 runes)."""
    assert go_literal(r'"@\x00\x00d"') == b"@\x00\x00d"
    assert go_literal(r'"\a\b\f\n\r\t\v\\\"\'"') == b"\a\b\f\n\r\t\v\\\"'"
    assert go_literal(r'"\101\000"') == b"A\x00"
    assert go_literal(r'"\u00e9\U0001F600"') == "\u00e9\U0001f600".encode()
    assert go_literal('"\u03c0"') == "\u03c0".encode()
    assert go_literal('""') == b""
    for bad in ('"\\q"', "no quotes", '"'):
        with pytest.raises(ValueError):
            go_literal(bad)


def test_pion_corpus_parses_or_is_rejected(fuzz_material: FuzzMaterial) -> None:
    """Every pion FuzzChannelData seed parses or raises StunDecodeError, nothing else."""
    corpus = fuzz_material.pion_channel_data()
    assert len(corpus) >= 3
    outcomes = {}
    for name, payload in corpus.items():
        try:
            channel, data = parse_channel_data(payload)
        except StunDecodeError:
            outcomes[name] = "rejected"
        else:
            assert is_valid_channel(channel)
            assert len(data) == int.from_bytes(payload[2:4], "big")
            outcomes[name] = "parsed"
    assert sorted(outcomes.values()) == ["parsed", "parsed", "rejected"]


def test_pion_corpus_matches_the_captures(fuzz_material: FuzzMaterial) -> None:
    """The Go literals decode to the very frames captured in 02_chandata (checks the reader)."""
    frames = fuzz_material.capture("02_chandata")
    payloads = set(fuzz_material.pion_channel_data().values())
    assert frames[1] in payloads
    assert frames[0] + frames[1] in payloads


def test_captured_channel_data_frames_parse(fuzz_material: FuzzMaterial) -> None:
    """Real ChannelData frames (channel 0x4000) carry a STUN Binding request and DTLS."""
    frames = fuzz_material.capture("02_chandata")
    assert frames
    parsed = [parse_channel_data(frame) for frame in frames]
    assert {channel for channel, _ in parsed} == {0x4000}
    assert all(classify(frame) is PacketKind.CHANNEL_DATA for frame in frames)
    kinds = [classify(data) for _, data in parsed]
    assert kinds == [PacketKind.STUN, PacketKind.OTHER]
    inner = decode(parsed[0][1])
    assert inner.has(at.Username)
    assert inner.has(at.Fingerprint)
    assert parsed[1][1][0] == 22  # a DTLS handshake record (RFC 7983 §7: 20-63)
