"""The turnd the interop matrix runs against, and what turnd itself says it relayed.

One turnd (started through ``testkit.daemon``) serves every cell: UDP, TCP and TLS listeners on
127.0.0.1 and ::1, an IPv6 relay address, its self-signed certificate, the credential REST
endpoint and a usage file. Every cell gets its own username (see ``Cell.tag``):

* long-term cells a static user added at run time through the control API;
* REST cells a credential minted by the endpoint with the tag as customIdentifier (username
  ``<expiry>:interop:<tag>``), or, for turnutils_uclient, the tag as the user it hands to its own
  REST computation (``<expiry>:<tag>``).

So turnd's accounting can be matched to the cell that caused it: :func:`books` reads the live
allocations (control API) and the ended ones (usage file) and sums them per username. The
matrix holds each client's numbers against these: a client that says it relayed over TLS has to
show up in turnd's books as a TLS allocation that carried at least the bytes the client sent.
The books also hold the part of the packets and bytes turnd's kernel fast path relayed
(``kernel_*``), and :func:`fastpath_active` says whether it ran.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import socket
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from testkit.daemon import REST_SECRET, Daemon, start_turnd
from tests.interop.matrix_plan import Transport

#: Key id and bearer token of the credential endpoint, for this throw-away turnd only.
API_KEY_ID = "interop"
API_TOKEN = "interop-endpoint-token-for-tests"

#: Lifetime asked of minted credentials: longer than any matrix run.
CREDENTIAL_TTL = 3600

#: Bound on one HTTP exchange with turnd (a safety net, not a measurement).
HTTP_TIMEOUT = 10.0

__all__ = ["REST_SECRET", "MatrixTurnd", "Relayed", "books", "drops", "fastpath_active", "start"]


@attrs.frozen
class MatrixTurnd:
    """A running turnd with every listener the matrix needs."""

    daemon: Daemon
    directory: Path
    #: (transport kind, listening address) -> bound port.
    ports: Mapping[tuple[str, str], int]
    api_port: int

    def port(self, transport: Transport) -> int:
        return self.ports[(transport.kind, transport.host)]

    @property
    def cert(self) -> Path:
        """turnd's self-signed certificate (SANs: localhost, 127.0.0.1, ::1)."""
        return self.directory / "state" / "tls" / "cert.pem"

    @property
    def usage_file(self) -> Path:
        return self.directory / "usage.jsonl"

    @property
    def spki(self) -> str:
        """base64(SHA-256(SubjectPublicKeyInfo)) of the certificate, as Chromium pins keys."""
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        der = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")

    def stop(self) -> int:
        return self.daemon.stop()


def start(directory: Path) -> MatrixTurnd:
    """Start turnd on 127.0.0.1 and ::1 (UDP, TCP, TLS) with the endpoint and a usage file."""
    usage = directory / "usage.jsonl"
    extra = f"""
[relay]
address6 = "::1"

[api]
listen = "127.0.0.1:0"
keys = {{ {API_KEY_ID} = "{API_TOKEN}" }}

[usage]
file = "{usage}"
"""
    daemon = start_turnd(
        directory,
        extra,
        listen='["udp:0", "tcp:0", "tls:0"]',
        addresses='["127.0.0.1", "::1"]',
    )
    try:
        events = daemon.log_events()
        ports = {
            (e["transport"], e["address"]): int(e["port"])
            for e in events
            if e.get("event") == "listener.started"
        }
        api_port = next(int(e["port"]) for e in events if e.get("event") == "api.started")
    except BaseException:
        daemon.stop()
        raise
    return MatrixTurnd(daemon=daemon, directory=directory, ports=ports, api_port=api_port)


# --------------------------------------------------------------------------------------------
# Talking to turnd: the control API on its Unix socket, the credential endpoint over HTTP


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=HTTP_TIMEOUT)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(HTTP_TIMEOUT)
        sock.connect(self._path)
        self.sock = sock


def _control(turnd: MatrixTurnd, method: str, path: str, body: Any = None) -> Any:
    connection = _UnixConnection(turnd.daemon.control_socket)
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        text = response.read().decode()
        if response.status >= 300:
            raise RuntimeError(f"control API {method} {path}: {response.status} {text}")
        return json.loads(text) if text else None
    finally:
        connection.close()


def add_users(turnd: MatrixTurnd, users: Mapping[str, str]) -> None:
    """Add static users (``PUT /v1/users/{name}``); they live in the state directory."""
    for name, password in users.items():
        _control(turnd, "PUT", f"/v1/users/{name}", {"password": password})


