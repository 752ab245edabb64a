"""Soak: churn allocations, permissions and channels on a live turnd and watch for leaks.

    python -m bench.soak [--seconds 60] [--interval 5] [--clients 50] [--transports udp,tcp,tls]
                         [--warmup 10] [--rate 200] [--noise 0.05] [--seed 1] [--json PATH]

Theory of operation
-------------------
One turnd (UDP, TCP and TLS on 127.0.0.1, port 0) and one echo peer process with two UDP
sockets. ``--clients`` slots are served round robin, one step per tick, at most ``--rate`` steps a
second. An empty slot starts a client on its transport (slots take the transports in turn); each
step of a client is one request or one relay round:

    Allocate -> CreatePermission (1-3 peers) -> ChannelBind -> relay rounds, with a Refresh and a
    ChannelBind refresh every few rounds -> the end the client was born with

A relay round sends Send indications to one echo socket and ChannelData (padded over streams) to
the other, and waits for the echoes: Data indications and ChannelData. The end is a delete
(Refresh LIFETIME 0), closing the TCP/TLS connection, or, for UDP, a leak: the socket is closed
and the allocation must expire. turnd is configured so that an allocation asking no LIFETIME lives
:data:`LEAK_LIFETIME` seconds; the leaking clients ask none, the others ask
:data:`KEPT_LIFETIME`. A ``--noise`` share of the ticks instead does one of: a garbage datagram,
an unauthenticated Binding, a wrong password, a garbage TCP/TLS connection, a silent (or half a
frame) TCP/TLS connection left for the server's idle and handshake timeouts, a datagram to a
relay address from an address without a permission.

Phases: ``warmup`` churn, then a quiesce (every client ends as planned; then wait until turnd
reports no allocation and no connection and has closed every abandoned connection, at
most the longest timeout plus :data:`EXPIRY_MARGIN`), then the ``baseline`` sample; ``churn``
for ``--seconds``, the same quiesce, the ``final`` sample. Both are idle and warmed up, so the
verdict compares like with like: descriptors back to baseline, threads, RSS growth per 1000
allocations made in between. Samples every ``--interval`` seconds in every phase: allocations and
connections from GET /metrics, RSS and threads from /proc/PID/status, open descriptors from
/proc/PID/fd, asyncio tasks from the ``turnd_tasks`` gauge. Figures only, no thresholds.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from bench.compare import (
    CLIENT_ADDRESSES,
    Link,
    StreamLink,
    UdpLink,
    wait_frames,
)
from stun import attributes as at
from stun.addresses import MAGIC_COOKIE_BYTES, Address
from stun.channeldata import frame_channel_data, parse_channel_data
from stun.errors import StunDecodeError
from stun.message import Message, MessageClass, Method, decode, encode
from testkit.client import ResponseError, TurnError
from testkit.daemon import PASSWORD, REALM, USER, Daemon, start_turnd
from testkit.sync import TurnClient

LOOPBACK = "127.0.0.1"
TRANSPORTS = ("udp", "tcp", "tls")
#: relay.allocation_lifetime: what an allocation asking no LIFETIME gets, so leaked UDP
#: allocations expire this long after their last refresh. Short, so a run can wait for them.
LEAK_LIFETIME = 5
#: relay.max_allocation_lifetime, and what the clients that end by themselves ask for: far beyond
#: their life, so only a leak can expire.
KEPT_LIFETIME = 60
#: limits.idle_timeout and tls_handshake_timeout: how soon the server closes a silent connection.
SILENT_TIMEOUT = 5.0
#: How much longer than the longest timeout a quiesce waits before it reports what is left.
EXPIRY_MARGIN = 3.0
#: Pause between /metrics polls while quiescing.
QUIESCE_POLL = 0.25
#: Pause after a quiesce before the idle sample, so closed sockets are gone from /proc.
SETTLE = 0.5
#: How long one request waits for its answer before it counts as a timeout.
REQUEST_TIMEOUT = 2.0
#: How long a relay round waits for its echoes; a missing echo counts as lost, not as an error.
ECHO_TIMEOUT = 1.0
#: Packets per relay round, each way (Send and ChannelData).
PACKETS_PER_ROUND = 2
PAYLOAD_SIZE = 100
#: A client lives 1..MAX_ROUNDS relay rounds; it refreshes after every REFRESH_EVERY rounds.
MAX_ROUNDS = 6
REFRESH_EVERY = 2
#: Abandoned TCP/TLS connections (silent, half a frame, garbage) held open at once: each is a
#: client socket, and a server one until the server closes it.
MAX_ABANDONED = 32
#: Upper bound on the iterations of the sleeping loops (each sleeps to an event, so never met).
MAX_WAKEUPS = 100_000
#: Client-side failures: each is counted by kind and ends that client.
FAILURES = (TimeoutError, OSError, StunDecodeError, ResponseError, RuntimeError)

NOISE_KINDS = ("garbage_udp", "binding", "wrong_password", "garbage_stream", "silent", "stranger")


# --------------------------------------------------------------------------------------------
# Pure helpers: /proc, /metrics, samples and the verdict


def parse_proc_status(text: str) -> dict[str, int]:
    """``rss_bytes`` (VmRSS) and ``threads`` from the text of /proc/PID/status."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == "VmRSS":
            number, unit = value.split()
            if unit != "kB":
                raise ValueError(f"VmRSS in {unit!r}, expected kB")
            found["rss_bytes"] = int(number) * 1024
        elif name == "Threads":
            found["threads"] = int(value)
    if set(found) != {"rss_bytes", "threads"}:
        raise ValueError(f"no VmRSS or Threads in status: found {sorted(found)}")
    return found


