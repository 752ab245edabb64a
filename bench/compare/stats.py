"""Statistics of the figures: percentiles, ratios and rates that tolerate missing values."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


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


def median_of(rounds: Sequence[Any]) -> Any:
    """The rounds' results as one: the median of each number found at the same place in them
    (dicts are walked key by key; a round without a number there, or whose load failed there,
    does not count), and for anything else — text, lists, flags — what the first round has."""
    if any(isinstance(r, dict) for r in rounds):
        # A load that failed in some rounds ({"error": ...}) counts from the rounds it ran in.
        ran = [r for r in rounds if isinstance(r, dict) and "error" not in r]
        dicts = ran or [r for r in rounds if isinstance(r, dict)]
        keys = dict.fromkeys(key for r in dicts for key in r)
        return {key: median_of([r[key] for r in dicts if key in r]) for key in keys}
    first = rounds[0]
    numbers = [r for r in rounds if isinstance(r, int | float) and not isinstance(r, bool)]
    if numbers and not isinstance(first, bool) and isinstance(first, int | float):
        return statistics.median(numbers)
    return first
