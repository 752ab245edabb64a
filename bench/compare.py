"""turnd against coturn on loopback: the same loads, one server after the other, one table.

    python -m bench.compare [--quick] [--only METRIC ...] [--json PATH] [--seconds S] ...

Theory of operation
-------------------
Each server is started with the same configuration: realm ``turnd.test``, the long-term user
alice, loopback peers allowed, UDP, TCP and TLS listeners on 127.0.0.1 (TLS with a self-signed
certificate), relays on 127.0.0.1, and coturn held to one relay thread (``relay-threads``; turnd
is one process with one event loop). Then every selected load runs against turnd, and the same
loads run against coturn; a fresh instance of each serves the memory load. Server CPU is
utime + stime of the whole process (every thread) from /proc/PID/stat, in clock ticks; memory is
VmRSS from /proc/PID/status.

The loads, all driven from this process with raw codec-based clients toward one echo peer
(coturn's ``turnutils_peer`` when installed, else a small Python echo process):

* ``cpu``: server CPU per relayed packet for UDP channels, UDP Send indications, TCP and TLS
  (channels over the stream, padded): ``--packets`` round trips with ``--window`` in flight;
  each echoed packet crosses the relay twice.
* ``uclient``: the same figure with coturn's ``turnutils_uclient`` (UDP channels) as the load, a
  cross-check by a client nobody here wrote; its CPU includes allocation and idle time.
* ``rate``: the highest paced packet rate with at most 0.1 % loss, UDP channels: the rate doubles
  from ``--rate-start`` until a step loses more, then bisects. A step the generator could not keep
  up with (paced below 95 % of its target, or most of the loss at the client's own sockets, read
  from /proc/net/udp) ends the search: the figure is then a floor, and says so.
* ``rtt``: round trips through the relay against round trips straight to the echo peer, one in
  flight, interleaved; the added latency is the difference of the percentiles.
* ``binding``: unauthenticated STUN Binding requests over UDP, windowed, answers per second.
* ``allocations``: fresh client sockets, each 401 -> authenticated Allocate -> Refresh(0),
  completed allocations per second.
* ``rss``: (RSS with N idle allocations - RSS before) / N, for each N of ``--allocations``, on
  a fresh server after a warm-up. More than 16384 allocations do not fit one relay address's
  default port range, so both servers then get a wider one; a level the servers' open-file limit
  cannot hold is measured at the most that fits, and the output says so.

Allocation clients each bind an address of their own on 127.0.0.2 and up, never reusing a
5-tuple in a run (so their ports never meet the relay ports on 127.0.0.1, and no server sees a
deleted allocation's 5-tuple again), and close their socket once the exchange is done: an idle
UDP allocation is server state the client's socket is not needed for.

Figures only, no thresholds. Where this process is the bottleneck the output says so.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import math
import os
import platform
import resource
import select
import selectors
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import attrs

from stun import attributes as at
from stun.addresses import Address
from stun.channeldata import frame_channel_data
from stun.framing import StreamDeframer
from stun.keys import long_term_key
from stun.message import Message, MessageClass, Method, decode, encode
from tests.daemon import PASSWORD, REALM, USER, start_turnd

LOOPBACK = "127.0.0.1"
#: Allocation loads bind each fresh client socket to an address of its own on 127.0.0.2 and up,
#: never one on 127.0.0.1: 20k ephemeral client ports there would compete with the relay ports
#: both servers bind, and a reused 5-tuple meets what a server keeps of a deleted allocation
#: (coturn answers 437 for a while).
CLIENT_HOSTS = range(2, 255)
CLIENT_PORTS = range(1024, 65536)
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVERS = ("turnd", "coturn")
METRICS = ("cpu", "uclient", "rate", "rtt", "binding", "allocations", "rss")
TRANSPORTS = (("udp", "channel"), ("udp", "send"), ("tcp", "channel"), ("tls", "channel"))
CHANNEL = 0x4000
#: RFC 8656 §7.2 / coturn's default relay range: 16384 ports per relay address.
DEFAULT_PORT_RANGE = (49152, 65535)
#: Used by the RSS load when it needs more than 16384 allocations on one relay address: 24000
#: ports below Linux's ephemeral range (32768-60999), the same range for both servers.
WIDE_PORT_RANGE = (8000, 31999)
#: ≤ 0.1 % loss is what the issue calls a sustainable rate.
LOSS_TARGET_PERCENT = 0.1
#: A paced step below this share of its target rate measured the generator, not the server.
PACE_TOLERANCE = 0.95
#: Seconds without any answer before the packets in flight are written off as lost.
SILENCE = 0.3
#: Seconds to wait for stragglers after a paced step or a timed load.
DRAIN = 0.5
#: One request's wait for its answer on loopback; a miss is a failure, not a retry.
REQUEST_TIMEOUT = 3.0
#: Receive buffer of load sockets: a burst of answers must not overflow the client first.
CLIENT_BUFFER = 4 << 20
#: Datagrams read from one socket per readiness event before the loop looks at the others.
RECEIVE_BATCH = 256
#: Most packets sent in one go by the pacer, so that receiving is never starved.
MAX_BURST = 64
#: Distinct Binding requests per socket (a server could cache answers by transaction id).
BINDING_TXIDS = 256
#: Allocations that get no answer within this many seconds count as failed.
ALLOCATION_STALL = 2.0
#: The allocation driver gives up after this many failures (a full port range fails them all).
MAX_ALLOCATION_FAILURES = 200
#: Allocations made and deleted before the RSS baseline, so lazy imports and first-use caches
#: are not charged to the measured allocations.
RSS_WARMUP = 50
#: Descriptors a server needs besides its relay sockets (listeners, log, TLS, event loop).
FILE_MARGIN = 100
#: Seconds between the last allocation and the RSS reading.
RSS_SETTLE = 0.5
#: Pause between two latency samples: one packet in flight, never a queue.
RTT_GAP = 0.001
#: Highest rate the doubling search tries (packets/s); far above what either server does here.
RATE_CAP = 2_000_000
#: Upper bound of any load in seconds, whatever the flags: every loop here ends.
LOAD_DEADLINE = 300.0


# --------------------------------------------------------------------------------------------
# Pure helpers: /proc readers, statistics, the table and the JSON file


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def thread_names(pid: int) -> dict[str, int]:
    """How many threads of process ``pid`` carry each name (/proc/PID/task/*/comm)."""
    names = collections.Counter(
        Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
        for task in os.listdir(f"/proc/{pid}/task")
    )
    return dict(names)


def parse_udp_drops(text: str) -> dict[int, int]:
    """Receive-buffer drops per local port from the text of /proc/net/udp (last column)."""
    drops: dict[int, int] = collections.Counter()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 13:
            continue
        port = int(fields[1].rsplit(":", 1)[1], 16)
        drops[port] += int(fields[-1])
    return dict(drops)


def udp_drops() -> dict[int, int]:
    """Receive-buffer drops of every IPv4 UDP socket on the host, by local port."""
    return parse_udp_drops(Path("/proc/net/udp").read_text())


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation; None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """turnd / coturn, or None when either is missing or coturn's is zero."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def per(amount: float, count: float, scale: float = 1.0) -> float | None:
    """``scale * amount / count``, or None for a zero count."""
    return scale * amount / count if count else None


@attrs.frozen
class Row:
    """One line of the table: a figure for each server."""

    group: str
    label: str
    unit: str
    #: "lower" or "higher": which direction is better.
    better: str
    values: Mapping[str, float | None]
    note: str = ""


def format_number(value: float | None) -> str:
    """A figure with sensible digits; "-" when missing."""
    if value is None or math.isnan(value):
        return "-"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(rows: Sequence[Row], servers: Sequence[str] = SERVERS) -> str:
    """Rows grouped under their metric, one column per server and the turnd/coturn ratio."""
    lines: list[str] = []
    header = f"  {'':34} {'unit':>10}" + "".join(f" {s:>10}" for s in servers)
    header += f" {'turnd/coturn':>13}  better"
    for group, members in itertools.groupby(rows, key=lambda r: r.group):
        lines += ["", group, header]
        for row in members:
            values = [row.values.get(s) for s in servers]
            cells = "".join(f" {format_number(v):>10}" for v in values)
            line = f"  {row.label:34} {row.unit:>10}{cells}"
            line += (
                f" {format_number(ratio(row.values.get('turnd'), row.values.get('coturn'))):>13}"
            )
            line += f"  {row.better}"
            lines.append(line)
            if row.note:
                lines.append(f"    {row.note}")
    return "\n".join(lines[1:]) if lines else "(no figures)"


def clean_json(value: Any) -> Any:
    """``value`` with NaN and infinities as None and tuples as lists, so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def write_json(path: Path, document: Mapping[str, Any]) -> Path:
    """Write ``document`` as strict JSON to ``path``, making its directory; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean_json(document), indent=2, allow_nan=False) + "\n")
    return path


def default_json_path(now: datetime) -> Path:
    """bench/results/compare-<UTC timestamp>.json (bench/results is git-ignored)."""
    return Path(__file__).parent / "results" / f"compare-{now:%Y%m%dT%H%M%SZ}.json"


# --------------------------------------------------------------------------------------------
# Servers and the echo peer


@attrs.define
class Server:
    """A running TURN server under test."""

    name: str
    pid: int
    udp: tuple[str, int]
    tcp: tuple[str, int]
    tls: tuple[str, int]
    stop: Callable[[], object]
    settings: list[str]


def raise_file_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard when allowed) toward ``wanted``; the servers started
    afterwards inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        return wanted
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def start_turnd_server(
    work: Path, port_range: tuple[int, int], allocations: int, threads: int
) -> Server:
    """turnd on UDP, TCP and TLS (self-signed) with the limits raised to ``allocations``."""
    del threads  # turnd is one process with one event loop
    extra = f"""
[relay]
port_min = {port_range[0]}
port_max = {port_range[1]}

[limits]
max_allocations = {allocations}
max_allocations_per_user = {allocations}
max_allocations_per_ip = {allocations}
"""
    daemon = start_turnd(work, extra, listen='["udp:0", "tcp:0", "tls:0"]')
    return Server(
        name="turnd",
        pid=daemon.process.pid,
        udp=(LOOPBACK, daemon.ports["udp"][0]),
        tcp=(LOOPBACK, daemon.ports["tcp"][0]),
        tls=(LOOPBACK, daemon.ports["tls"][0]),
        stop=daemon.stop,
        settings=[
            f"relay ports {port_range[0]}-{port_range[1]}",
            f"limits.max_allocations(_per_user, _per_ip) = {allocations}",
            "one event loop (uvloop when installed)",
        ],
    )


def start_coturn_server(
    work: Path, port_range: tuple[int, int], allocations: int, threads: int
) -> Server:
    """coturn's turnserver with the same realm, user, peers, listeners and relay range."""
    from tests.interop.coturn_tools import start_turnserver

    del allocations  # coturn's user-quota and total-quota default to unlimited
    options = [f"relay-threads={threads}", f"min-port={port_range[0]}", f"max-port={port_range[1]}"]
    server = start_turnserver(
        work, users={USER: PASSWORD}, realm=REALM, tls=True, extra_config=options
    )
    assert server.tls_port is not None
    return Server(
        name="coturn",
        pid=server.pid,
        udp=(LOOPBACK, server.port),
        tcp=(LOOPBACK, server.port),
        tls=(LOOPBACK, server.tls_port),
        stop=server.stop,
        settings=[*options, "user-quota/total-quota unlimited (default)"],
    )


STARTERS: dict[str, Callable[[Path, tuple[int, int], int, int], Server]] = {
    "turnd": start_turnd_server,
    "coturn": start_coturn_server,
}

_PY_ECHO = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
sock.settimeout(1.0)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        data, addr = sock.recvfrom(65535)
    except TimeoutError:
        continue
    sock.sendto(data, addr)
"""


@attrs.define
class EchoPeer:
    """The UDP echo peer every relay load sends to."""

    address: tuple[str, int]
    pid: int
    kind: str
    stop: Callable[[], object]


def start_echo_peer(lifetime: float) -> EchoPeer:
    """coturn's turnutils_peer if installed, else a Python echo process that ends by itself
    after ``lifetime`` seconds."""
    from tests.interop.coturn_tools import find_tool, start_peer

    if find_tool("turnutils_peer"):
        peer = start_peer()
        return EchoPeer((LOOPBACK, peer.port), peer.pid, "turnutils_peer", peer.stop)
    process = subprocess.Popen(
        [sys.executable, "-c", _PY_ECHO, str(lifetime)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())

    def stop() -> None:
        process.terminate()
        process.wait(timeout=10)

    return EchoPeer((LOOPBACK, port), process.pid, "python echo", stop)


# --------------------------------------------------------------------------------------------
# Raw TURN clients over UDP, TCP and TLS


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
        return UdpLink(server.udp, buffer=CLIENT_BUFFER)
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


# --------------------------------------------------------------------------------------------
# Load loops


@attrs.frozen
class PumpResult:
    sent: int
    received: int
    seconds: float

    @property
    def lost(self) -> int:
        return max(self.sent - self.received, 0)


def pump(
    links: Sequence[Link],
    frames: Sequence[Sequence[bytes]],
    window: int,
    total: int,
    seconds: float,
) -> PumpResult:
    """Keep ``window`` frames in flight, round-robin over ``links`` (each cycling through its
    ``frames``), until ``total`` are answered or ``seconds`` pass. A silence of ``SILENCE``
    seconds writes the frames in flight off as lost."""
    cycles = [itertools.cycle(f) for f in frames]
    selector = selectors.DefaultSelector()
    for link in links:
        selector.register(link.sock, selectors.EVENT_READ, link)
    sent = received = written_off = 0
    started = time.perf_counter()
    deadline = started + min(seconds, LOAD_DEADLINE)
    try:
        while received + written_off < total and time.perf_counter() < deadline:
            while sent < total and sent - received - written_off < window:
                index = sent % len(links)
                try:
                    links[index].send(next(cycles[index]))
                except BlockingIOError:
                    break
                sent += 1
            events = selector.select(SILENCE)
            if not events:
                written_off = sent - received
            for key, _ in events:
                received += len(key.data.receive())
        drain_until = time.perf_counter() + DRAIN
        while received < sent and time.perf_counter() < drain_until:
            for key, _ in selector.select(0.05):
                received += len(key.data.receive())
    finally:
        selector.close()
    return PumpResult(sent, received, time.perf_counter() - started)


def paced(
    links: Sequence[UdpLink], frames: Sequence[bytes], rate: float, seconds: float
) -> PumpResult:
    """Send at ``rate`` packets/s for ``seconds``, round-robin, reading answers in between."""
    selector = selectors.DefaultSelector()
    for link in links:
        selector.register(link.sock, selectors.EVENT_READ, link)
    total = int(rate * seconds)
    sent = received = 0
    started = time.perf_counter()
    end = started + min(seconds, LOAD_DEADLINE)
    try:
        while (now := time.perf_counter()) < end and sent < total:
            due = min(total, int((now - started) * rate) + 1)
            for _ in range(min(due - sent, MAX_BURST)):
                index = sent % len(links)
                try:
                    links[index].send(frames[index])
                except BlockingIOError:
                    break
                sent += 1
            wait = max(0.0, min(started + sent / rate - time.perf_counter(), 0.01))
            for key, _ in selector.select(wait):
                received += len(key.data.receive())
        send_seconds = time.perf_counter() - started
        drain_until = time.perf_counter() + DRAIN
        while received < sent and time.perf_counter() < drain_until:
            for key, _ in selector.select(0.05):
                received += len(key.data.receive())
    finally:
        selector.close()
    return PumpResult(sent, received, send_seconds)


@attrs.define
class AllocationRun:
    completed: int = 0
    failures: collections.Counter[str] = attrs.field(factory=collections.Counter)
    seconds: float = 0.0


@attrs.define
class _Attempt:
    link: UdpLink
    stage: int
    txid: bytes
    since: float
    nonce: str = ""
    realm: str = REALM


def allocate_many(
    server: Server,
    *,
    window: int,
    count: int | None,
    seconds: float,
    delete: bool,
) -> AllocationRun:
    """Allocations from fresh sockets, ``window`` at a time: 401, Allocate, and Refresh(0) when
    ``delete``. Stops after ``count`` completed (None: no limit), ``seconds``, or too many
    failures.

    Each socket is closed once its exchange is done. An allocation kept (not ``delete``) stays
    on the server all the same: a UDP allocation is server state that does not notice, nothing
    is sent to an idle client, and the client's address is never reused in the run. So this
    process needs a window of file descriptors, not one per allocation."""
    run = AllocationRun()
    keys: dict[str, bytes] = {}
    selector = selectors.DefaultSelector()
    attempts: dict[int, _Attempt] = {}
    started = time.perf_counter()
    deadline = started + min(seconds, LOAD_DEADLINE)

    def send(attempt: _Attempt, stage: int, method: Method, *attributes: Any) -> None:
        attempt.stage, attempt.txid = stage, os.urandom(12)
        key = None
        if stage:
            key = keys.setdefault(attempt.realm, long_term_key(USER, attempt.realm, PASSWORD))
            attributes += (at.Username(USER), at.Realm(attempt.realm), at.Nonce(attempt.nonce))
        message = Message(method, MessageClass.REQUEST, attempt.txid, attributes)
        attempt.link.send(encode(message, key=key))

    def finish(attempt: _Attempt, failure: str | None) -> None:
        selector.unregister(attempt.link.sock)
        del attempts[attempt.link.sock.fileno()]
        if failure is not None:
            run.failures[failure] += 1
        else:
            run.completed += 1
        attempt.link.close()

    def answer(attempt: _Attempt, reply: Message) -> None:
        error = reply.get(at.ErrorCode)
        if attempt.stage == 0:
            nonce, realm = reply.get(at.Nonce), reply.get(at.Realm)
            if error is None or error.code != 401 or nonce is None:
                finish(attempt, f"first Allocate: {error.code if error else 'no 401'}")
                return
            attempt.nonce, attempt.realm = nonce.value, realm.value if realm else REALM
            send(attempt, 1, Method.ALLOCATE, at.RequestedTransport(17))
        elif error is not None:
            finish(attempt, f"{'Allocate' if attempt.stage == 1 else 'Refresh'}: {error.code}")
        elif attempt.stage == 1 and delete:
            send(attempt, 2, Method.REFRESH, at.Lifetime(0))
        else:
            finish(attempt, None)

    def wanted() -> bool:
        if count is not None and run.completed + len(attempts) >= count:
            return False
        return time.perf_counter() < deadline and sum(run.failures.values()) < (
            MAX_ALLOCATION_FAILURES
        )

    try:
        while attempts or wanted():
            while len(attempts) < window and wanted():
                link = UdpLink(server.udp, addresses=CLIENT_ADDRESSES)
                attempt = _Attempt(link, 0, b"", time.perf_counter())
                attempts[link.sock.fileno()] = attempt
                selector.register(link.sock, selectors.EVENT_READ, attempt)
                send(attempt, 0, Method.ALLOCATE, at.RequestedTransport(17))
            for key, _ in selector.select(0.1):
                attempt = key.data
                for frame in attempt.link.receive():
                    reply = decode(frame)
                    if reply.transaction_id == attempt.txid:
                        answer(attempt, reply)
                        break
            now = time.perf_counter()
            for attempt in [a for a in attempts.values() if now - a.since > ALLOCATION_STALL]:
                finish(attempt, "no answer")
            if now > deadline + ALLOCATION_STALL + 1:
                break
    finally:
        for attempt in list(attempts.values()):
            finish(attempt, "unfinished")
        selector.close()
    run.seconds = time.perf_counter() - started
    return run


# --------------------------------------------------------------------------------------------
# The measurements: each takes a running server and returns a JSON-ready dict


@attrs.frozen
class Options:
    quick: bool
    seconds: float
    packets: int
    size: int
    window: int
    clients: int
    samples: int
    allocations: tuple[int, ...]
    rate_start: int
    bisect_steps: int
    uclient_clients: int
    uclient_messages: int
    coturn_relay_threads: int
    rss_port_range: tuple[int, int] | None


class Meter:
    """CPU seconds of the server and of this process (the load generator) over a load."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.server = cpu_seconds(pid)
        self.client = cpu_seconds(os.getpid())
        self.started = time.perf_counter()

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        client = cpu_seconds(os.getpid()) - self.client
        return {
            "server_cpu_s": cpu_seconds(self.pid) - self.server,
            "client_cpu_s": client,
            "client_cpu_percent": 100 * client / wall if wall else 0.0,
        }


def measure_cpu(server: Server, peer: EchoPeer, options: Options) -> dict[str, Any]:
    """Server CPU per relayed packet over UDP channels and Send, TCP and TLS (channels)."""
    results: dict[str, Any] = {}
    payload = os.urandom(options.size)
    for transport, mode in TRANSPORTS:
        name = f"{transport}-{mode}"
        try:
            with relay_sessions(server, peer, transport, mode, options.clients) as sessions:
                frames = [[s.data_frame(peer.address, mode, payload)] for s in sessions]
                meter = Meter(server.pid)
                result = pump(
                    [s.link for s in sessions], frames, options.window, options.packets, 120.0
                )
                figures = meter.read()
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        relayed = 2 * result.received  # each round trip crosses the relay twice
        results[name] = {
            "sent": result.sent,
            "received": result.received,
            "loss_percent": per(result.lost, result.sent, 100),
            "seconds": result.seconds,
            "round_trips_per_s": per(result.received, result.seconds),
            **figures,
            "cpu_us_per_relayed_packet": per(figures["server_cpu_s"], relayed, 1e6),
        }
    return results


def measure_uclient(server: Server, peer: EchoPeer, options: Options) -> dict[str, Any]:
    """turnutils_uclient over UDP channels; server CPU over its whole run per relayed packet."""
    from tests.interop.coturn_tools import find_tool, run_uclient

    if not find_tool("turnutils_uclient"):
        return {"error": "turnutils_uclient is not installed"}
    meter = Meter(server.pid)
    report = run_uclient(
        server.udp[0],
        server.udp[1],
        peer.address[0],
        peer.address[1],
        user=USER,
        password=PASSWORD,
        clients=options.uclient_clients,
        messages=options.uclient_messages,
        length=options.size,
        rtcp=False,
        interval_ms=1,
    )
    figures = meter.read()
    return {
        "argv": list(report.argv),
        "sent": report.sent_packets,
        "received": report.received_packets,
        "loss_percent": report.lost_percent,
        "rtt_avg_ms": report.rtt_avg_ms,
        "server_cpu_s": figures["server_cpu_s"],
        "cpu_us_per_relayed_packet": per(figures["server_cpu_s"], 2 * report.received_packets, 1e6),
    }


def measure_rate(server: Server, peer: EchoPeer, options: Options) -> dict[str, Any]:
    """Highest paced rate (client packets/s, UDP channels) at ≤ 0.1 % loss."""
    payload = os.urandom(options.size)
    with relay_sessions(server, peer, "udp", "channel", options.clients) as sessions:
        udp_links = [s.link for s in sessions if isinstance(s.link, UdpLink)]
        frames = [s.data_frame(peer.address, "channel", payload) for s in sessions]
        places = {
            "client": {link.port for link in udp_links},
            "server": {server.udp[1]} | {s.relay.port for s in sessions if s.relay},
            "peer": {peer.address[1]},
        }
        steps: list[dict[str, Any]] = []

        def trial(rate: int) -> str:
            before = udp_drops()
            meter = Meter(server.pid)
            result = paced(udp_links, frames, rate, options.seconds)
            after = udp_drops()
            drops = {
                where: sum(after.get(p, 0) - before.get(p, 0) for p in ports)
                for where, ports in places.items()
            }
            loss = per(result.lost, result.sent, 100) or 0.0
            achieved = per(result.sent, result.seconds) or 0.0
            if achieved < PACE_TOLERANCE * rate:
                verdict = "generator"  # could not send that fast
            elif loss <= LOSS_TARGET_PERCENT:
                verdict = "ok"
            elif 2 * drops["client"] >= result.lost:
                verdict = "generator"  # most losses were the client's own full buffers
            else:
                verdict = "loss"
            steps.append(
                {
                    "target_pps": rate,
                    "achieved_pps": achieved,
                    "sent": result.sent,
                    "received": result.received,
                    "loss_percent": loss,
                    "socket_drops": drops,
                    **meter.read(),
                    "verdict": verdict,
                }
            )
            return verdict

        good, bad, stop = 0, 0, ""
        rate = options.rate_start
        while rate <= RATE_CAP:
            verdict = trial(rate)
            if verdict != "ok":
                bad, stop = (rate, "server") if verdict == "loss" else (0, "generator")
                break
            good, rate = rate, rate * 2
        else:
            stop = "search cap"
        for _ in range(options.bisect_steps if bad else 0):
            middle = (good + bad) // 2
            if bad - middle < max(bad // 50, 1):
                break
            verdict = trial(middle)
            if verdict == "ok":
                good = middle
            elif verdict == "loss":
                bad = middle
            else:
                stop = "generator"
                break
    return {"best_pps": good or None, "limited_by": stop, "steps": steps}


def measure_rtt(server: Server, peer: EchoPeer, options: Options) -> dict[str, Any]:
    """Round-trip times through the relay and straight to the peer, interleaved, in µs."""
    relay_us: list[float] = []
    direct_us: list[float] = []
    direct = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    direct.bind((LOOPBACK, 0))
    lost = {"relay": 0, "direct": 0}
    with contextlib.closing(direct), relay_sessions(server, peer, "udp", "channel", 1) as sessions:
        session = sessions[0]
        sock = session.link.sock
        padding = os.urandom(max(options.size - 16, 0))
        deadline = time.perf_counter() + LOAD_DEADLINE
        for sequence in range(options.samples):
            if time.perf_counter() > deadline:
                break
            marker = sequence.to_bytes(8, "big") + os.urandom(8)
            through = session.data_frame(peer.address, "channel", marker + padding)
            for name, out, packet, to, samples in (
                ("relay", sock, through, server.udp, relay_us),
                ("direct", direct, marker + padding, peer.address, direct_us),
            ):
                sample = ping(out, packet, to, marker)
                if sample is None:
                    lost[name] += 1
                else:
                    samples.append(sample)
            time.sleep(RTT_GAP)
    figures: dict[str, Any] = {"samples": options.samples, "lost": lost}
    for q in (50, 99):
        through_q, direct_q = percentile(relay_us, q), percentile(direct_us, q)
        figures[f"relay_p{q}_us"] = through_q
        figures[f"direct_p{q}_us"] = direct_q
        figures[f"added_p{q}_us"] = (
            through_q - direct_q if through_q is not None and direct_q is not None else None
        )
    return figures


def ping(sock: socket.socket, packet: bytes, to: tuple[str, int], marker: bytes) -> float | None:
    """Microseconds until a datagram carrying ``marker`` comes back, or None after a second."""
    started = time.perf_counter_ns()
    sock.sendto(packet, to)
    deadline = time.perf_counter() + 1.0
    while (remaining := deadline - time.perf_counter()) > 0:
        if not select.select([sock], [], [], remaining)[0]:
            break
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            continue
        if marker in data:
            return (time.perf_counter_ns() - started) / 1000
    return None


def measure_binding(server: Server, peer: EchoPeer, options: Options) -> dict[str, Any]:
    """Unauthenticated STUN Binding answers per second over UDP, windowed."""
    del peer
    links = [UdpLink(server.udp, buffer=CLIENT_BUFFER) for _ in range(options.clients)]
    try:
        requests = [
            [
                encode(Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)))
                for _ in range(BINDING_TXIDS)
            ]
            for _ in links
        ]
        links[0].send(requests[0][0])
        answer = wait_frames(links[0], REQUEST_TIMEOUT)
        if not answer or decode(answer[0]).cls != MessageClass.SUCCESS:
            raise RuntimeError("no Binding success answer")
        meter = Meter(server.pid)
        result = pump(links, requests, options.window, 1 << 62, options.seconds)
        figures = meter.read()
    finally:
        for link in links:
            link.close()
    return {
        "sent": result.sent,
        "answered": result.received,
        "seconds": result.seconds,
        "answers_per_s": per(result.received, result.seconds),
        **figures,
        "cpu_us_per_answer": per(figures["server_cpu_s"], result.received, 1e6),
    }


def measure_allocations(server: Server, peer: EchoPeer, options: Options) -> dict[str, Any]:
    """Authenticated allocations per second: fresh socket, 401, Allocate, Refresh(0)."""
    del peer
    meter = Meter(server.pid)
    run = allocate_many(
        server, window=options.window, count=None, seconds=options.seconds, delete=True
    )
    figures = meter.read()
    return {
        "completed": run.completed,
        "failures": dict(run.failures),
        "seconds": run.seconds,
        "allocations_per_s": per(run.completed, run.seconds),
        **figures,
        "cpu_us_per_allocation": per(figures["server_cpu_s"], run.completed, 1e6),
    }


def rss_port_range(options: Options) -> tuple[tuple[int, int], str]:
    """The relay range of the RSS load, and why."""
    if options.rss_port_range is not None:
        low, high = options.rss_port_range
        return options.rss_port_range, f"relay ports {low}-{high} (--rss-port-range)"
    low, high = DEFAULT_PORT_RANGE
    if max(options.allocations) <= high - low + 1:
        return DEFAULT_PORT_RANGE, f"relay ports {low}-{high} (the default)"
    return WIDE_PORT_RANGE, (
        f"relay ports {WIDE_PORT_RANGE[0]}-{WIDE_PORT_RANGE[1]} for both servers: "
        f"{max(options.allocations):,} allocations do not fit the default {low}-{high} "
        f"({high - low + 1:,} ports on the one relay address)"
    )


def open_files(pid: int) -> int:
    """File descriptors process ``pid`` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def measure_rss(kind: str, work: Path, options: Options) -> dict[str, Any]:
    """RSS per idle allocation at each level, on a fresh server.

    A level that the relay port range or the servers' open-file limit (inherited from this
    process) cannot hold is measured at the most allocations that fit, and says so."""
    port_range, why = rss_port_range(options)
    ports = port_range[1] - port_range[0] + 1
    file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    top = max(options.allocations)
    server = STARTERS[kind](work, port_range, top + RSS_WARMUP, options.coturn_relay_threads)
    levels: list[dict[str, Any]] = []
    try:
        allocate_many(server, window=32, count=RSS_WARMUP, seconds=60, delete=True)
        time.sleep(RSS_SETTLE)
        baseline, base_files = rss_bytes(server.pid), open_files(server.pid)
        made, files_each = 0, 1.0
        failures: collections.Counter[str] = collections.Counter()
        for level in sorted(options.allocations):
            fit = int((file_limit - base_files - FILE_MARGIN) / files_each)
            target = min(level, ports, fit)
            entry: dict[str, Any] = {"allocations": level}
            if target < level:
                target -= target % 100
                reasons = [f"{ports} relay ports"] if ports < level else []
                if fit < level:
                    reasons.append(
                        f"open-file limit {file_limit} at {files_each:.2f} per allocation"
                    )
                entry["capped"] = f"measured at {target:,}: {' and '.join(reasons)}"
            if target > made:
                count = target - made
                run = allocate_many(
                    server, window=options.window, count=count, seconds=LOAD_DEADLINE, delete=False
                )
                made += run.completed
                failures.update(run.failures)
            time.sleep(RSS_SETTLE)
            rss, files = rss_bytes(server.pid), open_files(server.pid)
            files_each = max((files - base_files) / made, 1.0) if made else files_each
            entry |= {
                "achieved": made,
                "rss_bytes": rss,
                "bytes_per_allocation": per(rss - baseline, made),
                "open_files": files,
                "files_per_allocation": files_each,
                "failures": dict(failures),
            }
            levels.append(entry)
            if made < target:
                break  # the next level would fail the same way
    finally:
        server.stop()
    return {
        "port_range": list(port_range),
        "port_range_reason": why,
        "open_file_limit": file_limit,
        "baseline_rss_bytes": baseline,
        "settings": server.settings,
        "levels": levels,
    }


MEASURES: dict[str, Callable[[Server, EchoPeer, Options], dict[str, Any]]] = {
    "cpu": measure_cpu,
    "uclient": measure_uclient,
    "rate": measure_rate,
    "rtt": measure_rtt,
    "binding": measure_binding,
    "allocations": measure_allocations,
}


#: Allocation limits of the instance serving every load but RSS: far above what they use.
GENERAL_CAPACITY = 100_000


def measure_server(
    kind: str, peer: EchoPeer, work: Path, options: Options, metrics: Sequence[str]
) -> dict[str, Any]:
    """Every selected load against one server kind; failures are recorded, not raised."""
    results: dict[str, Any] = {}
    general = [m for m in metrics if m in MEASURES]
    if general:
        results.update(_general_loads(kind, peer, work / "main", options, general))
    if "rss" in metrics:
        print(f"  {kind}: rss ...", flush=True)
        (work / "rss").mkdir()
        try:
            results["rss"] = measure_rss(kind, work / "rss", options)
        except Exception as exc:
            results["rss"] = _failure(f"{kind} rss", exc)
    return results


def _general_loads(
    kind: str, peer: EchoPeer, work: Path, options: Options, metrics: Sequence[str]
) -> dict[str, Any]:
    """The loads that share one server instance, in order."""
    work.mkdir()
    try:
        server = STARTERS[kind](
            work, DEFAULT_PORT_RANGE, GENERAL_CAPACITY, options.coturn_relay_threads
        )
    except Exception as exc:
        return {"server": _failure(f"{kind} start", exc)}
    results: dict[str, Any] = {
        "server": {"settings": server.settings, "threads": thread_names(server.pid)}
    }
    try:
        for metric in metrics:
            print(f"  {kind}: {metric} ...", flush=True)
            try:
                results[metric] = MEASURES[metric](server, peer, options)
            except Exception as exc:
                results[metric] = _failure(f"{kind} {metric}", exc)
    finally:
        server.stop()
    return results


def _failure(what: str, exc: Exception) -> dict[str, str]:
    error = f"{type(exc).__name__}: {exc}"
    print(f"    {what} failed: {error}", flush=True)
    return {"error": error}


# --------------------------------------------------------------------------------------------
# The table


def _get(results: Mapping[str, Any], *path: str) -> Any:
    value: Any = results
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


#: A load generator above this share of one core was probably the bottleneck.
GENERATOR_SATURATED_PERCENT = 85


def build_rows(results: Mapping[str, Mapping[str, Any]]) -> list[Row]:
    """The table's rows from the per-server results."""
    rows: list[Row] = []

    def row(group: str, label: str, unit: str, better: str, path: str, note: str = "") -> None:
        values = {name: _get(results.get(name, {}), *path.split("/")) for name in SERVERS}
        if any(v is not None for v in values.values()):
            rows.append(Row(group, label, unit, better, values, note))

    group = "Server CPU per relayed packet (each echoed packet is relayed twice)"
    for transport, mode in TRANSPORTS:
        label = f"{transport.upper()} {'Send indications' if mode == 'send' else 'channels'}"
        row(group, label, "µs/pkt", "lower", f"cpu/{transport}-{mode}/cpu_us_per_relayed_packet")
    note = _each(results, "uclient/loss_percent", "{name} loss {value:.2f} %")
    note += "; CPU includes uclient's allocations and idle start" if note else ""
    path = "uclient/cpu_us_per_relayed_packet"
    row(group, "uclient UDP channels (cross-check)", "µs/pkt", "lower", path, note)
    group = f"Highest packet rate at ≤ {LOSS_TARGET_PERCENT} % loss (UDP channels, paced)"
    row(group, "client packets per second", "pkt/s", "higher", "rate/best_pps", _rate_note(results))
    group = "Round-trip latency through the relay, and straight to the same echo peer"
    for q in (50, 99):
        row(group, f"added by the relay, p{q}", "µs", "lower", f"rtt/added_p{q}_us")
    for q in (50, 99):
        row(group, f"through the relay, p{q}", "µs", "lower", f"rtt/relay_p{q}_us")
        row(group, f"direct to the echo peer, p{q}", "µs", "-", f"rtt/direct_p{q}_us")
    group = "STUN Binding (UDP, unauthenticated, windowed)"
    note = _generator_note(results, "binding")
    row(group, "answers per second", "1/s", "higher", "binding/answers_per_s", note)
    row(group, "server CPU per answer", "µs", "lower", "binding/cpu_us_per_answer")
    group = "Authenticated allocations (fresh socket: 401, Allocate, Refresh 0)"
    note = "; ".join(
        filter(None, (_generator_note(results, "allocations"), _failures(results, "allocations")))
    )
    row(group, "allocations per second", "1/s", "higher", "allocations/allocations_per_s", note)
    row(group, "server CPU per allocation", "µs", "lower", "allocations/cpu_us_per_allocation")
    group = "RSS per idle allocation ((RSS after - RSS before) / allocations)"
    by_level: dict[int, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
    for name in SERVERS:
        for entry in _get(results.get(name, {}), "rss", "levels") or []:
            by_level[entry["allocations"]][name] = entry
    for level, entries in sorted(by_level.items()):
        values = {name: entries.get(name, {}).get("bytes_per_allocation") for name in SERVERS}
        notes = []
        for name, entry in entries.items():
            if "capped" in entry:
                notes.append(f"{name}: {entry['capped']}")
            elif entry["achieved"] < level:
                notes.append(f"{name}: only {entry['achieved']:,} ({entry['failures']})")
        label = f"{level:,} allocations"
        rows.append(Row(group, label, "B/alloc", "lower", values, "; ".join(notes)))
    return rows


def _each(results: Mapping[str, Any], path: str, template: str) -> str:
    """``template`` filled in for every server that has ``path``, joined by commas."""
    parts = []
    for name in SERVERS:
        value = _get(results.get(name, {}), *path.split("/"))
        if value is not None:
            parts.append(template.format(name=name, value=value))
    return ", ".join(parts)


def _generator_note(results: Mapping[str, Any], metric: str) -> str:
    parts = []
    for name in SERVERS:
        share = _get(results.get(name, {}), metric, "client_cpu_percent")
        if share is not None:
            saturated = share >= GENERATOR_SATURATED_PERCENT
            parts.append(f"{name} {share:.0f} %{' (saturated: a floor)' if saturated else ''}")
    return ("load generator CPU: " + ", ".join(parts)) if parts else ""


def _failures(results: Mapping[str, Any], metric: str) -> str:
    parts = []
    for name in SERVERS:
        failures = _get(results.get(name, {}), metric, "failures")
        if failures:
            parts.append(f"{name} failures {failures}")
    return ", ".join(parts)


def _rate_note(results: Mapping[str, Any]) -> str:
    parts = []
    for name in SERVERS:
        rate = _get(results.get(name, {}), "rate") or {}
        lossy = [step for step in rate.get("steps", []) if step["verdict"] == "loss"]
        if rate.get("limited_by") == "generator":
            parts.append(f"{name}: a floor, the Python load generator ran out first")
        elif lossy:
            first = min(lossy, key=lambda step: step["target_pps"])
            drops = ", ".join(f"{k} {v}" for k, v in first["socket_drops"].items())
            parts.append(
                f"{name}: {first['loss_percent']:.1f} % lost at {first['target_pps']:,} pkt/s "
                f"(socket drops: {drops})"
            )
        elif rate.get("limited_by"):
            parts.append(f"{name}: stopped by the {rate['limited_by']}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Command line


def parse_options(
    argv: Sequence[str] | None = None,
) -> tuple[Options, list[str], list[str], Path | None]:
    """Options, metrics, servers and the JSON path from the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small loads: under two minutes")
    parser.add_argument("--seconds", type=float, help="each timed step (default 3, quick 1)")
    parser.add_argument("--packets", type=int, help="round trips per CPU load (60000, quick 15000)")
    parser.add_argument("--size", type=int, default=200, help="payload bytes (default 200)")
    parser.add_argument("--window", type=int, default=64, help="requests/packets in flight")
    parser.add_argument("--clients", type=int, default=4, help="allocations per relay load")
    parser.add_argument("--samples", type=int, help="latency samples (5000, quick 1000)")
    parser.add_argument(
        "--allocations", help="comma-separated RSS levels (default 1000,10000,20000; quick 1000)"
    )
    parser.add_argument("--rate-start", type=int, default=2000, help="first paced rate, pkt/s")
    parser.add_argument("--bisect-steps", type=int, help="bisection steps (4, quick 2)")
    parser.add_argument("--coturn-relay-threads", type=int, default=1, help="default 1")
    parser.add_argument("--rss-port-range", help="LOW-HIGH relay ports for the RSS load")
    parser.add_argument(
        "--only", action="append", choices=METRICS, help="measure only this (repeatable)"
    )
    parser.add_argument("--server", choices=(*SERVERS, "both"), default="both")
    parser.add_argument("--json", type=Path, help="results file (default bench/results/...)")
    args = parser.parse_args(argv)
    quick = args.quick
    levels = args.allocations or ("1000" if quick else "1000,10000,20000")
    port_range = None
    if args.rss_port_range:
        low, high = (int(p) for p in args.rss_port_range.split("-"))
        port_range = (low, high)
    options = Options(
        quick=quick,
        seconds=args.seconds or (1.0 if quick else 3.0),
        packets=args.packets or (15000 if quick else 60000),
        size=args.size,
        window=args.window,
        clients=args.clients,
        samples=args.samples or (1000 if quick else 5000),
        allocations=tuple(int(n) for n in levels.split(",")),
        rate_start=args.rate_start,
        bisect_steps=args.bisect_steps if args.bisect_steps is not None else (2 if quick else 4),
        uclient_clients=4 if quick else 10,
        uclient_messages=1000 if quick else 5000,
        coturn_relay_threads=args.coturn_relay_threads,
        rss_port_range=port_range,
    )
    servers = [s for s in SERVERS if args.server in (s, "both")]
    return options, list(args.only or METRICS), servers, args.json


def main(argv: Sequence[str] | None = None) -> None:
    from tests.interop.coturn_tools import find_tool

    options, metrics, servers, json_path = parse_options(argv)
    started = datetime.now(UTC)
    notes: list[str] = []
    if "coturn" in servers and find_tool("turnserver") is None:
        servers.remove("coturn")
        notes.append("coturn's turnserver is not installed: turnd is measured alone")
    if "uclient" in metrics and find_tool("turnutils_uclient") is None:
        metrics.remove("uclient")
        notes.append("turnutils_uclient is not installed: no uclient cross-check")
    wanted = max(options.allocations) + 4 * FILE_MARGIN if "rss" in metrics else 0
    limit = raise_file_limit(wanted)
    if limit < wanted:
        notes.append(
            f"the open-file limit stays at {limit} (the hard limit; raising it needs "
            f"CAP_SYS_RESOURCE): servers cannot hold {max(options.allocations):,} allocations"
        )
    print(
        f"bench.compare: {', '.join(servers)} on loopback; {'quick' if options.quick else 'full'}"
        f" mode; {os.cpu_count()} CPUs; payload {options.size} B, window {options.window}, "
        f"{options.clients} clients; open-file limit {limit}"
    )
    for note in notes:
        print(f"note: {note}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        peer = start_echo_peer(lifetime=LOAD_DEADLINE * 10)
        print(f"echo peer: {peer.kind} on {peer.address[0]}:{peer.address[1]}")
        try:
            for kind in servers:
                (Path(tmp) / kind).mkdir()
                results[kind] = measure_server(kind, peer, Path(tmp) / kind, options, metrics)
        finally:
            peer.stop()
    elapsed = (datetime.now(UTC) - started).total_seconds()
    rows = build_rows(results)
    print()
    print(format_table(rows))
    print()
    for line in explain(results):
        print(line)
    document = {
        "started": started.isoformat(),
        "elapsed_s": elapsed,
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "options": attrs.asdict(options),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "clock_ticks_per_s": CLK_TCK,
            "echo_peer": peer.kind,
        },
        "notes": notes,
        "table": [table_entry(r) for r in rows],
        "results": results,
    }
    path = write_json(json_path or default_json_path(started), document)
    print(f"\nresults: {path}  ({elapsed:.0f} s)")


def table_entry(row: Row) -> dict[str, Any]:
    """A row of the table for the JSON file, with its ratio."""
    return attrs.asdict(row) | {"ratio": ratio(row.values.get("turnd"), row.values.get("coturn"))}


def explain(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """How to read the table: setup and caveats, from what actually ran."""
    lines = ["ratio = turnd / coturn; 'better' says which direction wins."]
    for name, result in results.items():
        settings = _get(result, "server", "settings")
        if settings:
            threads = _get(result, "server", "threads") or {}
            named = ", ".join(f"{n} x{count}" for n, count in threads.items())
            lines.append(f"{name}: {', '.join(settings)}; threads: {named}")
        for metric, value in result.items():
            if isinstance(value, Mapping) and "error" in value:
                lines.append(f"{name} {metric}: failed: {value['error']}")
    for result in results.values():
        why, limit = (
            _get(result, "rss", "port_range_reason"),
            _get(result, "rss", "open_file_limit"),
        )
        if why:
            lines.append(f"RSS load: {why}; servers' open-file limit {limit}.")
            break
    lines.append(
        f"CPU is utime+stime of /proc/PID/stat (every thread) in ticks of 1/{CLK_TCK} s; the load "
        "generator and the echo peer share the machine's cores with the server."
    )
    samples = [
        load["server_cpu_s"]
        for result in results.values()
        for load in (_get(result, "cpu") or {}).values()
        if isinstance(load, Mapping) and load.get("server_cpu_s")
    ]
    if samples:
        ticks = round(min(samples) * CLK_TCK)
        lines.append(
            f"The smallest CPU-per-packet sample is {ticks} ticks: about ±{100 / ticks:.0f} % "
            "from the clock tick alone (raise --packets for more)."
        )
    return lines


if __name__ == "__main__":
    main()
