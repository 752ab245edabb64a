"""ChannelData messages (RFC 8656 §12.4, §12.5) and first-byte demultiplexing (RFC 7983).

A ChannelData message is a 4-byte header — channel number and data length — followed by the
data. RFC 8656 §12 lets a client bind 0x4000-0x4FFF; RFC 5766 §11, which it replaced, allowed
0x4000-0x7FFF, and RFC 5766 clients still in use (coturn's turnutils_uclient among them) bind
numbers above 0x4FFF. turnd accepts the RFC 5766 range: on a TURN port the first bytes 0x50-0x7F
mean nothing else (RFC 7983 leaves them unassigned), so accepting them costs no ambiguity.

Over UDP the datagram may carry up to 3 bytes of padding after the data and must not be shorter
than the length claims (§12.5); over a stream the message is always padded to a multiple of 4
(§12.5), which the stream deframer handles.

RFC 7983 §7 splits a port shared by several protocols on the first byte: 0-3 STUN, 64-79 TURN
channels (80-127 too here, for RFC 5766 channel numbers), anything else is not ours.
:func:`classify` is one table lookup; it runs once per packet.

These functions sit on the relay hot path: precompiled structs, no objects per packet.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from stun.errors import StunDecodeError

CHANNEL_MIN = 0x4000  # RFC 8656 §12: first valid channel number
CHANNEL_MAX = 0x7FFF  # RFC 5766 §11: last valid channel number (RFC 8656 §12 stops at 0x4FFF)
#: The first byte of every ChannelData message, and of nothing else on a TURN port (RFC 7983 §7:
#: 64-79 are TURN channels, 80-127 unassigned): the high byte of CHANNEL_MIN..CHANNEL_MAX. The
#: one owner of this test; the shell's per-datagram fork inlines the two numbers (see there).
CHANNEL_FIRST_BYTE_MIN = CHANNEL_MIN >> 8
CHANNEL_FIRST_BYTE_MAX = CHANNEL_MAX >> 8
CHANNEL_HEADER = struct.Struct("!HH")
CHANNEL_HEADER_SIZE = 4


class PacketKind(IntEnum):
    """What the first byte of a packet says it is (RFC 7983 §7)."""

    STUN = 0
    CHANNEL_DATA = 1
    OTHER = 2


_KINDS: tuple[PacketKind, ...] = tuple(
    PacketKind.STUN
    if b <= 3
    else PacketKind.CHANNEL_DATA
    if CHANNEL_FIRST_BYTE_MIN <= b <= CHANNEL_FIRST_BYTE_MAX
    else PacketKind.OTHER
    for b in range(256)
)


def classify(data: bytes) -> PacketKind:
    """Classify a packet by its first byte; an empty packet is OTHER."""
    return _KINDS[data[0]] if data else PacketKind.OTHER


def is_valid_channel(number: int) -> bool:
    """Whether ``number`` is a channel a client may bind (RFC 5766 §11 range, see above)."""
    return CHANNEL_MIN <= number <= CHANNEL_MAX


def parse_channel_data(data: bytes) -> tuple[int, bytes]:
    """Split a ChannelData datagram into (channel, application data).

    Raises :class:`StunDecodeError` when the datagram is shorter than its length field claims
    or the channel number is outside 0x4000-0x7FFF. Trailing padding is ignored (§12.5).
    """
    if len(data) < CHANNEL_HEADER_SIZE:
        raise StunDecodeError("ChannelData shorter than its header")
    channel, length = CHANNEL_HEADER.unpack_from(data)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise StunDecodeError(f"channel number {channel:#06x} outside 0x4000-0x7FFF")
    end = CHANNEL_HEADER_SIZE + length
    if end > len(data):
        raise StunDecodeError("ChannelData shorter than its length field")
    return channel, data[CHANNEL_HEADER_SIZE:end]


def frame_channel_data(channel: int, payload: bytes, *, pad: bool = False) -> bytes:
    """Build a ChannelData message; ``pad`` rounds it up to 4 bytes, as streams require."""
    header = CHANNEL_HEADER.pack(channel, len(payload))
    if pad and len(payload) % 4:
        return header + payload + bytes(-len(payload) % 4)
    return header + payload
