"""The sealed backbone frame (DESIGN.md "The cluster", Backbone): round trips, the documented wire
format, authentication, replay protection across restarts, key rotation, and the decoder's
contract on hostile input — a Frame or a FrameError, never any other exception."""

from __future__ import annotations

import struct
from collections.abc import Callable
from hashlib import sha256
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

import forwarding.frames as frames_module
from forwarding.frames import (
    FRAME_ERROR_REASONS,
    REPLAY_WINDOW,
    BackboneCodec,
    Frame,
    FrameError,
    FrameType,
)
from stun.addresses import Address
from tests.fuzzing import fuzz

FUZZ = fuzz(300)

KEY0 = sha256(b"turnd test cluster key 0").digest()
KEY1 = sha256(b"turnd test cluster key 1").digest()
NODES = (1, 2, 3)
SENDER_EPOCH = 1_700_000_000_000

CLIENT4 = Address("198.51.100.7", 50000)
SERVICE4 = Address("192.0.2.1", 3478)
CLIENT6 = Address("2001:db8::7", 50000)
SERVICE6 = Address("2001:db8::1", 3478)

HEADER = struct.Struct("!BBHQQ")


def codec(
    node: int,
    epoch: int = SENDER_EPOCH,
    keys: dict[int, bytes] | None = None,
    send_key: int = 0,
    nodes: tuple[int, ...] = NODES,
) -> BackboneCodec:
    return BackboneCodec(keys or {0: KEY0}, send_key, node, epoch, nodes)


def frame(
    payload: bytes = b"datagram",
    origin: int = 1,
    kind: FrameType = FrameType.CLIENT,
    hop: int = 0,
    transport: str = "udp",
    source: Address = CLIENT4,
    destination: Address = SERVICE4,
) -> Frame:
    return Frame(kind, origin, hop, transport, source, destination, payload)


def reason_of(call: Callable[[], Any]) -> str:
    with pytest.raises(FrameError) as caught:
        call()
    return caught.value.reason


def open_or_reject(receiver: BackboneCodec, data: bytes) -> Frame | None:
    """open(), or None on FrameError (whose reason must be a known one); anything else fails."""
    try:
        return receiver.open(data)
    except FrameError as exc:
        assert exc.reason in FRAME_ERROR_REASONS
        return None


# --- round trips and the wire format -----------------------------------------------------------


