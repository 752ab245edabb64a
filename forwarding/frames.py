"""The sealed backbone frame: what one node sends another over the cluster's UDP backbone.

Theory of operation (DESIGN.md "The cluster", Backbone). A frame carries a client's or a peer's
datagram (or a heartbeat / control body) from the node that received it to the node that must
handle it, with the original 5-tuple so the receiver can answer as if it had received it itself.

Wire format (all integers big-endian)::

    cleartext header, also the AEAD associated data (20 bytes)
        version (1) = 1 | key id (1) | origin node (2) | epoch (8) | counter (8)
    ChaCha20-Poly1305 ciphertext (RFC 8439) of
        type (1) | hop (1) | transport (1) | source address | destination address | payload
    followed by its 16-byte tag

    address = family (1: 4 or 6) | packed ip (4 or 16) | port (2)
    transport = 1 udp, 2 tcp, 3 tls

Keys. The cluster key (32 bytes, selected by the key id so keys can be rotated) is never used
directly: each sender incarnation has its own subkey
``HKDF-SHA256(cluster key, salt=None, info=b"turnd backbone v1" | origin (2) | epoch (8))`` and the
nonce is ``4 zero bytes | counter (8)``. The epoch is the sender's boot time in ms and the counter
starts at 1 each boot, so a (subkey, nonce) pair never repeats across nodes or restarts.

Replay protection, per origin node: the newest authenticated epoch and, within it, a sliding
window of :data:`REPLAY_WINDOW` counters below the highest counter seen (an int bitmask, as in
RFC 4303 §3.4.3). A frame from an older epoch, below the window, or already seen is a replay; a
newer epoch that authenticates means the sender restarted and resets the window.

Memory. A forged header must not make the receiver grow: cipher objects are cached per
(key id, origin) for one epoch only, inserted only after a frame authenticated, and a subkey is
derived only for an epoch at least as new as the newest authenticated one of that origin.

Checks, in order, each with its :class:`FrameError` reason: length ("short"), version
("version"), origin is a configured node other than this one ("unknown_node", before any crypto),
key id ("key"), epoch and window ("replay"), tag ("auth"), inner encoding ("malformed").
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping
from enum import IntEnum
from functools import lru_cache
from typing import Literal

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from forwarding.hashing import IP_CACHE_SIZE, check_node_id, packed_ip
from stun.addresses import Address

VERSION = 1

#: Length of a cluster key: ChaCha20-Poly1305 takes a 256-bit key.
KEY_SIZE = 32
#: Key ids are one byte on the wire.
KEY_ID_MAX = 0xFF
#: HKDF info prefix; a new wire version gets a new label so keys never cross versions.
SUBKEY_LABEL = b"turnd backbone v1"
#: Counters remembered below the highest one seen per origin: enough for the reordering of a
#: LAN backbone at line rate, small enough that the bitmask stays a cheap int.
REPLAY_WINDOW = 1024
#: Hop counts are one byte on the wire.
HOP_MAX = 0xFF

_U64_MAX = (1 << 64) - 1
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1

_HEADER = struct.Struct("!BBHQQ")
_INNER = struct.Struct("!BBB")
_PORT = struct.Struct("!H")
_TAG_SIZE = 16
#: Offset of the counter in the header: its 8 bytes are the tail of the nonce.
_COUNTER_AT = 12
_NONCE_PREFIX = bytes(4)
_MIN_FRAME = _HEADER.size + _TAG_SIZE

_IPV4_ADDRESS_SIZE = 1 + 4 + 2


class FrameType(IntEnum):
    """What a backbone frame carries."""

    CLIENT = 1  # a datagram from a client to the service address
    PEER = 2  # a datagram from a peer to a relay address
    HEARTBEAT = 3  # membership: "I am alive" (payload: the heartbeat body)
    CONTROL = 4  # cluster control messages (payload: the body)


TRANSPORT_CODES: dict[str, int] = {"udp": 1, "tcp": 2, "tls": 3}
_TRANSPORT_NAMES: dict[int, str] = {code: name for name, code in TRANSPORT_CODES.items()}
_FRAME_TYPES: dict[int, FrameType] = {int(t): t for t in FrameType}

FrameErrorReason = Literal["short", "version", "key", "auth", "replay", "unknown_node", "malformed"]
#: Every reason :class:`FrameError` can carry, e.g. to pre-create drop counters.
FRAME_ERROR_REASONS: tuple[FrameErrorReason, ...] = (
    "short",
    "version",
    "key",
    "auth",
    "replay",
    "unknown_node",
    "malformed",
)


class FrameError(ValueError):
    """A backbone datagram was rejected; ``reason`` names why (one of FRAME_ERROR_REASONS)."""

    def __init__(self, reason: FrameErrorReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: FrameErrorReason = reason


@attrs.frozen
class Frame:
    """One backbone frame, in clear.

    CLIENT: ``source`` is the client, ``destination`` the service address it sent to. PEER:
    ``source`` is the peer, ``destination`` the relay address. HEARTBEAT/CONTROL: any addresses
    (by convention the sender's backbone address for both); the body is the payload.
    """

    type: FrameType
    origin: int
    hop: int
    transport: str
    source: Address
    destination: Address
    payload: bytes


@lru_cache(maxsize=IP_CACHE_SIZE)
def _encode_address(address: Address) -> bytes:
    raw = packed_ip(address.host)
    return bytes((4 if len(raw) == 4 else 6,)) + raw + _PORT.pack(address.port)


@lru_cache(maxsize=IP_CACHE_SIZE)
def _decode_address(raw: bytes) -> Address:
    """An address from its packed ip and port (family already checked by the caller)."""
    ip = raw[:-2]
    text = _ipv4_text(ip) if len(ip) == 4 else _ipv6_text(ip)
    return Address(text, _PORT.unpack_from(raw, len(ip))[0])


def _ipv4_text(raw: bytes) -> str:
    return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"


def _ipv6_text(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))


def _read_address(plain: bytes, offset: int) -> tuple[Address, int]:
    """The address at ``offset`` and the offset after it; FrameError("malformed") if bad."""
    if offset >= len(plain):
        raise FrameError("malformed", "address missing")
    family = plain[offset]
    if family == 4:
        end = offset + 1 + 4 + 2
    elif family == 6:
        end = offset + 1 + 16 + 2
    else:
        raise FrameError("malformed", f"address family {family}")
    if end > len(plain):
        raise FrameError("malformed", "address truncated")
    return _decode_address(plain[offset + 1 : end]), end


def derive_subkey(cluster_key: bytes, origin: int, epoch: int) -> bytes:
    """The subkey of one sender incarnation (see the module docstring)."""
    info = SUBKEY_LABEL + origin.to_bytes(2, "big") + epoch.to_bytes(8, "big")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(
        cluster_key
    )


class _Window:
    """Replay state of one origin: newest authenticated epoch, highest counter, seen bitmask.

    Bit ``i`` of ``seen`` stands for counter ``highest - i``.
    """

    __slots__ = ("epoch", "highest", "seen")

    def __init__(self, epoch: int, counter: int) -> None:
        self.epoch = epoch
        self.highest = counter
        self.seen = 1

    def is_replay(self, counter: int) -> bool:
        """True if ``counter`` (in this epoch) is below the window or already seen."""
        if counter > self.highest:
            return False
        behind = self.highest - counter
        return behind >= REPLAY_WINDOW or bool((self.seen >> behind) & 1)

    def record(self, counter: int) -> None:
        """Mark ``counter`` (not a replay, in this epoch) as seen."""
        if counter > self.highest:
            shift = counter - self.highest
            self.seen = ((self.seen << shift) | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
            self.highest = counter
        else:
            self.seen |= 1 << (self.highest - counter)


def _check_key(key_id: int, key: bytes) -> None:
    if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 <= key_id <= KEY_ID_MAX:
        raise ValueError(f"key id must be an int in 0..{KEY_ID_MAX}, not {key_id!r}")
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise ValueError(f"cluster key {key_id} must be {KEY_SIZE} bytes")


class BackboneCodec:
    """Seals and opens backbone frames for one node incarnation; keeps the replay state.

    ``keys`` maps key ids (0..255) to 32-byte cluster keys, ``send_key`` picks the one used to
    seal, ``epoch`` (> 0) is this process's incarnation (boot time in ms), ``nodes`` the node ids
    accepted as origins (this node's own id never is: a frame of ours coming back is reflected).
    """

    #: Bytes a frame adds to its payload when both its addresses are IPv4.
    overhead: int = _HEADER.size + _INNER.size + 2 * _IPV4_ADDRESS_SIZE + _TAG_SIZE

    def __init__(
        self,
        keys: Mapping[int, bytes],
        send_key: int,
        node_id: int,
        epoch: int,
        nodes: Iterable[int],
    ) -> None:
        self.node_id = check_node_id(node_id)
        if not 0 < epoch <= _U64_MAX:
            raise ValueError(f"epoch must be in 1..2**64-1, not {epoch}")
        self.epoch = epoch
        self._keys: dict[int, bytes] = {}
        for key_id, key in keys.items():
            _check_key(key_id, key)
            self._keys[key_id] = bytes(key)
        self._counter = 1
        self._origins: frozenset[int] = frozenset()
        self._receive: dict[tuple[int, int], tuple[int, ChaCha20Poly1305]] = {}
        self._windows: dict[int, _Window] = {}
        self.set_nodes(nodes)
        self.send_key = send_key
        self._send = self._send_cipher(send_key)

    # --- configuration ----------------------------------------------------------------------

    @property
    def key_ids(self) -> frozenset[int]:
        """The key ids this codec can open frames under."""
        return frozenset(self._keys)

    @property
    def cached_ciphers(self) -> int:
        """Receive cipher objects held (at most one per key id and origin)."""
        return len(self._receive)

    @property
    def next_counter(self) -> int:
        """The counter the next sealed frame will carry."""
        return self._counter

    def add_key(self, key_id: int, key: bytes) -> None:
        """Accept frames under ``key_id`` (replacing that id's key, if any)."""
        _check_key(key_id, key)
        key = bytes(key)
        if self._keys.get(key_id) == key:
            return
        self._keys[key_id] = key
        self._forget_key(key_id)
        if key_id == self.send_key:
            self.set_send_key(key_id)

    def remove_key(self, key_id: int) -> None:
        """Stop accepting frames under ``key_id``; KeyError if unknown, ValueError if it is the
        send key (switch with :meth:`set_send_key` first)."""
        if key_id == self.send_key:
            raise ValueError(f"key {key_id} is the send key; set another send key first")
        del self._keys[key_id]
        self._forget_key(key_id)

    def set_send_key(self, key_id: int) -> None:
        """Seal from now on under ``key_id`` (ValueError if the codec does not hold it)."""
        self._send = self._send_cipher(key_id)
        self.send_key = key_id

    def _send_cipher(self, key_id: int) -> ChaCha20Poly1305:
        key = self._keys.get(key_id)
        if key is None:
            raise ValueError(f"send key {key_id} is not among the cluster keys")
        return ChaCha20Poly1305(derive_subkey(key, self.node_id, self.epoch))

    def set_nodes(self, nodes: Iterable[int]) -> None:
        """Accept frames from ``nodes`` only (this node's own id is always refused)."""
        origins = frozenset(check_node_id(node) for node in nodes) - {self.node_id}
        self._origins = origins
        for cached in [entry for entry in self._receive if entry[1] not in origins]:
            del self._receive[cached]
        # Replay windows of removed nodes stay: they are tiny, and dropping them would let old
        # frames of a node that is later added back be replayed.

    def _forget_key(self, key_id: int) -> None:
        for cached in [entry for entry in self._receive if entry[0] == key_id]:
            del self._receive[cached]

    # --- seal / open ------------------------------------------------------------------------

    def seal(self, frame: Frame) -> bytes:
        """The sealed bytes of ``frame`` (whose origin must be this node); uses one counter."""
        if frame.origin != self.node_id:
            raise ValueError(f"frame origin {frame.origin} is not this node ({self.node_id})")
        transport = TRANSPORT_CODES.get(frame.transport)
        if transport is None:
            raise ValueError(f"unknown transport {frame.transport!r}")
        if frame.type not in _FRAME_TYPES:
            raise ValueError(f"unknown frame type {frame.type!r}")
        if not 0 <= frame.hop <= HOP_MAX:
            raise ValueError(f"hop {frame.hop} outside 0..{HOP_MAX}")
        counter = self._counter
        if counter > _U64_MAX:
            raise OverflowError("frame counter exhausted: restart with a new epoch")
        try:
            plain = (
                _INNER.pack(frame.type, frame.hop, transport)
                + _encode_address(frame.source)
                + _encode_address(frame.destination)
                + frame.payload
            )
        except struct.error as exc:
            raise ValueError(f"cannot encode frame: {exc}") from None
        header = _HEADER.pack(VERSION, self.send_key, self.node_id, self.epoch, counter)
        sealed = self._send.encrypt(_NONCE_PREFIX + header[_COUNTER_AT:], plain, header)
        self._counter = counter + 1
        return header + sealed

    def open(self, data: bytes) -> Frame:
        """The frame sealed in ``data``, now recorded against replay; raises FrameError."""
        if len(data) < _MIN_FRAME:
            raise FrameError("short", f"{len(data)} bytes")
        version, key_id, origin, epoch, counter = _HEADER.unpack_from(data)
        if version != VERSION:
            raise FrameError("version", f"version {version}")
        if origin not in self._origins:
            raise FrameError("unknown_node", f"origin {origin}")
        cluster_key = self._keys.get(key_id)
        if cluster_key is None:
            raise FrameError("key", f"key id {key_id}")
        window = self._windows.get(origin)
        if window is not None and (
            epoch < window.epoch or (epoch == window.epoch and window.is_replay(counter))
        ):
            raise FrameError("replay", f"origin {origin} epoch {epoch} counter {counter}")
        cached = self._receive.get((key_id, origin))
        if cached is not None and cached[0] == epoch:
            aead = cached[1]
            fresh = False
        else:
            aead = ChaCha20Poly1305(derive_subkey(cluster_key, origin, epoch))
            fresh = True
        header = data[: _HEADER.size]
        try:
            plain = aead.decrypt(_NONCE_PREFIX + header[_COUNTER_AT:], data[_HEADER.size :], header)
        except InvalidTag:
            raise FrameError("auth", f"origin {origin} key id {key_id}") from None
        if fresh:
            self._receive[(key_id, origin)] = (epoch, aead)
        if window is None:
            self._windows[origin] = _Window(epoch, counter)
        elif epoch > window.epoch:
            self._restarted(origin, epoch, counter)
        else:
            window.record(counter)
        return _decode_inner(origin, plain)

    def _restarted(self, origin: int, epoch: int, counter: int) -> None:
        """``origin`` authenticated a newer epoch: new window, drop its older cipher objects."""
        self._windows[origin] = _Window(epoch, counter)
        for key_id in self._keys:
            cached = self._receive.get((key_id, origin))
            if cached is not None and cached[0] < epoch:
                del self._receive[(key_id, origin)]


def _decode_inner(origin: int, plain: bytes) -> Frame:
    if len(plain) < _INNER.size:
        raise FrameError("malformed", "inner header truncated")
    type_code, hop, transport_code = _INNER.unpack_from(plain)
    frame_type = _FRAME_TYPES.get(type_code)
    if frame_type is None:
        raise FrameError("malformed", f"frame type {type_code}")
    transport = _TRANSPORT_NAMES.get(transport_code)
    if transport is None:
        raise FrameError("malformed", f"transport {transport_code}")
    source, offset = _read_address(plain, _INNER.size)
    destination, offset = _read_address(plain, offset)
    return Frame(frame_type, origin, hop, transport, source, destination, plain[offset:])
