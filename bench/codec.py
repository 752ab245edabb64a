"""Micro-benchmark of the STUN codec: messages (or frames) per second, one core.

Run as ``python -m bench.codec [--seconds N]``. Each case calls the codec in batches until N
seconds of ``time.perf_counter`` have passed and prints the rate; there are no thresholds, the
numbers are for comparing one change with the next on the same machine.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import attrs

from stun import (
    Integrity,
    Message,
    MessageClass,
    Method,
    check_integrity,
    decode,
    encode,
    frame_channel_data,
    make_address,
    parse_channel_data,
)
from stun import attributes as at

#: Calls between two clock reads: enough that reading the clock costs nothing measurable.
BATCH = 500
DEFAULT_SECONDS = 1.0
PAYLOAD_SIZE = 1000  # a typical media packet relayed through TURN

TXID = bytes(range(12))
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")  # a 16-byte long-term (MD5) key
PEER = make_address("192.0.2.10", 50000)
PAYLOAD = bytes(i & 0xFF for i in range(PAYLOAD_SIZE))


@attrs.frozen
class Case:
    """One timed operation: ``run()`` is called repeatedly; ``unit`` names what it processes."""

    name: str
    run: Callable[[], object]
    unit: str = "msg"


def _cases() -> list[Case]:
    binding = Message(Method.BINDING, MessageClass.REQUEST, TXID)
    binding_wire = encode(binding, fingerprint=True)

    allocate = Message(
        Method.ALLOCATE,
        MessageClass.REQUEST,
        TXID,
        (
            at.RequestedTransport(17),
            at.Username("1732526400:alice"),
            at.Realm("turnd.example.org"),
            at.Nonce("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"),
        ),
    )
    allocate_wire = encode(allocate, key=KEY, integrity=Integrity.SHA1, fingerprint=True)

    def allocate_decode_verify() -> bool:
        message = decode(allocate_wire)
        if not check_integrity(message, KEY):
            raise AssertionError("benchmark message does not verify")
        return True

    send_wire = encode(
        Message(
            Method.SEND,
            MessageClass.INDICATION,
            TXID,
            (at.XorPeerAddress(PEER), at.Data(PAYLOAD)),
        )
    )
    data_indication = Message(
        Method.DATA,
        MessageClass.INDICATION,
        TXID,
        (at.XorPeerAddress(PEER), at.Data(PAYLOAD)),
    )
    channel_wire = frame_channel_data(0x4000, PAYLOAD)

    return [
        Case("Binding request decode", lambda: decode(binding_wire)),
        Case("Binding request encode (FINGERPRINT)", lambda: encode(binding, fingerprint=True)),
        Case("Allocate request decode + MI verify", allocate_decode_verify),
        Case(
            "Allocate request encode (MI + FINGERPRINT)",
            lambda: encode(allocate, key=KEY, fingerprint=True),
        ),
        Case(f"Send indication decode ({PAYLOAD_SIZE} B data)", lambda: decode(send_wire)),
        Case(f"Data indication encode ({PAYLOAD_SIZE} B data)", lambda: encode(data_indication)),
        Case(
            f"ChannelData parse ({PAYLOAD_SIZE} B)",
            lambda: parse_channel_data(channel_wire),
            "frame",
        ),
        Case(
            f"ChannelData frame ({PAYLOAD_SIZE} B)",
            lambda: frame_channel_data(0x4000, PAYLOAD),
            "frame",
        ),
    ]


def measure(run: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Call ``run`` in batches for at least ``seconds``: (calls per second, calls made)."""
    for _ in range(BATCH):  # warm-up: caches, lazily built tables
        run()
    calls = 0
    clock = time.perf_counter
    start = clock()
    deadline = start + seconds
    while True:
        for _ in range(BATCH):
            run()
        calls += BATCH
        now = clock()
        if now >= deadline:
            return calls / (now - start), calls


def main(argv: list[str] | None = None) -> None:
    """Run every case and print a table of rates."""
    parser = argparse.ArgumentParser(prog="python -m bench.codec", description=__doc__)
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"time spent on each case (default {DEFAULT_SECONDS})",
    )
    args = parser.parse_args(argv)

    cases = _cases()
    width = max(len(case.name) for case in cases)
    print(
        f"STUN codec, {platform.python_implementation()} {platform.python_version()}, "
        f"{args.seconds:g} s per case"
    )
    print(f"{'operation':<{width}}  {'rate':>18}  {'us each':>8}  {'calls':>10}")
    print(f"{'-' * width}  {'-' * 18}  {'-' * 8}  {'-' * 10}")
    for case in cases:
        rate, calls = measure(case.run, args.seconds)
        shown = f"{rate:,.0f} {case.unit}/s"
        print(f"{case.name:<{width}}  {shown:>18}  {1e6 / rate:>8.2f}  {calls:>10,}")


if __name__ == "__main__":
    main()
