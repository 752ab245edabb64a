"""Full garbage collections happen on turnd's schedule, not in the middle of traffic.

The module's functions change the interpreter's collector, so each test puts it back as found.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.daemon import start_turnd
from turnd import gc_policy


@pytest.fixture
def collector() -> Iterator[None]:
    """Whatever a test does to the collector is undone afterwards."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class Cycle:
    """Two of these pointing at each other are freed only by the cyclic collector."""

    other: Cycle | None = None


def plant_cycles(count: int) -> None:
    for _ in range(count):
        a, b = Cycle(), Cycle()
        a.other, b.other = b, a


def test_settle_freezes_start_up_and_takes_generation_2_off_the_interpreter(
    collector: None,
) -> None:
    """After settle(): start-up objects are frozen, and however much survives the young
    generations, the interpreter never starts a full collection by itself."""
    gc_policy.settle()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[2] == gc_policy.NEVER
    full_runs = gc.get_stats()[2]["collections"]
    survivors = [[n] for n in range(300_000)]  # would trigger full collections by default
    gc.collect(1)
    assert gc.get_stats()[2]["collections"] == full_runs
    del survivors


def test_a_full_collection_frees_cycles_and_is_counted_and_logged(
    collector: None, caplog: pytest.LogCaptureFixture
) -> None:
    gc.collect()
    plant_cycles(50)
    stats: Counter[str] = Counter()
    with caplog.at_level(logging.INFO, logger="turnd"):
        found = gc_policy.collect_full(stats)
    assert found >= 100
    assert stats["gc.full_collections"] == 1
    assert stats["gc.full_collection_unreachable"] == found
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "gc.full_collection"]
    assert record.fields["unreachable"] == found


def test_full_collections_repeat_at_the_interval_and_never_at_zero(collector: None) -> None:
    async def scenario() -> tuple[int, int]:
        never: Counter[str] = Counter()
        await asyncio.wait_for(gc_policy.full_collections(0, never), 1)  # returns at once
        stats: Counter[str] = Counter()
        task = asyncio.create_task(gc_policy.full_collections(0.01, stats))
        while stats["gc.full_collections"] < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        return never["gc.full_collections"], stats["gc.full_collections"]

    assert asyncio.run(scenario()) == (0, 3)


def test_the_daemon_makes_its_full_collections_on_schedule(tmp_path: Path) -> None:
    """A daemon with full_gc_interval = 1 logs gc.full_collection about every second."""
    daemon = start_turnd(tmp_path, env={"TURND_SERVER_FULL_GC_INTERVAL": "1"})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runs = [e for e in daemon.log_events() if e.get("event") == "gc.full_collection"]
            if len(runs) >= 2:
                break
            time.sleep(0.2)
        assert len(runs) >= 2
        assert all(isinstance(run["unreachable"], int) for run in runs)
    finally:
        daemon.stop()