@attrs.frozen
class ProcStats:
    """What /proc says of one process."""

    rss_bytes: int
    fds: int
    threads: int


def read_proc(pid: int) -> ProcStats:
    """RSS, open file descriptors and threads of process ``pid``."""
    status = parse_proc_status(Path(f"/proc/{pid}/status").read_text())
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return ProcStats(status["rss_bytes"], fds, status["threads"])


_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Prometheus text exposition -> {metric name: {sorted label pairs: value}}."""
    families: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for line in text.splitlines():
        match = _SERIES.match(line)
        if match is None:
            continue  # comments, blank lines
        name, labels, value = match.groups()
        pairs = tuple(sorted(_LABEL.findall(labels or "")))
        families.setdefault(name, {})[pairs] = float(value)
    return families


def metric_total(families: Mapping[str, Mapping[Any, float]], name: str) -> float:
    """The sum of every series of metric ``name`` (0 when absent)."""
    return sum(families.get(name, {}).values())


def metric_int(families: Mapping[str, Mapping[Any, float]], name: str) -> int | None:
    """The sum of metric ``name`` as an int, or None when the daemon does not export it."""
    return int(sum(families[name].values())) if name in families else None


def metric_by(
    families: Mapping[str, Mapping[tuple[tuple[str, str], ...], float]], name: str, label: str
) -> dict[str, float]:
    """The series of metric ``name`` summed by the value of ``label``."""
    totals: dict[str, float] = collections.defaultdict(float)
    for pairs, value in families.get(name, {}).items():
        totals[dict(pairs).get(label, "")] += value
    return dict(totals)


@attrs.frozen
class Sample:
    """One line of the report."""

    elapsed: float
    phase: str
    allocations: int
    connections: int
    rss_bytes: int
    fds: int
    threads: int
    #: asyncio tasks of turnd (``turnd_tasks``); None when the daemon does not export it.
    tasks: int | None
    allocations_made: int
    packets_sent: int
    packets_echoed: int
    errors: int


_COLUMNS = (
    ("t s", 7),
    ("phase", 9),
    ("allocs", 7),
    ("conns", 6),
    ("RSS MiB", 8),
    ("fds", 5),
    ("thr", 4),
    ("tasks", 6),
    ("made", 7),
    ("echoed/sent", 16),
    ("errors", 7),
)


def format_header() -> str:
    """The column titles over :func:`format_sample` lines."""
    return " ".join(
        f"{title:<{width}}" if title == "phase" else f"{title:>{width}}"
        for title, width in _COLUMNS
    )


def format_sample(sample: Sample) -> str:
    """One aligned report line."""
    cells = (
        f"{sample.elapsed:.1f}",
        sample.phase,
        f"{sample.allocations:,}",
        f"{sample.connections:,}",
        f"{sample.rss_bytes / (1 << 20):.1f}",
        str(sample.fds),
        str(sample.threads),
        "n/a" if sample.tasks is None else str(sample.tasks),
        f"{sample.allocations_made:,}",
        f"{sample.packets_echoed:,}/{sample.packets_sent:,}",
        f"{sample.errors:,}",
    )
    return " ".join(
        f"{cell:<{width}}" if title == "phase" else f"{cell:>{width}}"
        for cell, (title, width) in zip(cells, _COLUMNS, strict=True)
    )


def verdict(baseline: Sample, final: Sample, samples: Sequence[Sample]) -> list[str]:
    """Final against baseline (both idle after a quiesce), and the peaks in between: figures."""
    made = final.allocations_made - baseline.allocations_made
    growth_kib = (final.rss_bytes - baseline.rss_bytes) / 1024
    per_1000 = f"{1000 * growth_kib / made:+,.1f} KiB" if made else "n/a (no allocations)"
    between = [s for s in samples if baseline.elapsed <= s.elapsed <= final.elapsed] or [final]

    def back(name: str, before: int, after: int) -> str:
        return f"{name} back to baseline: {'yes' if after <= before else 'no'} ({before}→{after})"

    return [
        f"allocations live at the end: {final.allocations} (baseline {baseline.allocations})",
        f"client connections at the end: {final.connections} (baseline {baseline.connections})",
        back("fds", baseline.fds, final.fds),
        back("threads", baseline.threads, final.threads),
        f"RSS {baseline.rss_bytes / (1 << 20):.1f}→{final.rss_bytes / (1 << 20):.1f} MiB "
        f"({growth_kib:+,.0f} KiB); growth per 1000 allocations: {per_1000} "
        f"({made:,} allocations since baseline)",
        f"peaks under load: {max(s.allocations for s in between):,} allocations, "
        f"{max(s.fds for s in between)} fds, "
        f"{max(s.rss_bytes for s in between) / (1 << 20):.1f} MiB RSS",
        tasks_line(baseline, final),
    ]


def tasks_line(baseline: Sample, final: Sample) -> str:
    """asyncio tasks final against baseline, or why there is no figure."""
    if baseline.tasks is None or final.tasks is None:
        return "asyncio tasks: n/a (the daemon exports no turnd_tasks gauge)"
    verdict = "yes" if final.tasks <= baseline.tasks else "no"
    return f"asyncio tasks back to baseline: {verdict} ({baseline.tasks}→{final.tasks})"


def format_counts(counts: Mapping[str, float]) -> str:
    """``a 3, b 1`` in descending order, or ``none``."""
    items = sorted(((k, v) for k, v in counts.items() if v), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v:,.0f}" for k, v in items) or "none"


# --------------------------------------------------------------------------------------------
# The echo peer and the clients

_ECHO = """
import selectors, socket, sys, time
selector = selectors.DefaultSelector()
ports = []
for _ in range(2):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    selector.register(sock, selectors.EVENT_READ)
    ports.append(str(sock.getsockname()[1]))
