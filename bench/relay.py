"""Relay throughput of a live turnd on loopback: packets/s, loss, and server CPU per packet.

    python -m bench.relay [--clients 4] [--packets 20000] [--size 200] [--mode channel|send]

Starts turnd (``python -m turnd``) on 127.0.0.1 with a temporary config, allocates ``--clients``
allocations with a raw client built on the stun codec, binds a channel (or creates a permission
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
from stun.channeldata import frame_channel_data
from stun.keys import long_term_key
from stun.message import Message, MessageClass, Method, decode, encode
from testkit.daemon import PASSWORD, REALM, USER, start_turnd

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class RawClient:
    """Just enough TURN over a UDP socket to set up a relay path."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.settimeout(5)
        self.key = long_term_key(USER, REALM, PASSWORD)
        self.nonce = ""
        self.txid = 0

    def _request(self, method: Method, *attributes: object) -> Message:
        for _ in range(2):
            self.txid += 1
            attrs_ = list(attributes)
            if self.nonce:
                attrs_ += [at.Username(USER), at.Realm(REALM), at.Nonce(self.nonce)]
            message = Message(
                method, MessageClass.REQUEST, self.txid.to_bytes(12, "big"), tuple(attrs_)
            )
            self.sock.sendto(encode(message, key=self.key if self.nonce else None), self.server)
            reply = decode(self.sock.recv(65535))
            error = reply.get(at.ErrorCode)
            nonce = reply.get(at.Nonce)
            if error is not None and error.code in (401, 438) and nonce is not None:
                self.nonce = nonce.value
                continue
            if error is not None:
                raise RuntimeError(f"{method.name}: {error.code} {error.reason}")
            return reply
        raise RuntimeError(f"{method.name}: authentication failed")

    def setup(self, peer: tuple[str, int], channel: int | None) -> None:
        self._request(Method.ALLOCATE, at.RequestedTransport(17))
        peer_attr = at.XorPeerAddress(Address(*peer))
        if channel is None:
            self._request(Method.CREATE_PERMISSION, peer_attr)
        else:
            self._request(Method.CHANNEL_BIND, at.ChannelNumber(channel), peer_attr)

    def close(self) -> None:
        try:
            self._request(Method.REFRESH, at.Lifetime(0))
        finally:
            self.sock.close()


def run(clients: int, packets: int, size: int, window: int, mode: str) -> dict[str, float]:
    """Relay ``packets`` per client through a fresh turnd; return the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_turnd(Path(tmp))
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        peer.setblocking(False)
        peer_addr = peer.getsockname()
        try:
            raws = [RawClient(("127.0.0.1", daemon.port)) for _ in range(clients)]
            for raw in raws:
                raw.setup(peer_addr, 0x4000 if mode == "channel" else None)
                raw.sock.setblocking(False)
            payload = os.urandom(size)
            frames = []
            for _ in raws:
                if mode == "channel":
                    frames.append(frame_channel_data(0x4000, payload))
                else:
                    send = Message(
                        Method.SEND,
                        MessageClass.INDICATION,
                        os.urandom(12),
                        (at.XorPeerAddress(Address(*peer_addr)), at.Data(payload)),
                    )
                    frames.append(encode(send))
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
                raw.sock.setblocking(True)
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
    args = parser.parse_args()
    modes = ("channel", "send") if args.mode == "both" else (args.mode,)
    print(
        f"turnd relay bench: {args.clients} clients x {args.packets} packets of {args.size} B, "
        f"window {args.window}, loopback"
    )
    print(f"{'mode':8} {'round trips/s':>14} {'loss %':>7} {'server CPU µs/relayed pkt':>26}")
    for mode in modes:
        r = run(args.clients, args.packets, args.size, args.window, mode)
        print(
            f"{mode:8} {r['round_trips_per_s']:14.0f} {r['loss_percent']:7.2f} "
            f"{r['server_cpu_us_per_relayed_packet']:26.1f}"
        )


if __name__ == "__main__":
    main()
