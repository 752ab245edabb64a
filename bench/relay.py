"""Relay throughput of a live turnd on loopback: packets/s, loss, and server CPU per packet.

    python -m bench.relay [--clients 4] [--packets 20000] [--size 200] [--mode channel|send]

Starts turnd (``python -m turnd``) on 127.0.0.1 with a temporary config, allocates ``--clients``
allocations with the testkit client, binds a channel (or creates a permission
for Send indications) toward a UDP echo peer, then sends ``--packets`` packets per client in
windows of ``--window`` packets in flight and counts what comes back. The server's CPU time is
read from /proc before and after, so the figure is the daemon's own cost per relayed packet
(each echoed packet crosses the relay twice: client to peer and peer to client).
Prints a table; no thresholds.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import tempfile
import time
from pathlib import Path

from stun import attributes as at
from stun.addresses import Address
from stun.message import Method
from testkit.client import UDP_PROTOCOL
from testkit.daemon import PASSWORD, USER, start_turnd
from testkit.sync import TurnClient

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class RawClient(TurnClient):
    """The testkit client on a UDP socket with a large receive buffer, set up for one relay
    path; errors raise :class:`testkit.client.TurnError`."""

    def __init__(self, server: tuple[str, int]) -> None:
        super().__init__(server, USER, PASSWORD)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def setup(self, peer: tuple[str, int], channel: int | None) -> None:
        """Allocate, then a channel to ``peer`` (or a permission when ``channel`` is None)."""
        self.request_ok(Method.ALLOCATE, at.RequestedTransport(UDP_PROTOCOL))
        if channel is None:
            self.request_ok(Method.CREATE_PERMISSION, at.XorPeerAddress(Address(*peer)))
        else:
            self.request_ok(
                Method.CHANNEL_BIND, at.ChannelNumber(channel), at.XorPeerAddress(Address(*peer))
            )

    def close(self) -> None:
        """Delete the allocation, then close the socket."""
        try:
            self.request_ok(Method.REFRESH, at.Lifetime(0))
        finally:
            super().close()


def run(
    clients: int, packets: int, size: int, window: int, mode: str, fastpath: str = "off"
) -> dict[str, float]:
    """Relay ``packets`` per client through a fresh turnd ([fastpath] mode ``fastpath``);
    return the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_turnd(Path(tmp), f'[fastpath]\nmode = "{fastpath}"\n')
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        peer.setblocking(False)
        peer_addr = peer.getsockname()
        try:
            raws = [RawClient(("127.0.0.1", daemon.port)) for _ in range(clients)]
            for raw in raws:
                raw.setup(peer_addr, 0x4000 if mode == "channel" else None)
            payload = os.urandom(size)
            peer_address = Address(*peer_addr)
            frames = [
                raw.session.channel_data(0x4000, payload)
                if mode == "channel"
                else raw.session.send_indication(peer_address, payload)
                for raw in raws
            ]
            selector = selectors.DefaultSelector()
            selector.register(peer, selectors.EVENT_READ, "peer")
            for raw in raws:
                selector.register(raw.sock, selectors.EVENT_READ, "client")
            cpu_before = cpu_seconds(daemon.process.pid)
            started = time.perf_counter()
            sent = received = 0
            total = packets * clients
            idle_deadline = None
            while received < total:
                while sent < total and sent - received < window:
                    raw = raws[sent % clients]
                    try:
                        raw.sock.sendto(frames[sent % clients], raw.server)
                    except BlockingIOError:
                        break
                    sent += 1
                events = selector.select(timeout=0.5)
                if not events:
                    if sent >= total:
                        idle_deadline = idle_deadline or time.perf_counter() + 1.0
                        if time.perf_counter() > idle_deadline:
                            break
                    else:
                        received = sent  # count the window as lost and go on
                    continue
                for key, _ in events:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    while True:
                        try:
                            data, addr = sock.recvfrom(65535)
                        except BlockingIOError:
                            break
                        if key.data == "peer":
                            peer.sendto(data, addr)  # echo back through the relay
                        else:
                            received += 1
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(daemon.process.pid) - cpu_before
            for raw in raws:
                raw.close()
        finally:
            peer.close()
            daemon.stop()
    relayed = 2 * received  # each round trip crosses the relay twice
    return {
        "sent": float(total),
        "received": float(received),
        "loss_percent": 100.0 * (total - received) / total,
        "seconds": elapsed,
        "round_trips_per_s": received / elapsed,
        "server_cpu_s": cpu,
        "server_cpu_us_per_relayed_packet": 1e6 * cpu / relayed if relayed else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--packets", type=int, default=20000, help="per client")
    parser.add_argument("--size", type=int, default=200, help="payload bytes")
    parser.add_argument("--window", type=int, default=64, help="packets in flight")
    parser.add_argument("--mode", choices=("channel", "send", "both"), default="both")
    parser.add_argument(
        "--fastpath",
        choices=("off", "on", "auto"),
        default="off",
        help="turnd's [fastpath] mode (default off: userspace's figures; with on, the server\n"
        "CPU column omits the kernel's share: bench.compare counts it)",
    )
    args = parser.parse_args()
    modes = ("channel", "send") if args.mode == "both" else (args.mode,)
    print(
        f"turnd relay bench: {args.clients} clients x {args.packets} packets of {args.size} B, "
        f"window {args.window}, loopback"
    )
    print(f"{'mode':8} {'round trips/s':>14} {'loss %':>7} {'server CPU µs/relayed pkt':>26}")
    for mode in modes:
        r = run(args.clients, args.packets, args.size, args.window, mode, args.fastpath)
        print(
            f"{mode:8} {r['round_trips_per_s']:14.0f} {r['loss_percent']:7.2f} "
            f"{r['server_cpu_us_per_relayed_packet']:26.1f}"
        )


if __name__ == "__main__":
    main()
