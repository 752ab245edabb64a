"""Cutting a TCP or TLS byte stream into STUN messages and ChannelData messages.

RFC 8656 §12.5 and RFC 8489 §6.2.2: over a stream, a STUN message is its 20-byte header plus the
length in the header; a ChannelData message is its 4-byte header plus the data length, padded to a
multiple of 4. The first two bits tell which (00 STUN, 01 ChannelData); anything else means the
peer is not speaking STUN and the stream cannot be resynchronised, so the deframer fails for good.

Theory of operation: :class:`StreamDeframer` buffers bytes and returns every complete frame it can
cut. It never holds more than one incomplete frame, and refuses a frame larger than
``max_message_size`` as soon as its header is seen, so a peer cannot make it buffer without limit.
"""

from __future__ import annotations

import struct

from stun.errors import StunDecodeError

#: Default largest frame on a stream. A STUN message over a stream may be as large as 64 KiB, but
#: nothing a TURN client sends needs more than an MTU-sized payload plus headers; 8 KiB leaves
#: room for jumbo frames and keeps per-connection buffering small.
DEFAULT_MAX_MESSAGE_SIZE = 8192

_PREFIX = struct.Struct("!HH")


class StreamDeframer:
    """Incremental splitter of a stream into whole frames (bytes, padding removed)."""

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._start = 0  # bytes of _buffer already handed out
        self._failed: StunDecodeError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buffer) - self._start

    def push(self, data: bytes) -> None:
        """Add ``data`` to the stream; :meth:`pop` cuts frames from it."""
        if self._start and self._start >= len(self._buffer) // 2:
            del self._buffer[: self._start]  # compact before growing: O(1) amortised per byte
            self._start = 0
        self._buffer += data

    def pop(self) -> bytes | None:
        """The next whole frame, or None until more bytes arrive.

        Raises :class:`StunDecodeError` on a frame that is not STUN or ChannelData, or is larger
        than the limit; after that every call raises.
        """
        if self._failed is not None:
            raise self._failed
        buf = self._buffer
        offset = self._start
        if len(buf) - offset < 4:
            return None
        first, length = _PREFIX.unpack_from(buf, offset)
        top = first >> 14
        if top == 0:
            size = 20 + length
            wire_size = size
        elif top == 1:  # 0x4000-0x7FFF: every number is a valid channel
            size = 4 + length
            wire_size = size + (-length % 4)
        else:
            self._failed = StunDecodeError("stream data is neither STUN nor ChannelData")
            raise self._failed
        if size > self.max_message_size:
            self._failed = StunDecodeError(
                f"frame of {size} bytes exceeds the limit of {self.max_message_size}"
            )
            raise self._failed
        if len(buf) - offset < wire_size:
            return None
        self._start = offset + wire_size
        return bytes(buf[offset : offset + size])

    def take_rest(self) -> bytes:
        """Everything pushed but not popped, and forget it (the stream stops being STUN:
        after an RFC 6062 ConnectionBind the rest of the connection is application data)."""
        rest = bytes(self._buffer[self._start :])
        self._buffer.clear()
        self._start = 0
        return rest

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return the frames it completes, in order (``push`` then ``pop``)."""
        self.push(data)
        frames: list[bytes] = []
        while (frame := self.pop()) is not None:
            frames.append(frame)
        return frames
