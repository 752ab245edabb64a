"""bench.metrics_rss: the slope it prints is a least-squares slope, and a short run mints new
usernames each second and reads the daemon's RSS."""

from __future__ import annotations

import pytest

from bench import metrics_rss


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([(0.0, 10.0), (1.0, 12.0), (2.0, 14.0)], 2.0),
        ([(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)], 0.0),
        ([(0.0, 1.0), (1.0, 3.0), (2.0, 2.0), (3.0, 4.0)], 0.8),
        ([(0.0, 1.0)], 0.0),
    ],
)
def test_slope_is_least_squares(points: list[tuple[float, float]], expected: float) -> None:
    """The slope of RSS over time is the least-squares fit, 0 without spread."""
    assert metrics_rss.slope(points) == pytest.approx(expected)


def test_short_run_mints_usernames_and_reads_rss() -> None:
    """Two seconds at three usernames a second: a multiple of three minted, RSS read."""
    figures = metrics_rss.run(2.0, 3)
    assert figures["usernames"] >= 3 and figures["usernames"] % 3 == 0
    assert figures["rss_end_kib"] > 0