print(" ".join(ports), flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for key, _ in selector.select(0.5):
        for _ in range(256):
            try:
                data, addr = key.fileobj.recvfrom(65535)
            except BlockingIOError:
                break
            key.fileobj.sendto(data, addr)
"""


@attrs.define
class EchoPeer:
    """A UDP echo process with two sockets: one for Send indications, one for a channel."""

    process: subprocess.Popen[str]
    send_peer: tuple[str, int]
    channel_peer: tuple[str, int]

    @classmethod
    def start(cls, lifetime: float) -> EchoPeer:
        """Start it; it exits by itself after ``lifetime`` seconds."""
        process = subprocess.Popen(
            [sys.executable, "-c", _ECHO, str(lifetime)], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        first, second = (int(p) for p in process.stdout.readline().split())
        return cls(process, (LOOPBACK, first), (LOOPBACK, second))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def open_link(servers: Mapping[str, tuple[str, int]], transport: str) -> Link:
    """A UDP socket on an address of its own (no 5-tuple is reused), or a TCP/TLS connection."""
    if transport == "udp":
        return UdpLink(servers["udp"], addresses=CLIENT_ADDRESSES)
    return StreamLink(servers[transport], tls=transport == "tls")


class Client:
    """One TURN client whose life is a generator: each ``next()`` is one step."""

    def __init__(
        self,
        ident: int,
        transport: str,
        servers: Mapping[str, tuple[str, int]],
        peer: EchoPeer,
        rng: random.Random,
        ops: collections.Counter[str],
        password: str = PASSWORD,
    ) -> None:
        self.ident = ident
        self.transport = transport
        self.servers = servers
        self.peer = peer
        self.ops = ops
        self.password = password
        self.client: TurnClient | None = None
        self.link: Link | None = None
        self.relay: Address | None = None
        if transport == "udp":
            self.end = "delete" if rng.random() < 0.6 else "leak"
        else:
            self.end = "delete" if rng.random() < 0.4 else "close"
        self.rounds = rng.randint(1, MAX_ROUNDS)
        self.channel = rng.randrange(0x4000, 0x5000)
        self.extra_peers = [
            (f"127.0.0.{rng.randint(2, 250)}", rng.randint(1024, 65535))
            for _ in range(rng.randint(0, 2))
        ]
        self.round = 0

    # --- requests ---------------------------------------------------------------------------

    def connect(self) -> Link:
        if self.link is None:
            self.link = open_link(self.servers, self.transport)
        return self.link

    def transact(self, method: Method, *attributes: Any) -> Message:
        """Send a request, authenticated once a nonce is known; return the success answer."""
        if self.client is None:
            self.client = TurnClient(
                self.servers[self.transport],
                USER,
                self.password,
                link=self.connect(),
                realm=REALM,
                timeout=REQUEST_TIMEOUT,
                retransmit=None,
                on_stray=self._stray,
            )
        return self.client.request_ok(method, *attributes)

    def _stray(self, frame: bytes) -> None:
        self.ops["stray frames"] += 1

    # --- life -------------------------------------------------------------------------------

    def _lifetime(self) -> tuple[at.Lifetime, ...]:
        return () if self.end == "leak" else (at.Lifetime(KEPT_LIFETIME),)

    def life(self) -> Generator[None, None, None]:
        """The client's steps, one per ``next()``; it ends as planned at the end."""
        reply = self.transact(Method.ALLOCATE, at.RequestedTransport(17), *self._lifetime())
        relayed = reply.get(at.XorRelayedAddress)
        self.relay = relayed.address if relayed is not None else None
        self.ops["allocations"] += 1
        yield
        peers = [self.peer.send_peer, *self.extra_peers]
        self.transact(Method.CREATE_PERMISSION, *(at.XorPeerAddress(Address(*p)) for p in peers))
        self.ops["permissions"] += len(peers)
        yield
        self.bind_channel()
        yield
        for round_ in range(1, self.rounds + 1):
            self.relay_round()
            yield
            if round_ % REFRESH_EVERY == 0:
                self.transact(Method.REFRESH, *self._lifetime())
                self.ops["refreshes"] += 1
                yield
                self.bind_channel()
                yield
        self.finish()

    def bind_channel(self) -> None:
        peer = at.XorPeerAddress(Address(*self.peer.channel_peer))
        self.transact(Method.CHANNEL_BIND, at.ChannelNumber(self.channel), peer)
        self.ops["channel binds"] += 1

    def relay_round(self) -> None:
        """Send and ChannelData to the echo sockets, then count the echoes that come back."""
        link = self.connect()
        self.round += 1
        tag = f"soak {self.ident} {self.round} ".encode()
        payload = tag + bytes(PAYLOAD_SIZE - len(tag))
        send = Message(
            Method.SEND,
            MessageClass.INDICATION,
            os.urandom(12),
            (at.XorPeerAddress(Address(*self.peer.send_peer)), at.Data(payload)),
        )
        stream = self.transport != "udp"
        for _ in range(PACKETS_PER_ROUND):
            link.send(encode(send))
            link.send(frame_channel_data(self.channel, payload, pad=stream))
        self.ops["packets sent"] += 2 * PACKETS_PER_ROUND
        expected = 2 * PACKETS_PER_ROUND
        got = 0
        deadline = time.monotonic() + ECHO_TIMEOUT
        for _ in range(MAX_WAKEUPS):
            remaining = deadline - time.monotonic()
            if got >= expected or remaining <= 0:
                break
            for frame in wait_frames(link, remaining):
                if 0x40 <= frame[0] < 0x80:
                    _, data = parse_channel_data(frame)
                else:
                    message = decode(frame)
                    if message.method != Method.DATA:
                        continue
                    data_attr = message.get(at.Data)
                    data = data_attr.value if data_attr is not None else b""
                if data.startswith(tag):
                    got += 1
        self.ops["packets echoed"] += got

    def finish(self) -> None:
        """End as planned: delete, close the connection, or leak (UDP) to expiry."""
        if self.end == "delete" and self.relay is not None:
            self.transact(Method.REFRESH, at.Lifetime(0))
        self.ops[{"delete": "deleted", "close": "closed", "leak": "leaked"}[self.end]] += 1
        self.close()

    def abort(self) -> None:
        """After a failure: delete if possible (so nothing lingers for KEPT_LIFETIME), close."""
        if self.relay is not None and self.end != "leak":
            with contextlib.suppress(*FAILURES):
                self.transact(Method.REFRESH, at.Lifetime(0))
        self.close()

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None
            self.client = None


# --------------------------------------------------------------------------------------------
# The soak


@attrs.frozen
class Options:
    seconds: float
    interval: float
    clients: int
    transports: tuple[str, ...]
    warmup: float
    rate: float
    noise: float
    seed: int
    json_path: Path | None


def daemon_config() -> str:
    """The extra turnd configuration: short default lifetime, quotas out of the way."""
    return f"""
[relay]
allocation_lifetime = {LEAK_LIFETIME}
max_allocation_lifetime = {KEPT_LIFETIME}

[limits]
max_allocations_per_user = 100000
max_allocations_per_ip = 100000
max_connections_per_ip = 100000
idle_timeout = {SILENT_TIMEOUT}
tls_handshake_timeout = {SILENT_TIMEOUT}
"""


@attrs.define
class Abandoned:
    """A TCP/TLS connection left open for the server to close (framing error or timeout)."""

    sock: socket.socket
    opened: float

    def __attrs_post_init__(self) -> None:
        # Polled with select(); blocking, a TLS socket would wait out its timeout on a record
        # that carries no data (a session ticket).
        self.sock.setblocking(False)


class Soak:
    """Drives the clients, the noise and the sampling against one turnd."""

    def __init__(self, options: Options, daemon: Daemon, peer: EchoPeer) -> None:
        self.options = options
        self.daemon = daemon
        self.pid = daemon.process.pid
        self.peer = peer
        self.servers = {t: (LOOPBACK, daemon.ports[t][0]) for t in TRANSPORTS}
        self.metrics_url = f"http://{LOOPBACK}:{daemon.metrics_port}/metrics"
        self.rng = random.Random(options.seed)
        self.ops: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()
        self.slots: list[tuple[Client, Generator[None, None, None]] | None] = [
            None
        ] * options.clients
        self.cursor = 0
        self.next_ident = 0
        self.abandoned: list[Abandoned] = []
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self.next_sample = self.started
        self.noise_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.noise_sock.bind((LOOPBACK, 0))
        self.noise_sock.settimeout(REQUEST_TIMEOUT)
        self.stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.stranger.bind(("127.0.0.254", 0))
        self.last_metrics: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}

    # --- observation --------------------------------------------------------------------------

    def scrape(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        with urllib.request.urlopen(self.metrics_url, timeout=REQUEST_TIMEOUT) as response:
            self.last_metrics = parse_metrics(response.read().decode())
        return self.last_metrics

    def record(self, phase: str) -> Sample:
        """Take, print and keep one sample (/proc first, so the scrape's socket is not in it)."""
        proc = read_proc(self.pid)
        families = self.scrape()
        sample = Sample(
            elapsed=round(time.monotonic() - self.started, 2),
            phase=phase,
            allocations=int(metric_total(families, "turnd_allocations")),
            connections=int(metric_total(families, "turnd_client_connections")),
            rss_bytes=proc.rss_bytes,
            fds=proc.fds,
            threads=proc.threads,
            tasks=metric_int(families, "turnd_tasks"),
            allocations_made=self.ops["allocations"],
            packets_sent=self.ops["packets sent"],
            packets_echoed=self.ops["packets echoed"],
            errors=sum(self.failures.values()),
        )
        self.samples.append(sample)
        print(format_sample(sample), flush=True)
        return sample

    def sample_if_due(self, phase: str) -> None:
        now = time.monotonic()
        if now < self.next_sample:
            return
        self.record(phase)
        # Stay on the grid; a slow step skips the slots it missed rather than bunching samples.
        missed = int((now - self.next_sample) / self.options.interval)
        self.next_sample += (missed + 1) * self.options.interval
        self.check_abandoned()

    def wait_until(self, until: float, phase: str) -> None:
        """Sleep until ``until``, sampling on the way."""
        for _ in range(MAX_WAKEUPS):
            now = time.monotonic()
            if now >= until:
                return
            time.sleep(max(0.0, min(until, self.next_sample) - now))
            self.sample_if_due(phase)

    # --- churn --------------------------------------------------------------------------------

    def churn(self, phase: str, seconds: float) -> None:
        """Steps at ``--rate`` for ``seconds``; at most rate x seconds + 1 of them."""
        end = time.monotonic() + seconds
        period = 1.0 / self.options.rate
        due = time.monotonic()
        for _ in range(int(seconds * self.options.rate) + 1):
            self.wait_until(min(due, end), phase)
            if time.monotonic() >= end:
                break
            self.sample_if_due(phase)
            if self.rng.random() < self.options.noise:
                self.noise()
            else:
                self.step()
            due = max(due + period, time.monotonic() - 1.0)  # catch up at most 1 s of steps

    def step(self) -> None:
        slot = self.cursor
        self.cursor = (self.cursor + 1) % len(self.slots)
        current = self.slots[slot]
        if current is None:
            transports = self.options.transports
            client = Client(
                self.next_ident,
                transports[slot % len(transports)],
                self.servers,
                self.peer,
                self.rng,
                self.ops,
            )
            self.next_ident += 1
            current = (client, client.life())
            self.slots[slot] = current
        client, life = current
        try:
            next(life)
        except StopIteration:
            self.slots[slot] = None
        except FAILURES as exc:
            self.fail(client.transport, exc)
            self.slots[slot] = None
            client.abort()

    def fail(self, transport: str, exc: BaseException) -> None:
        if isinstance(exc, TurnError):
            kind = f"error {exc.code}"
        elif isinstance(exc, TimeoutError):
            kind = "timeout"
        elif isinstance(exc, StunDecodeError):
            kind = "undecodable answer"
        elif isinstance(exc, OSError):
            kind = f"socket: {exc.strerror or type(exc).__name__}"
        else:
            kind = type(exc).__name__
        self.failures[f"{transport} {kind}"] += 1

    def quiesce(self, phase: str) -> Sample:
        """End every client as planned, wait for turnd to drop to idle, take the idle sample."""
        for slot, current in enumerate(self.slots):
            if current is None:
                continue
            self.slots[slot] = None
            client, life = current
            life.close()
            try:
                client.finish()
            except FAILURES as exc:
                self.fail(client.transport, exc)
                client.abort()
        began = time.monotonic()
        deadline = began + max(LEAK_LIFETIME, SILENT_TIMEOUT) + EXPIRY_MARGIN
        idle = False
        for _ in range(MAX_WAKEUPS):
            self.sample_if_due("drain")
            self.check_abandoned()
            families = self.scrape()
            idle = (
                metric_total(families, "turnd_allocations") == 0
                and metric_total(families, "turnd_client_connections") == 0
                and not self.abandoned
            )
            if idle or time.monotonic() >= deadline:
                break
            time.sleep(QUIESCE_POLL)
        waited = time.monotonic() - began
        time.sleep(SETTLE)
        print(f"-- quiesced in {waited:.1f} s ({'idle' if idle else 'NOT idle'})", flush=True)
        sample = self.record("baseline" if phase == "warmup" else "final")
        self.check_abandoned(force=True)
        return sample

    # --- noise --------------------------------------------------------------------------------

    def noise(self) -> None:
        kinds = [
            k
            for k in NOISE_KINDS
            if k not in ("garbage_stream", "silent")
            or set(self.options.transports) & {"tcp", "tls"}
        ]
        kind = self.rng.choice(kinds)
        self.ops[f"noise {kind}"] += 1
        transport = self.rng.choice(self.options.transports)
        if kind in ("garbage_stream", "silent"):
            transport = self.rng.choice([t for t in self.options.transports if t != "udp"])
        try:
            getattr(self, f"_noise_{kind}")(transport)
        except FAILURES as exc:
            self.fail(f"noise {kind} {transport}", exc)

    def _garbage(self) -> bytes:
        choice = self.rng.randrange(4)
        if choice == 0:  # not STUN, not ChannelData: first byte 0x80-0xFF
            return bytes([self.rng.randrange(0x80, 0x100)]) + self.rng.randbytes(47)
        if choice == 1:  # a STUN header with a wrong magic cookie
            return b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x43" + self.rng.randbytes(12)
        if choice == 2:  # ChannelData on a channel nobody bound
            return frame_channel_data(0x4FFF, self.rng.randbytes(20), pad=True)
        return b"\x00\x03\x00\x40" + MAGIC_COOKIE_BYTES + self.rng.randbytes(12)  # truncated

    def _noise_garbage_udp(self, transport: str) -> None:
        del transport
        self.noise_sock.sendto(self._garbage(), self.servers["udp"])

    def _noise_binding(self, transport: str) -> None:
        del transport
        txid = self.rng.randbytes(12)
        self.noise_sock.sendto(
            encode(Message(Method.BINDING, MessageClass.REQUEST, txid, ())), self.servers["udp"]
        )
        for _ in range(16):  # skip stray answers to earlier noise
            reply = decode(self.noise_sock.recv(65535))
            if reply.transaction_id == txid:
                if reply.cls != MessageClass.SUCCESS:
                    raise RuntimeError(f"Binding answered {reply.cls.name}")
                return

    def _noise_wrong_password(self, transport: str) -> None:
        client = Client(
            -1, transport, self.servers, self.peer, self.rng, self.ops, password="wrong"
        )
        try:
            client.transact(Method.ALLOCATE, at.RequestedTransport(17))
        except TurnError as exc:
            if exc.code != 401:
                raise
            self.ops["refused as expected (401)"] += 1
        else:
            raise RuntimeError("a wrong password was accepted")
        finally:
            client.close()

    def _noise_garbage_stream(self, transport: str) -> None:
        """Garbage on a fresh connection: a framing error closes it at once; a whole but bad
        frame, or one cut short, leaves it to the idle timeout."""
        if len(self.abandoned) >= MAX_ABANDONED:
            return
        link = open_link(self.servers, transport)
        link.send(self._garbage())
        self.abandoned.append(Abandoned(link.sock, time.monotonic()))

    def _noise_silent(self, transport: str) -> None:
        """A connection that never sends a whole frame (TLS: never starts the handshake)."""
        if len(self.abandoned) >= MAX_ABANDONED:
            return
        sock = socket.create_connection(self.servers[transport], timeout=REQUEST_TIMEOUT)
        if transport == "tcp" and self.rng.random() < 0.5:
            sock.sendall(b"\x00\x03\x00\x40" + MAGIC_COOKIE_BYTES)  # half a header, no more
        self.abandoned.append(Abandoned(sock, time.monotonic()))

    def _noise_stranger(self, transport: str) -> None:
        del transport
        relays = [c.relay for c, _ in filter(None, self.slots) if c.relay is not None]
        if relays:
            relay = self.rng.choice(relays)
            self.stranger.sendto(b"no permission for me", (relay.host, relay.port))

    def check_abandoned(self, force: bool = False) -> None:
        """Close our end of each abandoned connection the server has closed, as a client would
        (turnd holds a closed TLS connection until the client closes too, or for asyncio's SSL
        shutdown timeout), or that it should have closed by now; count which."""
        keep = []
        for conn in self.abandoned:
            if server_closes(conn.sock):
                self.ops["abandoned connections closed by server"] += 1
            elif force or time.monotonic() - conn.opened > SILENT_TIMEOUT + EXPIRY_MARGIN:
                self.ops["abandoned connections NOT closed by server"] += 1
            else:
                keep.append(conn)
                continue
            conn.sock.close()
        self.abandoned = keep

    def close(self) -> None:
        for slot, current in enumerate(self.slots):
            if current is not None:
                current[0].close()
                self.slots[slot] = None
        for conn in self.abandoned:
            conn.sock.close()
        self.abandoned = []
        self.noise_sock.close()
        self.stranger.close()


def server_closes(sock: socket.socket) -> bool:
    """Whether the peer of ``sock`` has closed it (EOF or reset), without waiting."""
    for _ in range(64):  # bytes the server sent before it closed are read and dropped
        if not select.select([sock], [], [], 0)[0]:
            return False
        try:
            if not sock.recv(4096):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except OSError:
            return False
    return False


# --------------------------------------------------------------------------------------------
# Command line


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="churn after the warm-up")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--clients", type=int, default=50, help="concurrent client slots")
    parser.add_argument("--transports", default="udp,tcp,tls", help="comma-separated")
    parser.add_argument("--warmup", type=float, default=10.0, help="churn before the baseline")
    parser.add_argument("--rate", type=float, default=200.0, help="steps per second, at most")
    parser.add_argument("--noise", type=float, default=0.05, help="share of steps that are noise")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="samples to PATH")
    args = parser.parse_args(argv)
    transports = tuple(t.strip() for t in args.transports.split(",") if t.strip())
    unknown = sorted(set(transports) - set(TRANSPORTS))
    if unknown or not transports:
        parser.error(f"--transports: choose among {', '.join(TRANSPORTS)}, got {args.transports}")
    if args.seconds <= 0 or args.interval <= 0 or args.clients < 1 or args.rate <= 0:
        parser.error("--seconds, --interval, --rate must be positive and --clients at least 1")
    if not 0 <= args.noise <= 1 or args.warmup < 0:
        parser.error("--noise is a share in 0-1 and --warmup not negative")
    return Options(
        args.seconds,
        args.interval,
        args.clients,
        transports,
        args.warmup,
        args.rate,
        args.noise,
        args.seed,
        args.json,
    )


