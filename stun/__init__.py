"""STUN/TURN wire format: bytes in, values out. No sockets, no clock, no randomness."""

from stun.addresses import Address, AddressFamily, make_address
from stun.attributes import AttributeType
from stun.channeldata import PacketKind, classify, frame_channel_data, parse_channel_data
from stun.errors import REASON_PHRASES, StunDecodeError
from stun.framing import StreamDeframer
from stun.message import (
    Header,
    Integrity,
    Message,
    MessageClass,
    Method,
    check_integrity,
    decode,
    encode,
)

__all__ = [
    "REASON_PHRASES",
    "Address",
    "AddressFamily",
    "AttributeType",
    "Header",
    "Integrity",
    "Message",
    "MessageClass",
    "Method",
    "PacketKind",
    "StreamDeframer",
    "StunDecodeError",
    "check_integrity",
    "classify",
    "decode",
    "encode",
    "frame_channel_data",
    "make_address",
    "parse_channel_data",
]
