"""The compare loads' TURN clients: the testkit client on UDP, TCP and TLS links.

A ``Link`` (testkit.links) moves whole frames; a ``Session`` is the testkit client on one link:
the 401 round, then authenticated requests that raise on an error answer, and a relay path
(Allocate, then ChannelBind or CreatePermission) toward the echo peer. Allocation clients bind
an address of their own from ``CLIENT_ADDRESSES``, one iterator for the whole run, so no
5-tuple is ever reused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from bench.compare.servers import EchoPeer, Server
from stun import attributes as at
from stun.addresses import Address
from stun.message import Method
from testkit.client import UDP_PROTOCOL
from testkit.daemon import PASSWORD, REALM, USER
from testkit.links import Link, StreamLink, UdpLink, wait_frames
from testkit.sync import TurnClient

__all__ = [
    "CHANNEL",
    "CLIENT_ADDRESSES",
    "CLIENT_BUFFER",
    "REQUEST_TIMEOUT",
    "Link",
    "Session",
    "StreamLink",
    "UdpLink",
    "client_addresses",
    "make_link",
    "relay_sessions",
    "wait_frames",
]

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


def client_addresses() -> Iterator[tuple[str, int]]:
    """Every (host, port) of CLIENT_HOSTS x CLIENT_PORTS, once."""
    return ((f"127.0.0.{host}", port) for host in CLIENT_HOSTS for port in CLIENT_PORTS)


#: Where the next allocation client binds: one iterator for the whole run.
CLIENT_ADDRESSES = client_addresses()


def make_link(server: Server, transport: str) -> Link:
    if transport == "udp":
        # A fresh address: a kernel-chosen port can be one whose allocation (its Refresh 0
        # lost under load) still stands, and the server would answer 437.
        return UdpLink(server.udp, buffer=CLIENT_BUFFER, addresses=CLIENT_ADDRESSES)
    return StreamLink(server.tcp if transport == "tcp" else server.tls, tls=transport == "tls")


class Session(TurnClient):
    """The testkit client on one link; each request goes once (a miss is a failure, not a
    retry) and an error answer raises."""

    def __init__(self, link: Link) -> None:
        super().__init__(
            link.server,
            USER,
            PASSWORD,
            link=link,
            realm=REALM,
            timeout=REQUEST_TIMEOUT,
            retransmit=None,
        )

    def open_path(self, peer: tuple[str, int], mode: str) -> None:
        """Allocate a UDP relay, then a channel (``mode`` "channel") or a permission ("send")
        toward ``peer``."""
        self.request_ok(Method.ALLOCATE, at.RequestedTransport(UDP_PROTOCOL))
        peer_attr = at.XorPeerAddress(Address(*peer))
        if mode == "channel":
            self.request_ok(Method.CHANNEL_BIND, at.ChannelNumber(CHANNEL), peer_attr)
        else:
            self.request_ok(Method.CREATE_PERMISSION, peer_attr)

    def data_frame(self, peer: tuple[str, int], mode: str, payload: bytes) -> bytes:
        """What this client sends to relay ``payload`` to ``peer``."""
        if mode == "channel":
            return self.session.channel_data(CHANNEL, payload, pad=not self.link.datagram)
        return self.session.send_indication(Address(*peer), payload)

    def close(self) -> None:
        """Delete the allocation (best effort) and close the link."""
        with contextlib.suppress(Exception):
            if self.relay is not None:
                self.request_ok(Method.REFRESH, at.Lifetime(0))
        super().close()


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
