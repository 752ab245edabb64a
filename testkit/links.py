"""Client sockets toward a TURN server that move whole frames: UDP datagrams, TCP/TLS streams.

A :class:`Link` sends one STUN message or ChannelData and returns the whole frames that
arrived; over TCP and TLS the stream is cut by the project's deframer (RFC 8489 §6.2.2,
RFC 8656 §12.5). Links never block: :func:`wait_frames` waits on one with a deadline.
"""

from __future__ import annotations

import itertools
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from typing import Protocol, Self

from stun.framing import StreamDeframer

LOOPBACK = "127.0.0.1"
#: Largest datagram the sockets read.
MAX_DATAGRAM = 65535
#: Largest frame a stream link accepts: a whole 64 KiB STUN message and its padding.
MAX_STREAM_FRAME = 70000
#: Datagrams read from one socket per call before the caller looks at the others.
RECEIVE_BATCH = 256
#: How long a stream link waits to connect (loopback answers at once).
CONNECT_TIMEOUT = 3.0
#: Candidate addresses :func:`bind_unused` tries before it gives up.
BIND_TRIES = 1000


class Link(Protocol):
    """A client's connection to the server: whole frames out, whole frames in."""

    sock: socket.socket
    server: tuple[str, int]

    @property
    def datagram(self) -> bool: ...
    def send(self, data: bytes) -> None: ...
    def receive(self) -> list[bytes]: ...
    def close(self) -> None: ...


class ClosesOnExit:
    """``with thing:`` ends with ``thing.close()`` (the testkit's clients, peers, servers and
    beds)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bind_unused(sock: socket.socket, addresses: Iterator[tuple[str, int]]) -> None:
    """Bind ``sock`` to the next address of ``addresses`` that is free."""
    for address in itertools.islice(addresses, BIND_TRIES):
        try:
            sock.bind(address)
        except OSError:
            continue
        return
    raise OSError(f"no free client address in {BIND_TRIES} tries")


class UdpLink:
    """A non-blocking UDP socket toward the server; datagrams from anyone else are dropped."""

    datagram = True

    def __init__(
        self,
        server: tuple[str, int],
        buffer: int = 0,
        addresses: Iterator[tuple[str, int]] | None = None,
        *,
        bind: str = LOOPBACK,
    ) -> None:
        self.server = server
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        if buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        if addresses is None:
            self.sock.bind((bind, 0))
        else:
            bind_unused(self.sock, addresses)
        self.sock.setblocking(False)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def receive(self) -> list[bytes]:
        frames = []
        server = tuple(self.server[:2])
        for _ in range(RECEIVE_BATCH):
            try:
                data, source = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, ConnectionRefusedError):
                break
            if tuple(source[:2]) == server:
                frames.append(data)
        return frames

    def close(self) -> None:
        self.sock.close()


def client_tls_context() -> ssl.SSLContext:
    """TLS 1.2+ with ALPN stun.turn and no certificate check (test servers are self-signed)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["stun.turn"])
    return context


class StreamLink:
    """A TCP or TLS connection to the server, cut into frames by the stream deframer."""

    datagram = False

    def __init__(self, server: tuple[str, int], tls: bool) -> None:
        self.server = server
        sock = socket.create_connection(server, timeout=CONNECT_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = client_tls_context().wrap_socket(sock) if tls else sock
        self.deframer = StreamDeframer(max_message_size=MAX_STREAM_FRAME)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> list[bytes]:
        try:
            data = self.sock.recv(1 << 16)
        except (TimeoutError, ssl.SSLWantReadError):
            return []
        if not data:
            raise ConnectionError("the server closed the connection")
        frames = self.deframer.feed(data)
        # TLS may hold decrypted bytes that select() cannot see: take them now.
        while isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            frames += self.deframer.feed(self.sock.recv(1 << 16))
        return frames

    def close(self) -> None:
        self.sock.close()


def open_link(server: tuple[str, int], transport: str, *, bind: str = LOOPBACK) -> Link:
    """A UDP, TCP or TLS link to ``server``."""
    if transport == "udp":
        return UdpLink(server, bind=bind)
    if transport not in ("tcp", "tls"):
        raise ValueError(f"unknown transport {transport!r}")
    return StreamLink(server, tls=transport == "tls")


def wait_frames(link: Link, timeout: float) -> list[bytes]:
    """Frames from ``link`` as soon as any arrive, or [] after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if select.select([link.sock], [], [], remaining)[0]:
            frames = link.receive()
            if frames:
                return frames
    return []


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from a stream socket; ConnectionError if the server closes first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return data


def read_stun_frame(sock: socket.socket) -> bytes:
    """One STUN message from a blocking TCP or TLS socket (RFC 8489 §6.2.2 framing: its header
    says its length)."""
    header = read_exactly(sock, 20)
    (length,) = struct.unpack_from("!H", header, 2)
    return header + read_exactly(sock, length)
