"""How long a parked request (a long-poll) may wait."""

from __future__ import annotations


def wait_limit(wait: float, longest: float) -> float:
    """A long-poll's `wait` clamped to [0, longest]; NaN means 0 (it compares false, so it would never expire)."""
    return min(max(wait, 0.0), longest) if wait == wait else 0.0
