"""What the interop matrix covers: clients x turnd transports x credential types.

A *cell* is one client reaching turnd over one transport with one kind of credential. The plan is
pure data, fixed at import time, so that pytest can name one test per cell before anything runs.
Combinations a client cannot do at all (werift cannot speak UDP to an IPv6 TURN server, RFC 6062
TCP allocations need a stream to the server, turnutils_stunclient is UDP only) are listed with
the reason instead of being left out silently, and appear in the table as such.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

#: Long-term credentials (RFC 8489 §9.2): a static user of turnd's.
LONG_TERM = "long-term"
#: REST ephemeral credentials: minted by turnd's credential endpoint or by the client itself
#: from the shared secret (coturn's use-auth-secret scheme).
REST = "rest"
#: A Binding request needs no credential.
NO_CREDENTIAL = "none"


@attrs.frozen
class Transport:
    """How a client reaches turnd: ``kind`` (udp, tcp, tls) over IPv4 or IPv6 loopback."""

    name: str
    kind: str
    host: str

    @property
    def ipv6(self) -> bool:
        return ":" in self.host

    @property
    def url_host(self) -> str:
        """The host as it goes into a URL: ``[::1]`` for IPv6."""
        return f"[{self.host}]" if self.ipv6 else self.host

    def ice_url(self, port: int) -> str:
        """The ``turn:``/``turns:`` URL of RFC 7065 for this transport."""
        if self.kind == "tls":
            return f"turns:{self.url_host}:{port}?transport=tcp"
        return f"turn:{self.url_host}:{port}?transport={self.kind}"


TRANSPORTS: tuple[Transport, ...] = (
    Transport("udp", "udp", "127.0.0.1"),
    Transport("tcp", "tcp", "127.0.0.1"),
    Transport("tls", "tls", "127.0.0.1"),
    Transport("udp6", "udp", "::1"),
    Transport("tcp6", "tcp", "::1"),
    Transport("tls6", "tls", "::1"),
)
TRANSPORT_BY_NAME: Mapping[str, Transport] = {t.name: t for t in TRANSPORTS}

_STREAMS_ONLY = "RFC 6062 TCP allocations need a TCP or TLS connection to the server (§4.1)"
_UDP_ONLY = "turnutils_stunclient sends its Binding requests over UDP only"


@attrs.frozen
class Client:
    """One row group of the matrix: a program nobody here wrote, in one mode."""

    key: str
    label: str
    credentials: tuple[str, ...] = (LONG_TERM, REST)
    #: Transport name -> why this client cannot use it at all.
    unsupported: Mapping[str, str] = attrs.field(factory=dict)


CLIENTS: tuple[Client, ...] = (
    Client("chromium", "Chromium, RTCPeerConnection relay-only data channel"),
    Client(
        "werift",
        "werift (Node.js), RTCPeerConnection relay-only data channel",
        unsupported={"udp6": "werift's TURN client opens its UDP socket as udp4 only"},
    ),
    Client("aioice", "aioice TURN client, datagrams to an echo peer"),
    Client("uclient", "turnutils_uclient, ChannelData"),
    Client("uclient-send", "turnutils_uclient -s, Send/Data indications"),
    Client(
        "uclient-tcp-relay",
        "turnutils_uclient -T, RFC 6062 TCP relays",
        unsupported={"udp": _STREAMS_ONLY, "udp6": _STREAMS_ONLY},
    ),
    Client(
        "stunclient",
        "turnutils_stunclient, Binding",
        credentials=(NO_CREDENTIAL,),
        unsupported={name: _UDP_ONLY for name in ("tcp", "tls", "tcp6", "tls6")},
    ),
)
CLIENT_BY_KEY: Mapping[str, Client] = {c.key: c for c in CLIENTS}


@attrs.frozen
class Cell:
    """One client, one transport, one credential type."""

    client: str
    transport: str
    credential: str

    @property
    def id(self) -> str:
        """``client/transport/credential``: the cell's name in the JSON and in test ids."""
        return f"{self.client}/{self.transport}/{self.credential}"

    @property
    def tag(self) -> str:
        """A name usable as a TURN username or customIdentifier, unique to the cell, so that
        turnd's own accounting can be matched to it."""
        return f"{self.client}-{self.transport}-{self.credential}"

    @property
    def spec(self) -> Client:
        return CLIENT_BY_KEY[self.client]

    @property
    def link(self) -> Transport:
        return TRANSPORT_BY_NAME[self.transport]


def all_cells() -> list[Cell]:
    """Every cell of the table, unsupported ones included, in table order."""
    return [
        Cell(client.key, transport.name, credential)
        for client in CLIENTS
        for credential in client.credentials
        for transport in TRANSPORTS
    ]


def unsupported_reason(cell: Cell) -> str | None:
    """Why the cell's client cannot use its transport at all, or None."""
    return cell.spec.unsupported.get(cell.transport)


def runnable_cells(clients: frozenset[str] | None = None) -> list[Cell]:
    """The cells to run: supported ones, of ``clients`` (keys) when given."""
    return [
        cell
        for cell in all_cells()
        if unsupported_reason(cell) is None and (clients is None or cell.client in clients)
    ]
