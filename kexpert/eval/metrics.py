"""Proportions with confidence intervals, and the multiple-choice decision rules (``acc``, ``acc_norm``).

``acc_norm`` is lm-eval-harness' (``lm_eval/api/task.py``, ``process_results`` for ``multiple_choice``): each
option's log-likelihood divided by the number of characters of the option text, without the space that joins it to
the prompt. Before this definition, kexpert divided by the UTF-8 bytes of the continuation *with* that space, which
gave different picks on short options (BoolQ " yes" / " no": 4 and 3 against lm-eval's 3 and 2); docs/evaluation.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


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


def norm_length(continuation: str) -> int:
    """The ``acc_norm`` denominator of an option: its characters, leading whitespace excluded (at least 1).

    ``" Paris"`` (the scored continuation) counts 5, as lm-eval counts its choice ``"Paris"`` (the target
    delimiter ``" "`` is not part of the choice). Characters, not bytes: ``" café"`` counts 4.
    """
    return max(len(continuation.lstrip()), 1)


def pick_options(logliks: Sequence[float], continuations: Sequence[str]) -> tuple[int, int]:
    """The options ``acc`` and ``acc_norm`` pick: ``(argmax loglik, argmax loglik / norm_length)``.

    Ties go to the first option, as ``numpy.argmax`` in lm-eval.
    """
    if len(logliks) != len(continuations) or not logliks:
        raise ValueError(f"pick_options: {len(logliks)} log-likelihoods for {len(continuations)} options")
    normed = [ll / norm_length(c) for ll, c in zip(logliks, continuations)]
    raw = max(range(len(logliks)), key=lambda j: logliks[j])
    norm = max(range(len(normed)), key=lambda j: normed[j])
    return raw, norm
