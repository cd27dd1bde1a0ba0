"""Proportions with confidence intervals."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (well-behaved at 0, 1 and small n).

    Returns:
        ``(low, high)``; ``(0.0, 1.0)`` when ``n == 0``.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(name: str, flags: list[bool]) -> dict[str, float | list[float]]:
    """``{name: mean, name_ci95: [low, high]}`` for a list of 0/1 outcomes."""
    k, n = sum(bool(f) for f in flags), len(flags)
    low, high = wilson_interval(k, n)
    return {name: (k / n if n else float("nan")), f"{name}_ci95": [low, high]}
