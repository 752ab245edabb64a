"""Raw TURN clients built on the stun codec: links over UDP, TCP and TLS, and sessions on them.

A ``Link`` moves whole frames (STUN messages or ChannelData); a ``Session`` does the 401 round and
then authenticated requests on one link, and opens a relay path (Allocate, then ChannelBind or
CreatePermission) toward the echo peer. Allocation clients bind an address of their own from
``CLIENT_ADDRESSES``, one iterator for the whole run, so no 5-tuple is ever reused.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any, Protocol

from bench.compare.servers import LOOPBACK, EchoPeer, Server
from stun import attributes as at
from stun.addresses import Address
from stun.channeldata import frame_channel_data
from stun.framing import StreamDeframer
from stun.keys import long_term_key
from stun.message import Message, MessageClass, Method, decode, encode
from testkit.daemon import PASSWORD, REALM, USER

#: Allocation loads bind each fresh client socket to an address of its own on 127.0.0.2 and up,
#: never one on 127.0.0.1: 20k ephemeral client ports there would compete with the relay ports
#: both servers bind, and a reused 5-tuple meets what a server keeps of a deleted allocation
#: (coturn answers 437 for a while).
CLIENT_HOSTS = range(2, 255)
CLIENT_PORTS = range(1024, 65536)
#: The channel number every relay session binds (RFC 8656 §12: 0x4000-0x4FFF).
CHANNEL = 0x4000
#: One request's wait for its answer on loopback; a miss is a failure, not a retry.
REQUEST_TIMEOUT = 3.0
#: Receive buffer of load sockets: a burst of answers must not overflow the client first.
CLIENT_BUFFER = 4 << 20
#: Datagrams read from one socket per readiness event before the loop looks at the others.
RECEIVE_BATCH = 256


class Link(Protocol):
    """A client's connection to the server: whole frames out, whole frames in."""

    sock: socket.socket

    def send(self, data: bytes) -> None: ...
    def receive(self) -> list[bytes]: ...
    def close(self) -> None: ...


class UdpLink:
    """A non-blocking UDP socket toward the server."""

    def __init__(
        self,
        server: tuple[str, int],
        buffer: int = 0,
        addresses: Iterator[tuple[str, int]] | None = None,
    ) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        if addresses is None:
            self.sock.bind((LOOPBACK, 0))
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
        for _ in range(RECEIVE_BATCH):
            try:
                frames.append(self.sock.recv(65535))
            except (BlockingIOError, ConnectionRefusedError):
                break
        return frames

    def close(self) -> None:
        self.sock.close()


def client_addresses() -> Iterator[tuple[str, int]]:
    """Every (host, port) of CLIENT_HOSTS x CLIENT_PORTS, once."""
    return ((f"127.0.0.{host}", port) for host in CLIENT_HOSTS for port in CLIENT_PORTS)


#: Where the next allocation client binds: one iterator for the whole run.
CLIENT_ADDRESSES = client_addresses()


def bind_unused(sock: socket.socket, addresses: Iterator[tuple[str, int]]) -> None:
    """Bind ``sock`` to the next address of ``addresses`` that is free."""
    for address in itertools.islice(addresses, 1000):
        try:
            sock.bind(address)
        except OSError:
            continue
        return
    raise OSError("no free client address in 1000 tries")


