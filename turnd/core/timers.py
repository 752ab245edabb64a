"""The core's one timer queue: what falls due when, by kind (DESIGN.md: one ``next_deadline()``,
one ``handle_timer(now)``).

Theory of operation: every live object with an expiry (a relay, a permission, a channel binding,
a channel number in its reuse delay, an unbound RFC 6062 peer connection, a port reservation) has
one entry ``(when, seq, kind, subject, detail)`` in a binary heap; ``seq`` keeps equal deadlines
in scheduling order (the route cache's read-back has one too, while the cache holds routes).
A refresh only moves the object's expiry: the timer that finds it refreshed re-arms itself
(the handlers, in the server's table keyed by :class:`TimerKind`, do that), so the queue holds
one entry per object whatever the clients do. Entries of an ended allocation are counted as
stale and dropped once they are half the heap (:meth:`Schedule.stale`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any


class TimerKind(Enum):
    """What a timer entry expires (its handler is the server's ``_TIMERS[kind]``)."""

    RELAY = "relay"  # one relay of an allocation (RFC 8656 §7, §8); subject allocation
    PERMISSION = "permission"  # §9; subject allocation, detail peer IP
    CHANNEL = "channel"  # §12; subject allocation, detail the binding
    COOLING = "cooling"  # §12's reuse delay; subject allocation, detail channel number
    CONNECTION = "connection"  # RFC 6062 §5.2/§5.3 bind timeout; subject the peer connection
    RESERVATION = "reservation"  # RFC 8656 §7.2 EVEN-PORT R=1; detail the token
    ROUTES = "routes"  # reading back the route cache's counters (turnd.core.routes); no subject


Entry = tuple[float, int, TimerKind, Any, Any]


class Schedule:
    """A heap of timer entries. :attr:`heap` is the list itself, never replaced, so the server's
    hot path may read ``heap[0][0]`` through a plain attribute."""

    def __init__(self) -> None:
        self.heap: list[Entry] = []
        self._seq = 0
        #: Entries whose subject has ended, counted by :meth:`stale`.
        self._stale = 0

    def add(self, when: float, kind: TimerKind, subject: Any, detail: Any = None) -> None:
        """Run ``kind``'s handler on ``subject`` and ``detail`` at ``when``."""
        self._seq += 1
        heapq.heappush(self.heap, (when, self._seq, kind, subject, detail))

    def next_deadline(self) -> float | None:
        """When the earliest entry falls due, or None."""
        return self.heap[0][0] if self.heap else None

    def pop_due(self, now: float) -> Iterator[tuple[TimerKind, Any, Any]]:
        """Remove and yield the entries due by ``now``, earliest first (entries a handler adds
        while iterating are yielded too if due)."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, kind, subject, detail = heapq.heappop(heap)
            yield kind, subject, detail

    def stale(self, count: int, dead: Callable[[Any], bool]) -> None:
        """``count`` more entries are stale; once they are half the heap, drop every entry
        whose subject is ``dead``."""
        self._stale += count
        if self._stale * 2 > len(self.heap):
            self.heap[:] = [entry for entry in self.heap if not dead(entry[3])]
            heapq.heapify(self.heap)
            self._stale = 0

    def entries(self) -> list[Entry]:
        """A copy of the queue (heap order), for tests and diagnostics."""
        return list(self.heap)

    def subjects(self) -> list[Any]:
        """The subject of each entry."""
        return [entry[3] for entry in self.heap]

    def __len__(self) -> int:
        return len(self.heap)
