"""The blocking socket driver of the testkit client, and a UDP echo peer, loopback only.

:class:`TurnClient` runs a :class:`~testkit.client.TurnSession` over one :class:`Link` (UDP,
TCP or TLS): it sends each request, waits for the answer with the same transaction id
(retransmitting over UDP, RFC 8489 §6.2.1) and lets the session check it and decide on the
401/438 retry. Every wait has a deadline, so a broken server fails a test instead of hanging
it. Data indications and ChannelData that arrive while a request is outstanding are kept for
:meth:`TurnClient.receive`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from stun.addresses import Address
from stun.message import Message, Method
from testkit.client import (
    MAX_RETRIES,
    UDP_PROTOCOL,
    ChannelData,
    DataIndication,
    Received,
    Request,
    SessionState,
    TurnError,
    TurnSession,
    error_code,
    parse,
    raise_for_error,
)
from testkit.links import (
    LOOPBACK,
    MAX_DATAGRAM,
    ClosesOnExit,
    Link,
    open_link,
    read_exactly,
    read_stun_frame,
    wait_frames,
)

__all__ = [
    "LOOPBACK",
    "MAX_DATAGRAM",
    "MAX_RETRIES",
    "TIMEOUT",
    "UDP_PROTOCOL",
    "ChannelData",
    "DataIndication",
    "EchoPeer",
    "Received",
    "TurnClient",
    "TurnError",
    "error_code",
    "read_exactly",
    "read_stun_frame",
    "wait_until",
]

#: Longest wait for any one answer: generous for a loaded CI machine, never reached when the
#: server works (loopback answers take a millisecond).
TIMEOUT = 5.0
#: How often an unanswered request goes again over UDP with the same transaction id (RFC 8489
#: §6.2.1 retransmits; loopback does not lose packets, but a full socket buffer can).
RETRANSMIT_INTERVAL = 1.0


def random_txid() -> bytes:
    """A random 96-bit transaction id (RFC 8489 §6: uniformly and randomly chosen)."""
    return os.urandom(12)


class TurnClient(SessionState, ClosesOnExit):
    """A TURN client on a blocking driver: UDP from ``bind`` (127.0.0.1 unless told), or a
    TCP/TLS connection, or any ``link`` given.

    ``retransmit`` is the UDP retransmission interval (None: send once and wait); stray
    messages (not the awaited answer, not data) go to ``on_stray`` when given.
    """

    def __init__(
        self,
        server: tuple[str, int],
        username: str = "",
        password: str = "",
        *,
        timeout: float = TIMEOUT,
        bind: str = LOOPBACK,
        transport: str = "udp",
        link: Link | None = None,
        realm: str | None = None,
        retransmit: float | None = RETRANSMIT_INTERVAL,
        on_stray: Callable[[bytes], None] | None = None,
    ) -> None:
        self.server = server
        self.timeout = timeout
        self.session = TurnSession(username, password, realm=realm, new_txid=random_txid)
        self.link = open_link(server, transport, bind=bind) if link is None else link
        self.retransmit = retransmit if self.link.datagram else None
        self.on_stray = on_stray
        self._pending: deque[Received] = deque()

    @property
    def key(self) -> Callable[[], bytes]:
        """The long-term key for the learned realm (a test may replace it to sign with
        another)."""
        return self.session.key

    @key.setter
    def key(self, value: Callable[[], bytes]) -> None:
        self.session.key_override = value

    @property
    def sock(self) -> socket.socket:
        return self.link.sock

    @property
    def address(self) -> Address:
        """The client's own transport address."""
        host, port = self.sock.getsockname()[:2]
        return Address(host, port)

    def close(self) -> None:
        self.link.close()

    # --- raw I/O -------------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Send ``data`` as one datagram (or frame) to the server."""
        self.link.send(data)

    def _frames(self, deadline: float) -> list[bytes]:
        return wait_frames(self.link, deadline - time.monotonic())

    def receive(self, timeout: float | None = None) -> Received | None:
        """The next Data indication, ChannelData or unsolicited message, or None on timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._pending and time.monotonic() < deadline:
            for frame in self._frames(deadline):
                parsed = parse(frame)
                if parsed is not None:
                    self._pending.append(parsed)
        return self._pending.popleft() if self._pending else None

    # --- requests ------------------------------------------------------------------------------

    def exchange(self, request: Request) -> Message:
        """Send ``request`` and return its answer; TimeoutError when none comes in time."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            self.send_raw(request.data)
            wait_until = deadline
            if self.retransmit is not None:
                wait_until = min(deadline, time.monotonic() + self.retransmit)
            while time.monotonic() < wait_until:
                for frame in self._frames(wait_until):
                    parsed = parse(frame)
                    if isinstance(parsed, Message) and parsed.transaction_id == request.txid:
                        return parsed
                    if isinstance(parsed, DataIndication | ChannelData):
                        self._pending.append(parsed)
                    elif self.on_stray is not None:
                        self.on_stray(frame)
                    # anything else (a late answer to an earlier request) is dropped
            if self.retransmit is None:
                break
        raise TimeoutError(f"no answer to {request.method.name} from {self.server}")

    def run(self, request: Request) -> Message:
        """The whole exchange of ``request``, with the session's 401/438 retry."""
        while True:
            reply = self.exchange(request)
            again = self.session.answer(request, reply)
            if again is None:
                return reply
            request = again

    def transact(self, method: Method, attributes: Any = ()) -> Message:
        """One request (signed once a nonce is known) and its answer, without retry."""
        request = self.session.request(method, *attributes)
        reply = self.exchange(request)
        self.session.check(request, reply)
        return reply

    def learn(self, reply: Message) -> bool:
        """Take REALM and NONCE from a 401 or 438; False when the reply carries no NONCE."""
        return self.session.learn(reply)

    def request(self, method: Method, *attributes: Any, retry: bool = True) -> Message:
        """A request with the long-term credential dance (RFC 8489 §9.2.3): an unsigned
        request's 401, or any 438, teaches REALM and NONCE and the request goes again."""
        if not retry:
            return self.transact(method, attributes)
        return self.run(self.session.request(method, *attributes))

    def request_ok(self, method: Method, *attributes: Any) -> Message:
        """:meth:`request`, raising :class:`TurnError` for an error answer."""
        return raise_for_error(method, self.request(method, *attributes))

    def binding(self) -> Message:
        """A Binding request (RFC 8489 §6), signed once a nonce is known, without retry."""
        return self.transact(Method.BINDING)

    def allocate(self, *attributes: Any) -> Message:
        """Allocate a UDP relay (RFC 8656 §7.1); remembers the relayed address on success."""
        return self.run(self.session.allocate(*attributes))

    def refresh(self, lifetime: int | None = None) -> Message:
        """Refresh the allocation (RFC 8656 §8); ``lifetime=0`` deletes it."""
        return self.run(self.session.refresh(lifetime))

    def create_permission(self, *peers: Address) -> Message:
        """Install permissions for ``peers`` (RFC 8656 §9)."""
        return self.run(self.session.create_permission(*peers))

    def channel_bind(self, channel: int, peer: Address) -> Message:
        """Bind ``channel`` to ``peer`` (RFC 8656 §12.1)."""
        return self.run(self.session.channel_bind(channel, peer))

    def connect(self, peer: Address) -> Message:
        """Connect a TCP allocation to ``peer`` (RFC 6062 §4.3)."""
        return self.run(self.session.connect(peer))

    def connection_bind(self, connection_id: int) -> Message:
        """Make this connection the data connection of ``connection_id`` (RFC 6062 §4.3)."""
        return self.run(self.session.connection_bind(connection_id))

    # --- data ----------------------------------------------------------------------------------

    def send_indication(self, peer: Address, data: bytes) -> None:
        """Relay ``data`` to ``peer`` with a Send indication (RFC 8656 §10.1)."""
        self.send_raw(self.session.send_indication(peer, data))

    def send_channel_data(self, channel: int, data: bytes) -> None:
        """Relay ``data`` over a bound channel (RFC 8656 §12.4; padded over a stream)."""
        self.send_raw(self.session.channel_data(channel, data, pad=not self.link.datagram))


class EchoPeer(ClosesOnExit):
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

    close = stop


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(0.02)
    return True
