"""What batching system calls would save turnd per datagram: receiving with one recvmmsg per
burst (through ctypes) against what turnd does now (uvloop's datagram transport, one recvfrom
per datagram) and a plain Python recvfrom loop; sending with sendmmsg against sendto.

A second process sends bursts of ``--burst`` datagrams of ``--size`` bytes to a socket of this
one, as fast as it can, ``--datagrams`` in all; this process receives them and counts its own
CPU (user + system, so the kernel's share of each system call is in) per datagram received.
The send rows count the CPU of sending the same number of datagrams to a socket nobody reads
(the kernel drops what overflows; that is the same for both ways of sending).

Figures only: it says what a change to the packet path could gain, it changes nothing.

    python -m bench.batching
    python -m bench.batching --burst 64 --datagrams 400000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"
MSG_DONTWAIT = 0x40

_SENDER = """
import socket, sys, time
host = sys.argv[1]
port, count, size, burst = (int(arg) for arg in sys.argv[2:6])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = bytes(size)
sent = 0
while sent < count:
    for _ in range(burst):
        sock.sendto(payload, (host, port))
    sent += burst
    time.sleep(0.0002)  # let the receiver drain: no drops, every datagram counted
"""


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IOVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


class Batch:
    """``count`` message slots of ``size`` bytes, each with room for a peer's address, for
    recvmmsg and sendmmsg."""

    def __init__(self, count: int, size: int) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.count = count
        self.buffers = [ctypes.create_string_buffer(size) for _ in range(count)]
        self.names = [ctypes.create_string_buffer(28) for _ in range(count)]
        self.iovecs = (_IOVec * count)()
        self.messages = (_MMsgHdr * count)()
        for i in range(count):
            self.iovecs[i].iov_base = ctypes.cast(self.buffers[i], ctypes.c_void_p)
            self.iovecs[i].iov_len = size
            header = self.messages[i].msg_hdr
            header.msg_name = ctypes.cast(self.names[i], ctypes.c_void_p)
            header.msg_namelen = 28
            header.msg_iov = ctypes.pointer(self.iovecs[i])
            header.msg_iovlen = 1

    def receive(self, fd: int) -> list[bytes]:
        """What recvmmsg returns at once (nothing when the socket is empty)."""
        for i in range(self.count):
            self.messages[i].msg_hdr.msg_namelen = 28
        got = self.libc.recvmmsg(fd, self.messages, self.count, MSG_DONTWAIT, None)
        if got <= 0:
            return []
        return [self.buffers[i].raw[: self.messages[i].msg_len] for i in range(got)]

    def send(self, fd: int, payloads: list[bytes], address: bytes) -> int:
        """One sendmmsg of ``payloads`` to the sockaddr ``address``."""
        for i, payload in enumerate(payloads):
            ctypes.memmove(self.buffers[i], payload, len(payload))
            self.iovecs[i].iov_len = len(payload)
            ctypes.memmove(self.names[i], address, len(address))
            self.messages[i].msg_hdr.msg_namelen = len(address)
        return int(self.libc.sendmmsg(fd, self.messages, len(payloads), 0))


def _sockaddr_in(host: str, port: int) -> bytes:
    return (
        socket.AF_INET.to_bytes(2, sys.byteorder)
        + port.to_bytes(2, "big")
        + socket.inet_aton(host)
        + bytes(8)
    )


def _receiver() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((LOOPBACK, 0))
    return sock


def _start_sender(port: int, count: int, size: int, burst: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", _SENDER, LOOPBACK, str(port), str(count), str(size), str(burst)]
    return subprocess.Popen(argv)


def _cpu_per(
    count: int, receive: Callable[[socket.socket, int], int], args: argparse.Namespace
) -> float:
    """µs of this process's CPU per datagram received by ``receive(sock, count)``; RuntimeError
    when not every datagram came (the figure would not be per datagram)."""
    sock = _receiver()
    try:
        sender = _start_sender(sock.getsockname()[1], count, args.size, args.burst)
        began = time.process_time()
        got = receive(sock, count)
        spent = time.process_time() - began
        sender.wait(timeout=60)
    finally:
        sock.close()
    if got != count:
        raise RuntimeError(f"{got} of {count} datagrams received: no figure")
    return spent / got * 1e6


def _by_recvfrom(sock: socket.socket, count: int) -> int:
    sock.settimeout(2.0)
    got = 0
    try:
        while got < count:
            sock.recvfrom(65535)
            got += 1
    except TimeoutError:
        pass
    return got


def _by_uvloop(sock: socket.socket, count: int) -> int:
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    got = 0

    class Counting(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            nonlocal got
            got += 1
            if got >= count:
                done.set()

    async def run() -> None:
        transport, _ = await loop.create_datagram_endpoint(Counting, sock=sock)
        with contextlib.suppress(TimeoutError):  # what came is counted, and checked
            await asyncio.wait_for(done.wait(), 60)
        transport.close()

    done = asyncio.Event()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return got


def _by_recvmmsg(batch_size: int) -> Callable[[socket.socket, int], int]:
    def receive(sock: socket.socket, count: int) -> int:
        batch = Batch(batch_size, 2048)
        fd = sock.fileno()
        got = 0
        deadline = time.monotonic() + 60
        while got < count and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 2.0)
            if not ready:
                break
            got += len(batch.receive(fd))
        return got

    return receive


def _send_cost(count: int, size: int, batch_size: int) -> tuple[float, float]:
    """µs of CPU per datagram sent with sendto, and with sendmmsg of ``batch_size``."""
    sink = _receiver()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        target = sink.getsockname()
        payload = bytes(size)
        began = time.process_time()
        for _ in range(count):
            sender.sendto(payload, target)
        one = (time.process_time() - began) / count * 1e6
        batch = Batch(batch_size, size)
        address = _sockaddr_in(*target)
        payloads = [payload] * batch_size
        began = time.process_time()
        for _ in range(count // batch_size):
            batch.send(sender.fileno(), payloads, address)
        many = (time.process_time() - began) / (count // batch_size * batch_size) * 1e6
    finally:
        sender.close()
        sink.close()
    return one, many


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bench.batching",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--datagrams", type=int, default=200_000, help="per row (200000)")
    parser.add_argument("--size", type=int, default=200, help="payload bytes (200)")
    parser.add_argument("--burst", type=int, default=32, help="datagrams a burst (32)")
    args = parser.parse_args(argv)
    count = args.datagrams
    print(
        f"bench.batching: {count} datagrams of {args.size} B per row, in bursts of {args.burst}, "
        f"on loopback; {os.cpu_count()} CPUs; CPU = this process's user + system"
    )
    batched = _by_recvmmsg(args.burst)
    rows = [
        ("receive: uvloop datagram transport (turnd now)", _cpu_per(count, _by_uvloop, args)),
        ("receive: Python recvfrom loop", _cpu_per(count, _by_recvfrom, args)),
        (f"receive: recvmmsg by {args.burst} (ctypes)", _cpu_per(count, batched, args)),
    ]
    one, many = _send_cost(count, args.size, args.burst)
    rows += [("send: sendto", one), (f"send: sendmmsg by {args.burst} (ctypes)", many)]
    width = max(len(name) for name, _ in rows)
    print(f"  {'':{width}}  µs CPU/datagram")
    for name, value in rows:
        print(f"  {name:{width}}  {value:10.2f}")


if __name__ == "__main__":
    main()
