"""The suite's one Hypothesis policy for fuzz runs: derandomized, so a failure repeats on every
machine, and without deadlines or too-slow checks, since no test times itself."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def fuzz(examples: int) -> settings:
    """Hypothesis settings for a fuzz run of ``examples`` inputs under the policy above."""
    return settings(
        derandomize=True,
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
