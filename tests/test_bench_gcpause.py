"""bench.gcpause runs the core under both collectors and prints one row for each.

Nothing is timed against a threshold: pauses are printed, not judged. That turnd's policy keeps
full collections away is tested in tests/test_gc_policy.py.
"""

from __future__ import annotations

import subprocess
import sys


def test_both_collectors_run_with_every_allocation_held() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.gcpause", "--allocations", "300", "--churn", "200"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[2:]}
    assert set(rows) == {"default", "turnd"}
    for collector, held, objects, full_runs, *_ in rows.values():
        assert held == "300", collector
        assert int(objects.replace(",", "")) > 0
        assert int(full_runs) >= 0
