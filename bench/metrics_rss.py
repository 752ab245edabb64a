"""turnd's memory while it is scraped and sees ever-new REST usernames (coturn #1898, #1933, #1960:
coturn's RSS grew with each new username its metrics saw).

    python -m bench.metrics_rss [--seconds 600] [--users-per-second 20]

Theory of operation: one turnd on loopback (testkit/daemon.py's config). Every second, for
``--seconds``: ``--users-per-second`` REST credentials with usernames never used before are
minted, each allocates over UDP, sends one Send indication to a loopback peer and deletes its
allocation (Refresh 0), then GET /metrics is scraped once. The daemon's RSS (VmRSS) is read each
second. Printed: RSS at the start of the second half and at the end, and the least-squares slope
of RSS over the second half (the first half holds warm-up: lazy imports, first-use caches), in KiB
per minute and per thousand usernames. Figures only, no thresholds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import urllib.request
from pathlib import Path

from auth.credentials import rest_password
from bench.soak import read_proc
from testkit.daemon import REST_SECRET, start_turnd
from testkit.sync import EchoPeer, TurnClient, error_code


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def run(seconds: float, per_second: int) -> dict[str, float]:
    """The run described above; its figures."""
    with tempfile.TemporaryDirectory() as work, EchoPeer() as peer:
        daemon = start_turnd(Path(work))
        try:
            url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
            started = time.monotonic()
            expiry = int(time.time()) + 86400
            rss: list[tuple[float, float]] = []
            users = 0
            while (elapsed := time.monotonic() - started) < seconds:
                for _ in range(per_second):
                    username = f"{expiry}:bench-{users}"
                    users += 1
                    with TurnClient(
                        ("127.0.0.1", daemon.port), username, rest_password(REST_SECRET, username)
                    ) as client:
                        if error_code(client.allocate()) is None:
                            client.create_permission(peer.address)
                            client.send_indication(peer.address, b"x")
                            client.refresh(0)
                with urllib.request.urlopen(url, timeout=10) as response:
                    response.read()
                rss.append((elapsed, read_proc(daemon.process.pid).rss_bytes / 1024))
                time.sleep(max(0.0, 1.0 - (time.monotonic() - started - elapsed)))
        finally:
            daemon.stop()
    half = [p for p in rss if p[0] >= seconds / 2] or rss
    per_minute = slope(half) * 60
    return {
        "seconds": seconds,
        "usernames": users,
        "rss_half_kib": half[0][1],
        "rss_end_kib": half[-1][1],
        "slope_kib_per_minute": per_minute,
        "slope_kib_per_1000_users": per_minute / max(per_second * 60, 1) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_rss", description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0, help="how long (600)")
    parser.add_argument("--users-per-second", type=int, default=20, help="new usernames (20)")
    args = parser.parse_args(argv)
    figures = run(args.seconds, args.users_per_second)
    print(
        f"{figures['usernames']:.0f} new REST usernames over {figures['seconds']:.0f} s, "
        f"scraped every second\n"
        f"RSS at half time {figures['rss_half_kib']:.0f} KiB, at the end "
        f"{figures['rss_end_kib']:.0f} KiB\n"
        f"slope over the second half: {figures['slope_kib_per_minute']:+.1f} KiB/min, "
        f"{figures['slope_kib_per_1000_users']:+.1f} KiB per 1000 usernames"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