def run(options: Options) -> dict[str, Any]:
    """The whole soak; prints as it goes and returns the JSON document."""
    budget = options.warmup + options.seconds + 2 * (SILENT_TIMEOUT + EXPIRY_MARGIN) + 120
    with tempfile.TemporaryDirectory(prefix="turnd-soak-") as tmp:
        daemon = start_turnd(Path(tmp), daemon_config(), listen='["udp:0", "tcp:0", "tls:0"]')
        peer = EchoPeer.start(budget)
        soak = Soak(options, daemon, peer)
        try:
            print(
                f"turnd soak: pid {soak.pid}, {options.clients} clients on "
                f"{','.join(options.transports)}, ≤{options.rate:g} steps/s, "
                f"noise {options.noise:.0%}, warm-up {options.warmup:g} s, "
                f"churn {options.seconds:g} s, sample every {options.interval:g} s"
            )
            print(
                f"allocation lifetime: {LEAK_LIFETIME} s asked none (leaked UDP), "
                f"{KEPT_LIFETIME} s asked; idle/handshake timeout {SILENT_TIMEOUT:g} s"
            )
            print(format_header(), flush=True)
            soak.record("start")
            soak.next_sample = time.monotonic() + options.interval
            baseline = soak.samples[0]
            if options.warmup:
                soak.churn("warmup", options.warmup)
                baseline = soak.quiesce("warmup")
            soak.churn("churn", options.seconds)
            final = soak.quiesce("churn")
            families = soak.last_metrics
        finally:
            soak.close()
            peer.stop()
            returncode = daemon.stop()
            collections = [e for e in daemon.log_events() if e.get("event") == "gc.full_collection"]
    lines = verdict(baseline, final, soak.samples)
    ops = dict(soak.ops)
    server = {
        "ended": metric_by(families, "turnd_allocations_ended_total", "reason"),
        "drops": metric_by(families, "turnd_drops_total", "reason"),
        "auth_failures": metric_by(families, "turnd_auth_failures_total", "reason"),
        "errors": metric_by(families, "turnd_error_responses_total", "code"),
    }
    print("\nverdict (final vs baseline, both idle after a quiesce):")
    for line in lines:
        print(f"  {line}")
    print(f"  turnd exit status: {returncode}")
    print("client side:")
    print(f"  steps: {format_counts({k: v for k, v in ops.items() if not k.startswith('noise')})}")
    print(f"  noise: {format_counts({k: v for k, v in ops.items() if k.startswith('noise')})}")
    print(f"  errors: {format_counts(soak.failures)}")
    print("turnd counted:")
    print(f"  allocations ended by reason: {format_counts(server['ended'])}")
    print(f"  drops by reason: {format_counts(server['drops'])}")
    print(f"  auth failures: {format_counts(server['auth_failures'])}")
    print(f"  error responses by code: {format_counts(server['errors'])}")
    found = [c["unreachable"] for c in collections]
    print(
        f"  full garbage collections (server.full_gc_interval): {len(found)}, unreachable "
        f"objects found by each: {found or '-'}"
    )
    return {
        "options": {**attrs.asdict(options), "json_path": str(options.json_path)},
        "settings": {
            "leak_lifetime_s": LEAK_LIFETIME,
            "kept_lifetime_s": KEPT_LIFETIME,
            "silent_timeout_s": SILENT_TIMEOUT,
        },
        "samples": [attrs.asdict(s) for s in soak.samples],
        "verdict": lines,
        "client_ops": ops,
        "client_errors": dict(soak.failures),
        "server_counters": server,
        "turnd_exit_status": returncode,
        "full_collections": collections,
    }


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    document = run(options)
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"samples written to {options.json_path}")


if __name__ == "__main__":
    main()
