"""turnd's own Python per relayed datagram, in process and without the kernel.

    python -m bench.hotpath [--datagrams 100000] [--repeat 5] [--callgrind]

Theory of operation: a TurnService starts in this process on loopback (uvloop when installed),
with the per-allocation rate limits off. A raw client (bench.relay's) makes one allocation over
real sockets and binds a channel to one loopback peer address; a second peer address on the same
IP has a permission and no channel. Then the listener's and the relay's transports are swapped
for null transports that only count what they are given, and the protocols' ``datagram_received``
is called directly, as uvloop calls it:

* client ChannelData (to the bound peer) and client Send indications (to the other peer);
* peer datagrams from the bound peer (out as ChannelData) and from the other (Data indications).

What is measured is turnd's Python for one datagram: address objects, the core's checks and
counters, the framing, the call into the transport. The syscalls and the kernel are not in it
(bench.compare measures the whole, against coturn). Every row checks that each datagram reached
the null transport, the last one addressed where it should go; otherwise the figure is refused.

Timings on a shared VM swing between runs; ``--callgrind`` also counts each row in instructions
under valgrind (the same count on every run of the same build): a run relaying ``--datagrams``
of that row less a run relaying none, divided by ``--datagrams``. Figures only, no thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from bench.relay import RawClient
from stun import attributes as at
from stun.addresses import Address
from stun.channeldata import frame_channel_data
from stun.message import Message, MessageClass, Method, encode
from testkit.daemon import write_config
from turnd.assembly import resolve_secrets
from turnd.config import load_config
from turnd.service import TurnService

#: The rows, in the order they print: name -> what it relays.
ROWS = {
    "client-channel": "client ChannelData -> peer",
    "client-send": "client Send indication -> peer",
    "peer-channel": "peer -> client ChannelData",
    "peer-data": "peer -> client Data indication",
}
CHANNEL = 0x4000
#: Datagrams of each row relayed before anything is counted or timed (caches filled).
WARM_UP = 2000
PAYLOAD_SIZE = 200


class NullTransport:
    """Stands in for a datagram transport: counts what it is given and where it was to go."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.sent = 0
        self.destination: tuple[Any, ...] | None = None

    def sendto(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.sent += 1
        self.destination = addr

    def get_protocol(self) -> Any:
        return self.real.get_protocol()


class Bed:
    """One service, one allocation, its peers, and the datagrams of each row."""

    def __init__(self, service: TurnService, client: RawClient, peers: list[socket.socket]):
        self.service = service
        [server] = service.udp_addresses
        [(relay_address, relay)] = service.packets._relays.items()
        self.listener_address = Address(*server)
        self.listener = service.packets._listeners[self.listener_address]
        self.relay_address = relay_address
        self.relay = relay
        self.client = client.sock.getsockname()
        self.peer, self.other_peer = (p.getsockname() for p in peers)
        payload = os.urandom(PAYLOAD_SIZE)
        send = Message(
            Method.SEND,
            MessageClass.INDICATION,
            os.urandom(12),
            (at.XorPeerAddress(Address(*self.other_peer)), at.Data(payload)),
        )
        client_in = cast(Any, self.listener.get_protocol()).datagram_received
        peer_in = cast(Any, relay.get_protocol()).datagram_received
        #: row -> (the protocol's entry, the datagram, its source, where it must end up).
        self.rows: dict[str, tuple[Callable[..., None], bytes, Any, tuple[Any, ...]]] = {
            "client-channel": (
                client_in,
                frame_channel_data(CHANNEL, payload),
                self.client,
                self.peer,
            ),
            "client-send": (client_in, encode(send), self.client, self.other_peer),
            "peer-channel": (peer_in, payload, self.peer, self.client),
            "peer-data": (peer_in, payload, self.other_peer, self.client),
        }

    def run(self, row: str, count: int) -> float:
        """Relay ``count`` datagrams of ``row`` through null transports; wall seconds taken."""
        entry, data, source, destination = self.rows[row]
        nulls = {
            "listener": NullTransport(self.listener),
            "relay": NullTransport(self.relay),
        }
        self.service.packets._listeners[self.listener_address] = nulls["listener"]  # type: ignore[assignment]
        self.service.packets._relays[self.relay_address] = nulls["relay"]  # type: ignore[assignment]
        try:
            started = time.perf_counter()
            for _ in range(count):
                entry(data, source)
            seconds = time.perf_counter() - started
        finally:
            self.service.packets._listeners[self.listener_address] = self.listener
            self.service.packets._relays[self.relay_address] = self.relay
        out = nulls["relay"] if row.startswith("client") else nulls["listener"]
        if out.sent != count or (count and tuple(out.destination or ()) != tuple(destination)):
            drops = {k: v for k, v in self.service.core.stats.items() if k.startswith("drop")}
            raise RuntimeError(
                f"{ROWS[row]}: {out.sent} of {count} datagrams relayed, to "
                f"{out.destination} instead of {destination}; drops {drops}"
            )
        return seconds


async def with_bed(work: Callable[[Bed], Any]) -> Any:
    """Start a service and an allocation, hand the bed to ``work``, stop the service."""
    with tempfile.TemporaryDirectory() as tmp:
        # Userspace's own path: the kernel fast path (on by default as root) would take the
        # channels, and its read-back timer would run between the rows' datagrams.
        extra = "[limits]\nallocation_packet_rate = 0\nallocation_byte_rate = 0\n"
        extra += '[fastpath]\nmode = "off"\n'
        path = write_config(Path(tmp), extra)
        config, _ = resolve_secrets(load_config(str(path), {}))
        service = TurnService(config, relay_ipv4="127.0.0.1")
        await service.start()
        peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        client: RawClient | None = None
        try:
            for peer in peers:
                peer.bind(("127.0.0.1", 0))
            [server] = service.udp_addresses
            client = RawClient((server[0], server[1]))
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, client.setup, peers[0].getsockname(), CHANNEL)
            other = at.XorPeerAddress(Address(*peers[1].getsockname()))
            await loop.run_in_executor(None, client.request_ok, Method.CREATE_PERMISSION, other)
            bed = Bed(service, client, peers)
            for row in ROWS:
                bed.run(row, WARM_UP)
            return work(bed)
        finally:
            if client is not None:
                client.sock.close()
            for peer in peers:
                peer.close()
            await service.stop()


