"""Garbage collection for a long-running relay: no full collection in the middle of traffic.

CPython's cyclic collector makes a full (generation 2) collection whenever the objects that
survived the young generations have grown by a quarter since the last one. Each full collection
walks every tracked object; with 20,000 allocations turnd holds about 480,000 of them, and a full
collection stops the event loop for 0.2 to 0.5 s (``python -m bench.gcpause``). Every packet
waits that long, and what overflows the socket buffers meanwhile is lost.

turnd's own state is acyclic: an allocation and everything hanging off it is freed by reference
counting the moment the core lets go of it. The young generations (0 and 1) still run as usual
and free short-lived cycles (exceptions, HTTP requests) within a millisecond or two. So, once
the daemon has started:

* :func:`settle` collects once, then ``gc.freeze()`` moves what start-up made (modules, the
  configuration, the listeners) out of every later collection, and generation 2 is no longer
  collected on the interpreter's own schedule;
* :func:`full_collections` makes a full collection every ``server.full_gc_interval`` seconds
  (default 3600; 0: never) and logs ``gc.full_collection`` with how long it took and how many
  unreachable objects it found. That number tells whether cycles ever reach generation 2 in a
  deployment; so far (``bench.soak``) it stays in the tens.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter

from turnd.logs import event

#: Generation-2 threshold that the interpreter never reaches (one count per generation-1 run).
NEVER = 1 << 30


def settle() -> None:
    """After start-up: collect, freeze the survivors, leave generation 2 to full_collections."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)


def collect_full(stats: Counter[str]) -> int:
    """One full collection, logged and counted; the unreachable objects it found."""
    started = time.perf_counter()
    found = gc.collect()
    seconds = time.perf_counter() - started
    stats["gc.full_collections"] += 1
    stats["gc.full_collection_unreachable"] += found
    event(
        logging.INFO,
        "gc.full_collection",
        f"full garbage collection: {found} unreachable objects in {seconds * 1e3:.0f} ms",
        unreachable=found,
        milliseconds=round(seconds * 1e3, 1),
    )
    return found


async def full_collections(interval: float, stats: Counter[str]) -> None:
    """Every ``interval`` seconds, a full collection (0: never); runs until cancelled."""
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        collect_full(stats)