@pytest.mark.parametrize("kind", list(FrameType))
@pytest.mark.parametrize(
    ("source", "destination"),
    [(CLIENT4, SERVICE4), (CLIENT6, SERVICE6), (CLIENT4, SERVICE6)],
    ids=["v4", "v6", "mixed"],
)
@pytest.mark.parametrize("size", [0, 200, 65536], ids=["empty", "200B", "64KiB"])
def test_round_trip(kind: FrameType, source: Address, destination: Address, size: int) -> None:
    """Every frame type, address family and payload size comes back exactly as sealed."""
    original = frame(bytes(range(256)) * (size // 256) + bytes(size % 256), kind=kind)
    original = Frame(kind, 1, 1, "tls", source, destination, original.payload)
    assert codec(2).open(codec(1).seal(original)) == original


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
@pytest.mark.parametrize("hop", [0, 1, 255])
def test_round_trip_of_transports_and_hops(transport: str, hop: int) -> None:
    """The transport name and the hop count survive the trip."""
    original = frame(hop=hop, transport=transport)
    assert codec(2).open(codec(1).seal(original)) == original


def test_overhead_is_what_an_ipv4_frame_adds() -> None:
    """overhead = sealed length - payload length for IPv4 addresses; IPv6 adds 12 per address."""
    sender = codec(1)
    assert len(sender.seal(frame(b"x" * 200))) == 200 + sender.overhead
    assert sender.overhead == 20 + 3 + 7 + 7 + 16
    v6 = frame(b"x" * 200, source=CLIENT6, destination=SERVICE6)
    assert len(sender.seal(v6)) == 200 + sender.overhead + 24


def test_wire_format_is_the_documented_one() -> None:
    """An independent decoder built from the module docstring (header, HKDF info, nonce, inner
    layout) reads a sealed frame."""
    sender = codec(1, keys={7: KEY1}, send_key=7)
    data = sender.seal(frame(b"hello", hop=1, transport="tcp", destination=SERVICE6))
    version, key_id, origin, epoch, counter = HEADER.unpack_from(data)
    assert (version, key_id, origin, epoch, counter) == (1, 7, 1, SENDER_EPOCH, 1)
    info = b"turnd backbone v1" + (1).to_bytes(2, "big") + SENDER_EPOCH.to_bytes(8, "big")
    subkey = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(KEY1)
    nonce = bytes(4) + counter.to_bytes(8, "big")
    plain = ChaCha20Poly1305(subkey).decrypt(nonce, data[20:], data[:20])
    expected = (
        bytes([FrameType.CLIENT, 1, 2])
        + bytes([4, 198, 51, 100, 7])
        + (50000).to_bytes(2, "big")
        + bytes([6])
        + bytes.fromhex("20010db8000000000000000000000001")
        + (3478).to_bytes(2, "big")
        + b"hello"
    )
    assert plain == expected


def test_counter_starts_at_one_and_counts_each_frame() -> None:
    """Each seal uses the next counter: 1, 2, 3, ..."""
    sender = codec(1)
    counters = [HEADER.unpack_from(sender.seal(frame()))[4] for _ in range(3)]
    assert counters == [1, 2, 3]
    assert sender.next_counter == 4


# --- authentication ----------------------------------------------------------------------------


def expected_tamper_reason(index: int) -> str:
    """The reason a flipped byte at ``index`` gives: header fields checked before the tag."""
    return {0: "version", 1: "key", 2: "unknown_node", 3: "unknown_node"}.get(index, "auth")


def test_tampering_with_any_single_byte_is_refused() -> None:
    """Flipping one bit anywhere in the frame is caught (by a header check or the tag), and the
    refused copies do not stop the genuine frame from being accepted afterwards."""
    receiver = codec(2)
    data = codec(1).seal(frame(b"payload", source=CLIENT6))
    for index in range(len(data)):
        for mask in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[index] ^= mask
            assert reason_of(lambda t=bytes(tampered): receiver.open(t)) == (
                expected_tamper_reason(index)
            ), index
    assert receiver.open(data).payload == b"payload"


def test_wrong_cluster_key_is_auth() -> None:
    """A frame sealed under another key with the same id does not authenticate."""
    data = codec(1, keys={0: KEY1}).seal(frame())
    assert reason_of(lambda: codec(2).open(data)) == "auth"


def test_unknown_key_id_is_key() -> None:
    """A key id the receiver does not hold is refused before any crypto."""
    data = codec(1, keys={5: KEY0}, send_key=5).seal(frame())
    assert reason_of(lambda: codec(2).open(data)) == "key"


def test_wrong_version_is_version() -> None:
    """Only version 1 is understood."""
    data = bytearray(codec(1).seal(frame()))
    data[0] = 2
    assert reason_of(lambda: codec(2).open(bytes(data))) == "version"


def test_origin_not_in_the_cluster_is_unknown_node() -> None:
    """A frame from a node id outside the configured nodes is refused."""
    data = codec(4, nodes=(1, 2, 3, 4)).seal(frame(origin=4))
    assert reason_of(lambda: codec(2).open(data)) == "unknown_node"


def test_a_reflected_frame_of_our_own_is_unknown_node() -> None:
    """A frame carrying this node's own id as origin is refused, though the id is configured."""
    sender = codec(1)
    data = sender.seal(frame())
    assert reason_of(lambda: sender.open(data)) == "unknown_node"
    assert reason_of(lambda: codec(1, epoch=5).open(data)) == "unknown_node"


def test_set_nodes_changes_the_accepted_origins() -> None:
    """After set_nodes, a new node is accepted and a removed one refused."""
    receiver = codec(2)
    from_four = codec(4, nodes=(1, 2, 4)).seal(frame(origin=4))
    receiver.set_nodes([1, 2, 4])
    assert receiver.open(from_four).origin == 4
    receiver.set_nodes([2, 4])
    assert reason_of(lambda: receiver.open(codec(1).seal(frame()))) == "unknown_node"


# --- replay protection -------------------------------------------------------------------------


def test_the_same_bytes_twice_is_replay() -> None:
    """A frame is accepted once."""
    receiver = codec(2)
    data = codec(1).seal(frame())
    receiver.open(data)
    assert reason_of(lambda: receiver.open(data)) == "replay"


def test_out_of_order_frames_within_the_window_are_accepted_once() -> None:
    """Reordering inside the window is fine; each frame still counts once."""
    sender, receiver = codec(1), codec(2)
    sealed = [sender.seal(frame(bytes([i]))) for i in range(20)]
    order = sealed[10:] + sealed[:10][::-1]
    expected = [bytes([i]) for i in [*range(10, 20), *range(9, -1, -1)]]
    assert [receiver.open(data).payload for data in order] == expected
    for data in sealed:
        assert reason_of(lambda d=data: receiver.open(d)) == "replay"


def test_window_edge() -> None:
    """A counter REPLAY_WINDOW - 1 below the highest is accepted, REPLAY_WINDOW below is not."""
    sender, receiver = codec(1), codec(2)
    sealed = [sender.seal(frame()) for _ in range(REPLAY_WINDOW + 1)]
    receiver.open(sealed[-1])  # counter REPLAY_WINDOW + 1
    assert reason_of(lambda: receiver.open(sealed[0])) == "replay"  # REPLAY_WINDOW behind
    receiver.open(sealed[1])  # REPLAY_WINDOW - 1 behind
    assert reason_of(lambda: receiver.open(sealed[1])) == "replay"


def test_a_big_jump_forward_clears_the_window() -> None:
    """After a jump of more than the window, only the new counter is remembered."""
    sender, receiver = codec(1), codec(2)
    sealed = [sender.seal(frame()) for _ in range(3 * REPLAY_WINDOW)]
    receiver.open(sealed[0])
    receiver.open(sealed[-1])
    receiver.open(sealed[-2])
    assert reason_of(lambda: receiver.open(sealed[-2])) == "replay"
    assert reason_of(lambda: receiver.open(sealed[0])) == "replay"


def test_a_restarted_sender_is_accepted_and_its_old_epoch_refused() -> None:
    """A newer epoch that authenticates resets the window (counter 1 again is fine); frames of the
    older incarnation, even unseen ones, are then replays."""
    receiver = codec(2)
    old = codec(1, epoch=SENDER_EPOCH)
    first, unseen = old.seal(frame(b"old")), old.seal(frame(b"old unseen"))
    receiver.open(first)
    new = codec(1, epoch=SENDER_EPOCH + 60_000)
    assert receiver.open(new.seal(frame(b"new"))).payload == b"new"
    assert reason_of(lambda: receiver.open(unseen)) == "replay"
    assert receiver.open(new.seal(frame(b"new 2"))).payload == b"new 2"


def forged(
    origin: int, epoch: int, counter: int, key_id: int = 0, body: bytes = bytes(40)
) -> bytes:
    """A well-formed header with garbage instead of ciphertext."""
    return HEADER.pack(1, key_id, origin, epoch, counter) + body


def test_forged_newer_epoch_neither_resets_the_window_nor_grows_the_cache() -> None:
    """Headers claiming ever newer epochs fail authentication and change nothing."""
    sender, receiver = codec(1), codec(2, keys={0: KEY0, 1: KEY1})
    seen = sender.seal(frame())
    receiver.open(seen)
    cached = receiver.cached_ciphers
    for step in range(1, 200):
        for origin in (1, 3):
            for key_id in (0, 1):
                data = forged(origin, SENDER_EPOCH + step, step, key_id)
                assert reason_of(lambda d=data: receiver.open(d)) == "auth"
    assert receiver.cached_ciphers == cached
    assert reason_of(lambda: receiver.open(seen)) == "replay"
    assert receiver.open(sender.seal(frame(b"next"))).payload == b"next"


def test_an_older_epoch_is_replay_without_deriving_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once an epoch authenticated, older epochs are refused before any key derivation."""
    receiver = codec(2)
    receiver.open(codec(1).seal(frame()))
    calls = []
    real = frames_module.derive_subkey

    def counting(key: bytes, origin: int, epoch: int) -> bytes:
        calls.append(epoch)
        return real(key, origin, epoch)

    monkeypatch.setattr(frames_module, "derive_subkey", counting)
    for epoch in (1, SENDER_EPOCH - 1):
        assert reason_of(lambda e=epoch: receiver.open(forged(1, e, 1))) == "replay"
    assert calls == []


def test_cipher_cache_keeps_one_epoch_per_key_and_origin() -> None:
    """Restarts of a sender replace its cached cipher rather than adding one."""
    receiver = codec(2)
    for restart in range(5):
        receiver.open(codec(1, epoch=SENDER_EPOCH + restart).seal(frame()))
        receiver.open(codec(3, epoch=SENDER_EPOCH + restart).seal(frame(origin=3)))
    assert receiver.cached_ciphers == 2


# --- key rotation ------------------------------------------------------------------------------


def test_key_rotation() -> None:
    """A receiver holding both keys accepts frames under either; after remove_key the removed
    id is 'key'."""
    both = {0: KEY0, 1: KEY1}
    sender, receiver = codec(1, keys=both), codec(2, keys=both)
    under_old = sender.seal(frame(b"old"))
    sender.set_send_key(1)
    under_new = sender.seal(frame(b"new"))
    assert HEADER.unpack_from(under_new)[1] == 1
    assert receiver.open(under_new).payload == b"new"
    assert receiver.open(under_old).payload == b"old"  # older counter, inside the window
    late_old = codec(3, keys=both).seal(frame(origin=3))
    receiver.set_send_key(1)
    receiver.remove_key(0)
    assert receiver.key_ids == {1}
    assert reason_of(lambda: receiver.open(late_old)) == "key"


def test_add_key_lets_a_receiver_learn_a_new_key() -> None:
    """Frames under a key id added at run time are accepted."""
    receiver = codec(2)
    data = codec(1, keys={1: KEY1}, send_key=1).seal(frame())
    assert reason_of(lambda: receiver.open(data)) == "key"
    receiver.add_key(1, KEY1)
    assert receiver.open(data).origin == 1


def test_replacing_a_key_drops_what_was_derived_from_the_old_one() -> None:
    """add_key with new material for a known id: frames under the old material stop working."""
    sender, receiver = codec(1), codec(2)
    receiver.open(sender.seal(frame()))
    receiver.add_key(0, KEY1)
    assert reason_of(lambda: receiver.open(sender.seal(frame()))) == "auth"
    restarted = codec(1, keys={0: KEY1}, epoch=SENDER_EPOCH + 1)
    assert receiver.open(restarted.seal(frame(b"new key"))).payload == b"new key"


def test_the_send_key_cannot_be_removed_or_be_unknown() -> None:
    """remove_key of the send key and set_send_key of a missing id are ValueErrors."""
    sender = codec(1, keys={0: KEY0, 1: KEY1})
    with pytest.raises(ValueError, match="send key"):
        sender.remove_key(0)
    with pytest.raises(ValueError, match="send key"):
        sender.set_send_key(9)
    with pytest.raises(KeyError):
        sender.remove_key(9)
    sender.set_send_key(1)
    sender.remove_key(0)
    assert sender.key_ids == {1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keys": {0: KEY0[:31]}}, "32 bytes"),
        ({"keys": {256: KEY0}, "send_key": 256}, "key id"),
        ({"keys": {-1: KEY0}, "send_key": -1}, "key id"),
        ({"send_key": 1}, "send key"),
        ({"epoch": 0}, "epoch"),
        ({"epoch": 1 << 64}, "epoch"),
        ({"node_id": 0}, "node id"),
        ({"nodes": [1, 70000]}, "node id"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    """Wrong key sizes, key ids, a missing send key, epoch 0 and bad node ids raise ValueError."""
    args: dict[str, Any] = {
        "keys": {0: KEY0},
        "send_key": 0,
        "node_id": 1,
        "epoch": SENDER_EPOCH,
        "nodes": NODES,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        BackboneCodec(**args)


def test_add_key_checks_the_key() -> None:
    """add_key refuses a key of the wrong length."""
    with pytest.raises(ValueError, match="32 bytes"):
        codec(1).add_key(1, b"short")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (frame(origin=2), "origin"),
        (frame(transport="sctp"), "transport"),
        (frame(hop=256), "hop"),
        (frame(hop=-1), "hop"),
        (frame(source=Address("1.2.3.4", 70000)), "encode"),
        (Frame(9, 1, 0, "udp", CLIENT4, SERVICE4, b""), "frame type"),  # type: ignore[arg-type]
    ],
)
def test_seal_refuses_frames_it_cannot_send(bad: Frame, message: str) -> None:
    """seal() raises ValueError for a foreign origin, unknown transport or type, bad hop or port,
    and does not use up a counter."""
    sender = codec(1)
    with pytest.raises(ValueError, match=message):
        sender.seal(bad)
    assert sender.next_counter == 1


# --- hostile input -----------------------------------------------------------------------------


def sealed_plaintext(plain: bytes, origin: int = 1, counter: int = 1) -> bytes:
    """An authentic frame around an arbitrary inner plaintext (what a buggy peer could send)."""
    header = HEADER.pack(1, 0, origin, SENDER_EPOCH, counter)
    aead = ChaCha20Poly1305(frames_module.derive_subkey(KEY0, origin, SENDER_EPOCH))
    return header + aead.encrypt(bytes(4) + header[12:], plain, header)


ADDRESS4 = bytes([4, 10, 0, 0, 1, 0x13, 0x88])


@pytest.mark.parametrize(
    "plain",
    [
        b"",
        b"\x01\x00",
        bytes([9, 0, 1]) + ADDRESS4 * 2,
        bytes([1, 0, 7]) + ADDRESS4 * 2,
        bytes([1, 0, 1]),
        bytes([1, 0, 1]) + ADDRESS4,
        bytes([1, 0, 1]) + bytes([5]) + ADDRESS4[1:] + ADDRESS4,
        bytes([1, 0, 1]) + ADDRESS4 + ADDRESS4[:-1],
        bytes([1, 0, 1]) + ADDRESS4 + bytes([6]) + bytes(17),
    ],
    ids=[
        "empty",
        "inner-header-short",
        "type",
        "transport",
        "no-source",
        "no-destination",
        "family",
        "destination-short",
        "ipv6-short",
    ],
)
def test_authentic_frames_with_bad_inner_encoding_are_malformed(plain: bytes) -> None:
    """An authenticated frame whose inner encoding is wrong is 'malformed', not a crash."""
    assert reason_of(lambda: codec(2).open(sealed_plaintext(plain))) == "malformed"


def test_minimal_inner_encoding_is_accepted() -> None:
    """The hand-built encoder above agrees with the codec on a valid frame."""
    opened = codec(2).open(sealed_plaintext(bytes([1, 0, 1]) + ADDRESS4 * 2 + b"p"))
    assert opened == Frame(
        FrameType.CLIENT, 1, 0, "udp", Address("10.0.0.1", 5000), Address("10.0.0.1", 5000), b"p"
    )


def test_shorter_than_header_and_tag_is_short() -> None:
    """Anything below 36 bytes (header + tag) is 'short'."""
    receiver = codec(2)
    data = codec(1).seal(frame())
    for length in range(36):
        assert reason_of(lambda n=length: receiver.open(data[:n])) == "short"


def test_every_truncation_is_a_frame_error() -> None:
    """A sealed frame cut at any length is refused with FrameError."""
    receiver = codec(2)
    data = codec(1).seal(frame(b"x" * 50, source=CLIENT6))
    for length in range(len(data)):
        assert reason_of(lambda n=length: receiver.open(data[:n])) in {"short", "auth"}
    assert receiver.open(data).payload == b"x" * 50


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_are_refused_with_frame_error(data: bytes) -> None:
    """Arbitrary input is a FrameError, never another exception."""
    assert open_or_reject(codec(2), data) is None


@FUZZ
@given(
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.binary(max_size=120),
)
def test_random_bodies_behind_plausible_headers_are_refused(
    key_id: int, origin: int, epoch: int, counter: int, body: bytes
) -> None:
    """Well-formed headers with any ids, epochs and counters and garbage bodies are refused."""
    receiver = codec(2, keys={0: KEY0, 1: KEY1})
    assert open_or_reject(receiver, HEADER.pack(1, key_id, origin, epoch, counter) + body) is None


@FUZZ
@given(st.data())
def test_mutated_frames_open_to_the_original_or_are_refused(data: st.DataObject) -> None:
    """Any mutation (bytes replaced, cut or appended) of a genuine frame is refused unless it
    leaves the frame unchanged."""
    original = frame(b"payload", source=CLIENT6)
    sealed = codec(1).seal(original)
    mutated = bytearray(sealed)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        index = data.draw(st.integers(min_value=0, max_value=len(mutated) - 1))
        mutated[index] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(mutated)))
    mutated = mutated[:cut] + data.draw(st.binary(max_size=8))
    opened = open_or_reject(codec(2), bytes(mutated))
    assert opened is None or (opened == original and bytes(mutated) == sealed)