def mint_credential(turnd: MatrixTurnd, tag: str) -> tuple[str, str]:
    """A REST credential from turnd's endpoint (Cloudflare shape), ``tag`` as customIdentifier.

    Returns (username, credential) from the iceServers entry that carries them.
    """
    url = (
        f"http://127.0.0.1:{turnd.api_port}/v1/turn/keys/{API_KEY_ID}"
        "/credentials/generate-ice-servers"
    )
    request = urllib.request.Request(
        url,
        data=json.dumps({"ttl": CREDENTIAL_TTL, "customIdentifier": tag}).encode(),
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
        answer = json.load(response)
    for server in answer["iceServers"]:
        if "username" in server:
            return str(server["username"]), str(server["credential"])
    raise RuntimeError(f"the credential endpoint returned no username: {answer}")


# --------------------------------------------------------------------------------------------
# turnd's books


#: The counters summed per cell, as a usage line and a live allocation view name them; the
#: ``kernel_*`` ones are the part of the totals that turnd's kernel fast path relayed.
COUNTERS = (
    "packets_to_peer",
    "bytes_to_peer",
    "packets_to_client",
    "bytes_to_client",
    "kernel_packets_to_peer",
    "kernel_bytes_to_peer",
    "kernel_packets_to_client",
    "kernel_bytes_to_client",
)


@attrs.frozen
class Relayed:
    """What turnd counted for one username's allocations, live and ended together."""

    allocations: int = 0
    transports: frozenset[str] = frozenset()
    clients: tuple[str, ...] = ()
    relays: tuple[str, ...] = ()
    packets_to_peer: int = 0
    bytes_to_peer: int = 0
    packets_to_client: int = 0
    bytes_to_client: int = 0
    kernel_packets_to_peer: int = 0
    kernel_bytes_to_peer: int = 0
    kernel_packets_to_client: int = 0
    kernel_bytes_to_client: int = 0

    def add(self, record: Mapping[str, Any]) -> Relayed:
        return self.merge(
            Relayed(
                allocations=1,
                transports=frozenset({str(record["transport"])}),
                clients=(str(record["client"]),),
                relays=tuple(_relays(record)),
                **{counter: int(record[counter]) for counter in COUNTERS},
            )
        )

    def merge(self, other: Relayed) -> Relayed:
        """Both together (the allocations of two usernames of one cell)."""
        return Relayed(
            allocations=self.allocations + other.allocations,
            transports=self.transports | other.transports,
            clients=self.clients + other.clients,
            relays=self.relays + other.relays,
            **{c: getattr(self, c) + getattr(other, c) for c in COUNTERS},
        )

    @property
    def packets(self) -> int:
        """Packets relayed both ways."""
        return self.packets_to_peer + self.packets_to_client

    @property
    def kernel_packets(self) -> int:
        """Packets the kernel fast path relayed both ways."""
        return self.kernel_packets_to_peer + self.kernel_packets_to_client

    def as_json(self) -> dict[str, Any]:
        return {
            "allocations": self.allocations,
            "transports": sorted(self.transports),
            "clients": list(self.clients),
            "relays": list(self.relays),
            **{counter: getattr(self, counter) for counter in COUNTERS},
        }


def _relays(record: Mapping[str, Any]) -> list[str]:
    """A live view lists its relayed addresses, a usage line the one relay it accounts for."""
    return [str(r) for r in record["relays"]] if "relays" in record else [str(record["relay"])]


def _records(turnd: MatrixTurnd) -> Iterable[Mapping[str, Any]]:
    """Live allocations first, then the usage lines of ended relays, without counting twice an
    allocation that ended between the two reads (same client and relay address)."""
    live = _control(turnd, "GET", "/v1/allocations")
    ended = []
    if turnd.usage_file.exists():
        ended = [json.loads(line) for line in turnd.usage_file.read_text().splitlines() if line]
    seen = {(r["client"], r["relay"]) for r in ended}
    for view in live:
        if not any((view["client"], relay) in seen for relay in view["relays"]):
            yield view
    yield from ended


def books(turnd: MatrixTurnd) -> dict[str, Relayed]:
    """turnd's relayed totals per username."""
    totals: dict[str, Relayed] = {}
    for record in _records(turnd):
        name = str(record["username"])
        totals[name] = totals.get(name, Relayed()).add(record)
    return totals


def for_tag(totals: Mapping[str, Relayed], tag: str) -> Relayed:
    """The totals of the usernames that belong to a cell: the tag itself (a static user) or any
    REST username ending in ``:<tag>``."""
    found = Relayed()
    for name, relayed in totals.items():
        if name == tag or name.endswith(":" + tag):
            found = found.merge(relayed)
    return found


def fastpath_active(turnd: MatrixTurnd) -> bool:
    """Whether turnd's kernel fast path runs (control API status, ``fastpath.active``)."""
    return bool(_control(turnd, "GET", "/v1/status")["fastpath"]["active"])


_DROPS = re.compile(r'^turnd_drops_total\{reason="([^"]*)"\} (\S+)$', re.MULTILINE)


def drops(turnd: MatrixTurnd) -> dict[str, int]:
    """turnd's dropped packets by reason (``/metrics``), for the notes of a failed run: a frame
    turnd could not parse, a packet past a rate limit, a peer without permission."""
    url = f"http://127.0.0.1:{turnd.daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
        text = response.read().decode()
    return {reason: int(float(value)) for reason, value in _DROPS.findall(text) if float(value)}
