"""The memory load: (RSS with N idle allocations - RSS before) / N on a fresh server.

After a warm-up, allocations are added level by level without being deleted. More than 16384
allocations do not fit one relay address's default port range, so both servers then get
``WIDE_PORT_RANGE``; a level the servers' open-file limit (inherited from this process) cannot
hold is measured at the most that fits, and the entry says so.
"""

from __future__ import annotations

import collections
import resource
import time
from pathlib import Path
from typing import Any

from bench.compare.options import Options
from bench.compare.procfs import family_open_files, family_rss_bytes
from bench.compare.servers import DEFAULT_PORT_RANGE, STARTERS
from bench.compare.stats import per
from bench.compare.traffic import LOAD_DEADLINE, allocate_many

#: Used by the RSS load when it needs more than 16384 allocations on one relay address: 24000
#: ports below Linux's ephemeral range (32768-60999), the same range for both servers.
WIDE_PORT_RANGE = (8000, 31999)
#: Allocations made and deleted before the RSS baseline, so lazy imports and first-use caches
#: are not charged to the measured allocations.
RSS_WARMUP = 50
#: Descriptors a server needs besides its relay sockets (listeners, log, TLS, event loop).
FILE_MARGIN = 100
#: Seconds between the last allocation and the RSS reading.
RSS_SETTLE = 0.5


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


def measure_rss(kind: str, work: Path, options: Options) -> dict[str, Any]:
    """RSS per idle allocation at each level, on a fresh server.

    A level that the relay port range or the servers' open-file limit (inherited from this
    process) cannot hold is measured at the most allocations that fit, and says so."""
    port_range, why = rss_port_range(options)
    ports = port_range[1] - port_range[0] + 1
    file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    top = max(options.allocations)
    server = STARTERS[kind](work, port_range, top + RSS_WARMUP, options.threads(kind))
    levels: list[dict[str, Any]] = []
    try:
        allocate_many(server, window=32, count=RSS_WARMUP, seconds=60, delete=True)
        time.sleep(RSS_SETTLE)
        baseline, base_files = family_rss_bytes(server.pid), family_open_files(server.pid)
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
            rss, files = family_rss_bytes(server.pid), family_open_files(server.pid)
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
