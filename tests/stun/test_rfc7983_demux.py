"""RFC 7983 §7 (with RFC 8656 §12): telling STUN, ChannelData and the rest apart by first byte."""

from __future__ import annotations

import pytest

from stun import PacketKind, classify, frame_channel_data
from stun.channeldata import CHANNEL_FIRST_BYTE_MAX, CHANNEL_FIRST_BYTE_MIN
from tests.conftest import StunVector

#: RFC 7983 §7 ranges: (first, last, kind). 16-19 ZRTP, 20-63 DTLS, 128-191 RTP are not ours.
RANGES = [
    (0, 3, PacketKind.STUN),
    (4, 63, PacketKind.OTHER),
    (64, 127, PacketKind.CHANNEL_DATA),
    (128, 255, PacketKind.OTHER),
]


@pytest.mark.parametrize(("first", "last", "kind"), RANGES)
def test_first_byte_ranges(first: int, last: int, kind: PacketKind) -> None:
    """0-3 is STUN, 64-127 a TURN channel (0x4000-0x7FFF, RFC 5766 range), the rest not ours."""
    for byte in range(first, last + 1):
        assert classify(bytes([byte, 0, 0, 0])) is kind, byte


def test_every_byte_is_in_exactly_one_range() -> None:
    """The ranges above cover 0-255 without overlap, so the table is complete."""
    covered = [b for first, last, _ in RANGES for b in range(first, last + 1)]
    assert covered == list(range(256))


def test_channel_first_bytes_are_the_channel_range() -> None:
    """The named first-byte bounds are 64-127, the numbers turnd.service's fork inlines."""
    assert (CHANNEL_FIRST_BYTE_MIN, CHANNEL_FIRST_BYTE_MAX) == (64, 127)


def test_empty_packet_is_other() -> None:
    """An empty datagram is nobody's."""
    assert classify(b"") is PacketKind.OTHER


def test_single_byte_is_classified() -> None:
    """Classification needs only the first byte."""
    assert classify(b"\x01") is PacketKind.STUN
    assert classify(b"\x40") is PacketKind.CHANNEL_DATA


def test_vectors_classify_as_stun(stun_vector: StunVector) -> None:
    """Every sample STUN message classifies as STUN."""
    assert classify(stun_vector.data) is PacketKind.STUN


def test_channel_data_classifies_as_channel_data() -> None:
    """Every valid channel's frame classifies as ChannelData."""
    for channel in range(0x4000, 0x8000, 0x0FF):
        assert classify(frame_channel_data(channel, b"x")) is PacketKind.CHANNEL_DATA
