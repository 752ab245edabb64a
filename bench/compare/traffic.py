"""The load loops: keep a window in flight, pace a rate, or open allocations from fresh sockets.

Every loop is bounded by ``LOAD_DEADLINE`` whatever the flags, reads answers between sends so a
burst never starves receiving, and counts what it sent and what came back; a silence writes the
packets in flight off as lost instead of waiting for them.
"""

from __future__ import annotations

import collections
import itertools
import selectors
import time
from collections.abc import Sequence

import attrs

from bench.compare.clients import CLIENT_ADDRESSES, Link, UdpLink
from bench.compare.servers import Server
from stun.message import Message, Method, decode
from testkit.client import Request, ResponseError, TurnSession, error_code
from testkit.daemon import PASSWORD, REALM, USER
from testkit.sync import random_txid

#: Seconds without any answer before the packets in flight are written off as lost.
SILENCE = 0.3
#: Seconds to wait for stragglers after a paced step or a timed load.
DRAIN = 0.5
#: Most packets sent in one go by the pacer, so that receiving is never starved.
MAX_BURST = 64
#: Allocations that get no answer within this many seconds count as failed.
ALLOCATION_STALL = 2.0
#: The allocation driver gives up after this many failures (a full port range fails them all).
MAX_ALLOCATION_FAILURES = 200
#: Upper bound of any load in seconds, whatever the flags: every loop here ends.
LOAD_DEADLINE = 300.0


@attrs.frozen
class PumpResult:
    """Frames sent and answered by a windowed or paced load, and how long it sent."""

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
    selector = watch(links)
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
        received = drain(selector, sent, received)
    finally:
        selector.close()
    return PumpResult(sent, received, time.perf_counter() - started)


def watch(links: Sequence[Link]) -> selectors.BaseSelector:
    """A selector on the links' sockets, each registered with its link as data."""
    selector = selectors.DefaultSelector()
    for link in links:
        selector.register(link.sock, selectors.EVENT_READ, link)
    return selector


def drain(selector: selectors.BaseSelector, sent: int, received: int) -> int:
    """Read answers for up to ``DRAIN`` seconds after the last send; the total received."""
    drain_until = time.perf_counter() + DRAIN
    while received < sent and time.perf_counter() < drain_until:
        for key, _ in selector.select(0.05):
            received += len(key.data.receive())
    return received


def paced(
    links: Sequence[UdpLink], frames: Sequence[bytes], rate: float, seconds: float
) -> PumpResult:
    """Send at ``rate`` packets/s for ``seconds``, round-robin, reading answers in between."""
    selector = watch(links)
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
        received = drain(selector, sent, received)
    finally:
        selector.close()
    return PumpResult(sent, received, send_seconds)


@attrs.define
class AllocationRun:
    """What ``allocate_many`` achieved: completed allocations and failures by reason."""

    completed: int = 0
    failures: collections.Counter[str] = attrs.field(factory=collections.Counter)
    seconds: float = 0.0


@attrs.define
class _Attempt:
    link: UdpLink
    session: TurnSession
    request: Request
    since: float


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
    selector = selectors.DefaultSelector()
    attempts: dict[int, _Attempt] = {}
    started = time.perf_counter()
    deadline = started + min(seconds, LOAD_DEADLINE)

    def send(attempt: _Attempt, request: Request) -> None:
        attempt.request = request
        attempt.link.send(request.data)

    def finish(attempt: _Attempt, failure: str | None) -> None:
        selector.unregister(attempt.link.sock)
        del attempts[attempt.link.sock.fileno()]
        if failure is not None:
            run.failures[failure] += 1
        else:
            run.completed += 1
        attempt.link.close()

    def answer(attempt: _Attempt, reply: Message) -> None:
        method = attempt.request.method
        try:
            again = attempt.session.answer(attempt.request, reply)
        except ResponseError:
            finish(attempt, f"{method.name.title()}: bad MESSAGE-INTEGRITY")
            return
        code = error_code(reply)
        if again is not None:
            send(attempt, again)
        elif code is not None:
            finish(attempt, f"{'Allocate' if method == Method.ALLOCATE else 'Refresh'}: {code}")
        elif method == Method.ALLOCATE and delete:
            send(attempt, attempt.session.refresh(0))
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
                session = TurnSession(USER, PASSWORD, default_realm=REALM, new_txid=random_txid)
                attempt = _Attempt(link, session, session.allocate(), time.perf_counter())
                attempts[link.sock.fileno()] = attempt
                selector.register(link.sock, selectors.EVENT_READ, attempt)
                send(attempt, attempt.request)
            for key, _ in selector.select(0.1):
                attempt = key.data
                for frame in attempt.link.receive():
                    reply = decode(frame)
                    if reply.transaction_id == attempt.request.txid:
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
