"""A small synchronous TURN client and a UDP echo peer for the daemon tests, loopback only.

The client speaks TURN over one real UDP socket with the project's STUN codec: it learns REALM
and NONCE from a 401 (or a 438) and retries once, like a browser does. Every receive has a
deadline, so a broken daemon fails a test instead of hanging it. Replies come back decoded;
indications and ChannelData that arrive while a request is outstanding are kept for
:meth:`TurnClient.receive`.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import attrs

from stun import attributes as at
from stun.addresses import Address
from stun.channeldata import PacketKind, classify, frame_channel_data, parse_channel_data
from stun.errors import StunDecodeError
from stun.keys import long_term_key
from stun.message import Message, MessageClass, Method, decode, encode
from tests.daemon import Daemon

LOOPBACK = "127.0.0.1"
#: Longest wait for any one answer: generous for a loaded CI machine, never reached when the
#: daemon works (loopback answers take a millisecond).
TIMEOUT = 5.0
#: How often an unanswered request is sent again with the same transaction id (RFC 8489 §6.2.1
#: retransmits over UDP; loopback does not lose packets, but a full socket buffer can).
RETRANSMIT_INTERVAL = 1.0
#: REQUESTED-TRANSPORT value for UDP (RFC 8656 §18.7: the IANA protocol number).
UDP_PROTOCOL = 17
#: Retries of one request after 401/438: the first 401, then a 438 if the fresh nonce went
#: stale on the way (possible with very short nonce lifetimes).
MAX_RETRIES = 2
#: Largest datagram the sockets read.
MAX_DATAGRAM = 65535


def error_code(message: Message) -> int | None:
    """The ERROR-CODE of ``message``, or None for a success."""
    error = message.get(at.ErrorCode)
    return None if error is None else error.code


@attrs.frozen
class DataIndication:
    """A Data indication from the server: which peer sent what."""

    peer: Address
    data: bytes


@attrs.frozen
class ChannelData:
    """A ChannelData message from the server."""

    channel: int
    data: bytes


Received = DataIndication | ChannelData | Message


class TurnClient:
    """A TURN client on a UDP socket bound to 127.0.0.1 (``bind``: another local address, e.g.
    inside a test namespace)."""

    def __init__(
        self,
        server: tuple[str, int],
        username: str = "",
        password: str = "",
        *,
        timeout: float = TIMEOUT,
        bind: str = LOOPBACK,
    ) -> None:
        self.server = server
        self.username = username
        self.password = password
        self.timeout = timeout
        self.realm: str | None = None
        self.nonce: str | None = None
        #: The XOR-RELAYED-ADDRESS of the last successful Allocate.
        self.relay: Address | None = None
        self._pending: deque[Received] = deque()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind, 0))

    @property
    def address(self) -> Address:
        """The client's own transport address."""
        host, port = self.sock.getsockname()[:2]
        return Address(host, port)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TurnClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- raw I/O -----------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Send ``data`` as one datagram to the server."""
        self.sock.sendto(data, self.server)

    def _read(self, deadline: float) -> bytes | None:
        """The next datagram from the server, or None once ``deadline`` has passed."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data, source = self.sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                return None
            if tuple(source[:2]) == tuple(self.server):
                return data

    @staticmethod
    def _parse(data: bytes) -> Received | None:
        kind = classify(data)
        try:
            if kind is PacketKind.CHANNEL_DATA:
                return ChannelData(*parse_channel_data(data))
            if kind is PacketKind.STUN:
                message = decode(data)
            else:
                return None
        except StunDecodeError:
            return None
        if message.method == Method.DATA and message.cls is MessageClass.INDICATION:
            peer, payload = message.get(at.XorPeerAddress), message.get(at.Data)
            if peer is not None and payload is not None:
                return DataIndication(peer.address, payload.value)
        return message

    def receive(self, timeout: float | None = None) -> Received | None:
        """The next Data indication, ChannelData or unsolicited message, or None on timeout."""
        if self._pending:
            return self._pending.popleft()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (data := self._read(deadline)) is not None:
            parsed = self._parse(data)
            if parsed is not None:
                return parsed
        return None

    # --- requests ----------------------------------------------------------------------------

    def key(self) -> bytes:
        """The long-term key (MD5, RFC 8489 §9.2.2) for the learned realm."""
        return long_term_key(self.username, self.realm or "", self.password)

    def _encode_request(self, method: Method, attributes: Iterable[Any], txid: bytes) -> bytes:
        values = list(attributes)
        key = None
        if self.nonce is not None and self.realm is not None:
            values += [at.Username(self.username), at.Realm(self.realm), at.Nonce(self.nonce)]
            key = self.key()
        message = Message(method, MessageClass.REQUEST, txid, tuple(values))
        return encode(message, key=key, fingerprint=True)

    def transact(self, method: Method, attributes: Iterable[Any] = ()) -> Message:
        """Send one request (signed once a nonce is known) and return its response.

        Raises TimeoutError when no response comes within the client's timeout.
        """
        txid = os.urandom(12)
        data = self._encode_request(method, attributes, txid)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            self.send_raw(data)
            retransmit = min(deadline, time.monotonic() + RETRANSMIT_INTERVAL)
            while (raw := self._read(retransmit)) is not None:
                parsed = self._parse(raw)
                if isinstance(parsed, Message) and parsed.transaction_id == txid:
                    return parsed
                if isinstance(parsed, DataIndication | ChannelData):
                    self._pending.append(parsed)
                # anything else (a late answer to an earlier request) is dropped
        raise TimeoutError(f"no answer to {method.name} from {self.server}")

    def learn(self, reply: Message) -> bool:
        """Take REALM and NONCE from a 401 or 438; False when the reply carries neither."""
        nonce, realm = reply.get(at.Nonce), reply.get(at.Realm)
        if nonce is None or realm is None:
            return False
        self.nonce, self.realm = nonce.value, realm.value
        return True

    def request(self, method: Method, *attributes: Any, retry: bool = True) -> Message:
        """A request with the long-term credential dance (RFC 8489 §9.2.3): an unsigned
        request's 401, or any 438, teaches REALM and NONCE and the request goes again."""
        reply = self.transact(method, attributes)
        for _ in range(MAX_RETRIES if retry else 0):
            code = error_code(reply)
            if not (code == 438 or (code == 401 and self.nonce is None)):
                break
            if not self.learn(reply):
                break
            reply = self.transact(method, attributes)
        return reply

    def binding(self) -> Message:
        """An unauthenticated Binding request (RFC 8489 §6)."""
        return self.transact(Method.BINDING)

    def allocate(self, *attributes: Any) -> Message:
        """Allocate a UDP relay (RFC 8656 §7.1); remembers the relayed address on success."""
        reply = self.request(
            Method.ALLOCATE, *(attributes or (at.RequestedTransport(UDP_PROTOCOL),))
        )
        relayed = reply.get(at.XorRelayedAddress)
        if relayed is not None:
            self.relay = relayed.address
        return reply

    def refresh(self, lifetime: int | None = None) -> Message:
        """Refresh the allocation (RFC 8656 §8); ``lifetime=0`` deletes it."""
        return self.request(Method.REFRESH, *(() if lifetime is None else (at.Lifetime(lifetime),)))

    def create_permission(self, *peers: Address) -> Message:
        """Install permissions for ``peers`` (RFC 8656 §9)."""
        return self.request(Method.CREATE_PERMISSION, *(at.XorPeerAddress(p) for p in peers))

    def channel_bind(self, channel: int, peer: Address) -> Message:
        """Bind ``channel`` to ``peer`` (RFC 8656 §12.1)."""
        return self.request(Method.CHANNEL_BIND, at.ChannelNumber(channel), at.XorPeerAddress(peer))

    # --- data --------------------------------------------------------------------------------

    def send_indication(self, peer: Address, data: bytes) -> None:
        """Relay ``data`` to ``peer`` with a Send indication (RFC 8656 §10.1)."""
        message = Message(
            Method.SEND,
            MessageClass.INDICATION,
            os.urandom(12),
            (at.XorPeerAddress(peer), at.Data(data)),
        )
        self.send_raw(encode(message))

    def send_channel_data(self, channel: int, data: bytes) -> None:
        """Relay ``data`` over a bound channel (RFC 8656 §12.4)."""
        self.send_raw(frame_channel_data(channel, data))