def run_async(work: Callable[[Bed], Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(with_bed(work))
    return uvloop.run(with_bed(work))


def time_rows(datagrams: int, repeat: int) -> dict[str, float]:
    """Best wall µs per datagram of each row over ``repeat`` runs."""

    def work(bed: Bed) -> dict[str, float]:
        return {
            row: min(bed.run(row, datagrams) for _ in range(repeat)) / datagrams * 1e6
            for row in ROWS
        }

    result: dict[str, float] = run_async(work)
    return result


def instructions(row: str | None, datagrams: int) -> int:
    """Instructions valgrind counts for a whole run of this module relaying ``datagrams`` of
    ``row`` (None: a run that relays only the warm-up)."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "bench.hotpath",
        "--count-only",
        row or "none",
        "--datagrams",
        str(datagrams),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    match = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"valgrind run failed ({done.returncode}): {done.stderr[-800:]}")
    return int(match.group(1))


def count_rows(datagrams: int) -> dict[str, float]:
    """Instructions per datagram of each row: (run with the row - run without) / datagrams.
    The five valgrind runs go two at a time (each takes about a minute)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        baseline = pool.submit(instructions, None, datagrams)
        runs = {row: pool.submit(instructions, row, datagrams) for row in ROWS}
        base = baseline.result()
        return {row: (run.result() - base) / datagrams for row, run in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datagrams", type=int, default=100_000, help="per row and run")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per row; best counts")
    parser.add_argument(
        "--callgrind", action="store_true", help="also count instructions under valgrind"
    )
    parser.add_argument("--count-only", choices=[*ROWS, "none"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count_only is not None:  # one run under valgrind: relay, print nothing
        row = args.count_only
        run_async(lambda bed: row == "none" or bed.run(row, args.datagrams))
        return 0
    loop_name = "uvloop" if _has_uvloop() else "asyncio"
    print(f"bench.hotpath: turnd's Python per relayed datagram, in process ({loop_name}),")
    print(f"{args.datagrams} datagrams per row, best of {args.repeat}; payload {PAYLOAD_SIZE} B")
    timed = time_rows(args.datagrams, args.repeat)
    counted: dict[str, float] = {}
    if args.callgrind:
        counted = count_rows(min(args.datagrams, 20_000))
    print(f"{'':34}{'µs/datagram':>12}{'instructions':>14}")
    for row, label in ROWS.items():
        figure = f"{counted[row]:>14,.0f}" if row in counted else f"{'-':>14}"
        print(f"  {label:32}{timed[row]:>12.2f}{figure}")
    if not args.callgrind:
        print("(--callgrind adds instruction counts, which do not swing with the machine's load)")
    return 0


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