def client_tls_context() -> ssl.SSLContext:
    """TLS 1.2+ with ALPN stun.turn and no certificate check (both servers are self-signed)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["stun.turn"])
    return context


class StreamLink:
    """A TCP or TLS connection to the server, cut into frames by the stream deframer."""

    def __init__(self, server: tuple[str, int], tls: bool) -> None:
        sock = socket.create_connection(server, timeout=REQUEST_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = client_tls_context().wrap_socket(sock) if tls else sock
        self.deframer = StreamDeframer(max_message_size=70000)

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


def make_link(server: Server, transport: str) -> Link:
    if transport == "udp":
        # A fresh address: a kernel-chosen port can be one whose allocation (its Refresh 0
        # lost under load) still stands, and the server would answer 437.
        return UdpLink(server.udp, buffer=CLIENT_BUFFER, addresses=CLIENT_ADDRESSES)
    return StreamLink(server.tcp if transport == "tcp" else server.tls, tls=transport == "tls")


def wait_frames(link: Link, timeout: float) -> list[bytes]:
    """Frames from ``link`` as soon as any arrive, or [] after ``timeout`` seconds."""
    deadline = time.perf_counter() + timeout
    while (remaining := deadline - time.perf_counter()) > 0:
        if select.select([link.sock], [], [], remaining)[0]:
            frames = link.receive()
            if frames:
                return frames
    return []


class Session:
    """One TURN client on one link: the 401 round, then authenticated requests."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.realm = REALM
        self.nonce: str | None = None
        self.key = long_term_key(USER, REALM, PASSWORD)
        self.relay: Address | None = None

    def transact(self, method: Method, *attributes: Any) -> Message:
        """Send a request (authenticated once a nonce is known) and return the success answer."""
        for _ in range(3):  # unauthenticated, then at most one stale-nonce retry
            txid = os.urandom(12)
            attrs_ = list(attributes)
            if self.nonce is not None:
                attrs_ += [at.Username(USER), at.Realm(self.realm), at.Nonce(self.nonce)]
            request = Message(method, MessageClass.REQUEST, txid, tuple(attrs_))
            self.link.send(encode(request, key=self.key if self.nonce is not None else None))
            reply = self._answer(txid, method)
            error, nonce, realm = reply.get(at.ErrorCode), reply.get(at.Nonce), reply.get(at.Realm)
            if error is not None and error.code in (401, 438) and nonce is not None:
                self.nonce = nonce.value
                if realm is not None and realm.value != self.realm:
                    self.realm = realm.value
                    self.key = long_term_key(USER, self.realm, PASSWORD)
                continue
            if error is not None:
                raise RuntimeError(f"{method.name}: {error.code} {error.reason}")
            return reply
        raise RuntimeError(f"{method.name}: authentication failed")

    def _answer(self, txid: bytes, method: Method) -> Message:
        deadline = time.perf_counter() + REQUEST_TIMEOUT
        while (remaining := deadline - time.perf_counter()) > 0:
            for frame in wait_frames(self.link, remaining):
                if frame[0] < 0x40:
                    message = decode(frame)
                    if message.transaction_id == txid:
                        return message
        raise TimeoutError(f"{method.name}: no answer within {REQUEST_TIMEOUT} s")

    def open_path(self, peer: tuple[str, int], mode: str) -> None:
        """Allocate a UDP relay, then a channel (``mode`` "channel") or a permission ("send")
        toward ``peer``."""
        reply = self.transact(Method.ALLOCATE, at.RequestedTransport(17))
        relayed = reply.get(at.XorRelayedAddress)
        self.relay = relayed.address if relayed is not None else None
        peer_attr = at.XorPeerAddress(Address(*peer))
        if mode == "channel":
            self.transact(Method.CHANNEL_BIND, at.ChannelNumber(CHANNEL), peer_attr)
        else:
            self.transact(Method.CREATE_PERMISSION, peer_attr)

    def data_frame(self, peer: tuple[str, int], mode: str, payload: bytes) -> bytes:
        """What this client sends to relay ``payload`` to ``peer``."""
        if mode == "channel":
            return frame_channel_data(CHANNEL, payload, pad=not isinstance(self.link, UdpLink))
        send = Message(
            Method.SEND,
            MessageClass.INDICATION,
            os.urandom(12),
            (at.XorPeerAddress(Address(*peer)), at.Data(payload)),
        )
        return encode(send)

    def close(self) -> None:
        """Delete the allocation (best effort) and close the link."""
        with contextlib.suppress(Exception):
            if self.relay is not None:
                self.transact(Method.REFRESH, at.Lifetime(0))
        self.link.close()


@contextlib.contextmanager
def relay_sessions(
    server: Server, peer: EchoPeer, transport: str, mode: str, count: int
) -> Iterator[list[Session]]:
    """``count`` clients with a relay path to the echo peer; deleted and closed afterwards."""
    sessions: list[Session] = []
    try:
        for _ in range(count):
            sessions.append(Session(make_link(server, transport)))
            sessions[-1].open_path(peer.address, mode)
        yield sessions
    finally:
        for session in sessions:
            session.close()
