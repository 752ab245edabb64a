"""Statistics of the figures: percentiles, ratios and rates that tolerate missing values."""

from __future__ import annotations

import math
from collections.abc import Sequence


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