class EchoPeer:
    """A UDP peer on 127.0.0.1 that sends every datagram back to where it came from.

    It runs on a thread until :meth:`stop`; what it received is kept in :attr:`received` as
    (data, source) pairs.
    """

    #: How often the thread looks at the stop flag while no datagram arrives.
    POLL = 0.05

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(self.POLL)
        self.received: list[tuple[bytes, Address]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="echo-peer", daemon=True)
        self._thread.start()

    @property
    def address(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return Address(host, port)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((data, Address(source[0], source[1])))
            self.sock.sendto(data, source)

    def stop(self) -> None:
        """Stop the thread and close the socket."""
        self._stop.set()
        self._thread.join(timeout=TIMEOUT)
        self.sock.close()

    def __enter__(self) -> EchoPeer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(0.02)
    return True


def wait_for_event(daemon: Daemon, name: str, count: int = 1) -> list[dict[str, Any]]:
    """The daemon's JSON log lines for event ``name`` once there are ``count`` of them (or what
    there is when the wait gives up, for the test's assertion to show)."""

    def found() -> list[dict[str, Any]]:
        return [e for e in daemon.log_events() if e.get("event") == name]

    wait_until(lambda: len(found()) >= count)
    return found()


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
    """One STUN message from a TCP or TLS stream (RFC 8489 §6.2.2 framing: its header says
    its length)."""
    header = read_exactly(sock, 20)
    (length,) = struct.unpack_from("!H", header, 2)
    return header + read_exactly(sock, length)
