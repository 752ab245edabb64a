"""The one TURN client of tests and bench, sans I/O: requests out as bytes, answers in as bytes.

Theory of operation: a :class:`TurnSession` holds what a client learns (REALM, NONCE, its
relayed and mapped addresses) and builds every message a TURN client sends: Binding, Allocate,
Refresh, CreatePermission, ChannelBind, Connect, ConnectionBind (RFC 8489 §6, RFC 8656 §7-§12,
RFC 6062 §4.3), Send indications and ChannelData. Each request is a :class:`Request` value; a
driver sends its bytes, finds the answer with the same transaction id and hands it to
:meth:`TurnSession.answer`, which checks the answer (FINGERPRINT is checked by the decoder;
MESSAGE-INTEGRITY here, RFC 8489 §9.2.5), learns from it, and returns the request to send again
after a 401 to an unsigned request or any 438 (RFC 8489 §9.2.3, §9.2.4), or None when the
exchange is over. The session never touches a socket or a clock; the drivers (``memory``,
``sync``, ``aio``) do, and only that.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar, overload

import attrs

from stun import (
    Address,
    Integrity,
    Message,
    MessageClass,
    Method,
    PacketKind,
    StunDecodeError,
    check_integrity,
    classify,
    decode,
    encode,
    frame_channel_data,
    parse_channel_data,
)
from stun import attributes as at
from stun.keys import PasswordAlgorithm, long_term_key, userhash

T = TypeVar("T")

#: REQUESTED-TRANSPORT values (RFC 8656 §18.8, RFC 6062 §6.1: IANA protocol numbers).
UDP_PROTOCOL = 17
TCP_PROTOCOL = 6
#: Sends of one request after the first: a 401 teaches REALM and NONCE, then a 438 if the fresh
#: nonce went stale on the way (possible with very short nonce lifetimes).
MAX_RETRIES = 2

#: Long-term keys by (username, realm, password, algorithm): load generators make thousands of
#: sessions with one credential, and the key costs a SASLprep and a hash.
_long_term_key = functools.lru_cache(maxsize=1024)(long_term_key)


class TurnError(RuntimeError):
    """The server answered a request with an error response."""

    def __init__(self, method: int, code: int, reason: str) -> None:
        name = method.name if isinstance(method, Method) else f"{method:#05x}"
        super().__init__(f"{name}: {code} {reason}")
        self.method = method
        self.code = code
        self.reason = reason


class ResponseError(RuntimeError):
    """An answer a client must discard: its MESSAGE-INTEGRITY is wrong or missing
    (RFC 8489 §9.2.5)."""


def error_code(message: Message) -> int | None:
    """The ERROR-CODE of ``message``, or None for a success."""
    error = message.get(at.ErrorCode)
    return None if error is None else error.code


def raise_for_error(method: int, reply: Message) -> Message:
    """``reply`` if it is a success, else :class:`TurnError`."""
    error = reply.get(at.ErrorCode)
    if error is not None:
        raise TurnError(method, error.code, error.reason)
    return reply


@attrs.frozen
class DataIndication:
    """A Data indication from the server: which peer sent what (RFC 8656 §10.3)."""

    peer: Address
    data: bytes


@attrs.frozen
class ChannelData:
    """A ChannelData message from the server (RFC 8656 §12.4)."""

    channel: int
    data: bytes


Received = DataIndication | ChannelData | Message


def parse(data: bytes) -> Received | None:
    """What the server sent: a Data indication, ChannelData, another message, or None for
    bytes that are neither STUN nor ChannelData or do not decode."""
    kind = classify(data)
    try:
        if kind is PacketKind.CHANNEL_DATA:
            return ChannelData(*parse_channel_data(data))
        if kind is not PacketKind.STUN:
            return None
        message = decode(data)
    except (StunDecodeError, ValueError):
        return None
    if message.method == Method.DATA and message.cls is MessageClass.INDICATION:
        peer, payload = message.get(at.XorPeerAddress), message.get(at.Data)
        if peer is not None and payload is not None:
            return DataIndication(peer.address, payload.value)
    return message


def counter_txids(start: int = 1) -> Callable[[], bytes]:
    """Transaction ids 1, 2, 3, ... as 12 bytes (deterministic, for the in-memory driver)."""
    counter: Iterator[int] = itertools.count(start)
    return lambda: next(counter).to_bytes(12, "big")


@attrs.frozen
class Request:
    """One request on the wire: what it asks, its transaction id and bytes, whether it is
    signed, and how many times it was sent again after a 401/438."""

    method: Method
    attributes: tuple[Any, ...]
    txid: bytes
    data: bytes
    signed: bool
    retries: int = 0


@attrs.define
class TurnSession:
    """One TURN client's state and messages, with no I/O (see the module docstring)."""

    username: str = ""
    password: str = ""
    #: The realm learned from a 401/438; ``default_realm`` is used until one is.
    realm: str | None = None
    nonce: str | None = None
    default_realm: str = ""
    #: SHA-256 long-term key and MESSAGE-INTEGRITY-SHA256 (RFC 8489 §9.2.2, §14.6).
    sha256: bool = False
    #: Send USERHASH instead of USERNAME (RFC 8489 §9.2.4, §14.4).
    userhash: bool = False
    fingerprint: bool = True
    max_retries: int = MAX_RETRIES
    new_txid: Callable[[], bytes] = attrs.field(factory=counter_txids)
    #: XOR-RELAYED-ADDRESS of the last successful Allocate (RFC 8656 §7.3).
    relay: Address | None = None
    #: XOR-MAPPED-ADDRESS of the last answer that carried one (RFC 8489 §14.2).
    mapped: Address | None = None
    #: Signs with this key instead of the long-term one (a test's deliberately wrong key).
    key_override: Callable[[], bytes] | None = None

    # --- credentials ---------------------------------------------------------------------------

    @property
    def current_realm(self) -> str:
        return self.realm or self.default_realm

    def key(self) -> bytes:
        """The long-term key (RFC 8489 §9.2.2) for the current realm."""
        if self.key_override is not None:
            return self.key_override()
        algorithm = PasswordAlgorithm.SHA256 if self.sha256 else PasswordAlgorithm.MD5
        return _long_term_key(self.username, self.current_realm, self.password, algorithm)

    def credential_attributes(self) -> list[Any]:
        """USERNAME (or USERHASH), REALM, NONCE and, for a SHA-256 client, the algorithms."""
        realm = self.current_realm
        name: Any = (
            at.Userhash(userhash(self.username, realm))
            if self.userhash
            else at.Username(self.username)
        )
        out = [name, at.Realm(realm), at.Nonce(self.nonce or "")]
        if self.sha256:
            entries = (
                at.PasswordAlgorithmEntry(PasswordAlgorithm.SHA256),
                at.PasswordAlgorithmEntry(PasswordAlgorithm.MD5),
            )
            out += [at.PasswordAlgorithms(entries), at.PasswordAlgorithm(PasswordAlgorithm.SHA256)]
        return out

    def learn(self, reply: Message) -> bool:
        """Take NONCE (and REALM when given) from a 401 or 438; False without a NONCE."""
        nonce, realm = reply.get(at.Nonce), reply.get(at.Realm)
        if nonce is None:
            return False
        self.nonce = nonce.value
        if realm is not None:
            self.realm = realm.value
        return True

    # --- building ------------------------------------------------------------------------------

    def encode_request(
        self,
        method: int,
        attributes: Iterable[Any],
        txid: bytes,
        *,
        credentials: Iterable[Any] | None = None,
    ) -> bytes:
        """A request, signed once a NONCE is known; ``credentials`` replaces the attributes of
        :meth:`credential_attributes` (to send broken ones)."""
        values = list(attributes)
        if self.nonce is not None:
            values += self.credential_attributes() if credentials is None else list(credentials)
        message = Message(method, MessageClass.REQUEST, txid, tuple(values))
        return encode(
            message,
            key=self.key() if self.nonce is not None else None,
            integrity=Integrity.SHA256 if self.sha256 else Integrity.SHA1,
            fingerprint=self.fingerprint,
        )

    def request(self, method: Method, *attributes: Any, retries: int = 0) -> Request:
        """A :class:`Request` with a fresh transaction id."""
        txid = self.new_txid()
        data = self.encode_request(method, attributes, txid)
        return Request(method, attributes, txid, data, self.nonce is not None, retries)

    def binding(self) -> Request:
        """A Binding request (RFC 8489 §6), unsigned."""
        txid = self.new_txid()
        message = Message(Method.BINDING, MessageClass.REQUEST, txid, ())
        return Request(
            Method.BINDING, (), txid, encode(message, fingerprint=self.fingerprint), False
        )

    def allocate(self, *attributes: Any) -> Request:
        """Allocate (RFC 8656 §7.1); a UDP relay unless ``attributes`` say otherwise."""
        return self.request(
            Method.ALLOCATE, *(attributes or (at.RequestedTransport(UDP_PROTOCOL),))
        )

    def refresh(self, lifetime: int | None = None, *extra: Any) -> Request:
        """Refresh (RFC 8656 §8); ``lifetime=0`` deletes the allocation."""
        return self.request(
            Method.REFRESH, *(() if lifetime is None else (at.Lifetime(lifetime),)), *extra
        )

    def create_permission(self, *peers: Address) -> Request:
        """CreatePermission for ``peers`` (RFC 8656 §9)."""
        return self.request(Method.CREATE_PERMISSION, *(at.XorPeerAddress(p) for p in peers))

    def channel_bind(self, channel: int, peer: Address) -> Request:
        """ChannelBind ``channel`` to ``peer`` (RFC 8656 §12.1)."""
        return self.request(Method.CHANNEL_BIND, at.ChannelNumber(channel), at.XorPeerAddress(peer))

    def connect(self, peer: Address) -> Request:
        """Connect to ``peer`` from a TCP allocation (RFC 6062 §4.3)."""
        return self.request(Method.CONNECT, at.XorPeerAddress(peer))

    def connection_bind(self, connection_id: int) -> Request:
        """ConnectionBind this connection to ``connection_id`` (RFC 6062 §4.3)."""
        return self.request(Method.CONNECTION_BIND, at.ConnectionId(connection_id))

    def send_indication(self, peer: Address, data: bytes) -> bytes:
        """A Send indication relaying ``data`` to ``peer`` (RFC 8656 §10.1)."""
        message = Message(
            Method.SEND,
            MessageClass.INDICATION,
            self.new_txid(),
            (at.XorPeerAddress(peer), at.Data(data)),
        )
        return encode(message)

    @staticmethod
    def channel_data(channel: int, data: bytes, *, pad: bool = False) -> bytes:
        """ChannelData on ``channel`` (RFC 8656 §12.4); ``pad`` for TCP/TLS (§12.5)."""
        return frame_channel_data(channel, data, pad=pad)

    # --- answers -------------------------------------------------------------------------------

    def check(self, request: Request, reply: Message) -> None:
        """Raise :class:`ResponseError` when an answer's MESSAGE-INTEGRITY(-SHA256) does not
        verify, or a success to a signed request other than Binding carries none (a server
        may answer Binding without authenticating it, RFC 8489 §9)."""
        signed_reply = reply.mi_offset is not None or reply.mi256_offset is not None
        if not signed_reply:
            must = reply.cls is MessageClass.SUCCESS and request.method != Method.BINDING
            if request.signed and must:
                raise ResponseError(f"{request.method.name}: success without MESSAGE-INTEGRITY")
            return
        if not check_integrity(reply, self.key()):
            raise ResponseError(f"{request.method.name}: answer fails MESSAGE-INTEGRITY")

    def answer(self, request: Request, reply: Message) -> Request | None:
        """Take the answer to ``request``: check it, learn from it, and return the request to
        send again (a 401 to an unsigned request, any 438) or None when the exchange is over."""
        self.check(request, reply)
        mapped = reply.get(at.XorMappedAddress)
        if mapped is not None:
            self.mapped = mapped.address
        code = error_code(reply)
        if code is None:
            relayed = reply.get(at.XorRelayedAddress)
            if request.method == Method.ALLOCATE and relayed is not None:
                self.relay = relayed.address
            return None
        stale = code == 438 or (code == 401 and not request.signed)
        if request.retries >= self.max_retries or not stale or not self.learn(reply):
            return None
        return self.request(request.method, *request.attributes, retries=request.retries + 1)


class FromSession(Generic[T]):
    """A driver attribute that reads and writes the session's attribute of the same name."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, driver: None, owner: type) -> FromSession[T]: ...
    @overload
    def __get__(self, driver: SessionState, owner: type) -> T: ...
    def __get__(self, driver: SessionState | None, owner: type) -> T | FromSession[T]:
        if driver is None:
            return self
        value: T = getattr(driver.session, self.name)
        return value

    def __set__(self, driver: SessionState, value: T) -> None:
        setattr(driver.session, self.name, value)


class SessionState:
    """The session's state as tests read and set it, for a driver that holds ``session``
    (the memory, sync and asyncio drivers)."""

    session: TurnSession

    username: FromSession[str] = FromSession()
    password: FromSession[str] = FromSession()
    sha256: FromSession[bool] = FromSession()
    realm: FromSession[str | None] = FromSession()
    nonce: FromSession[str | None] = FromSession()
    #: The XOR-RELAYED-ADDRESS of the last successful Allocate.
    relay: FromSession[Address | None] = FromSession()
