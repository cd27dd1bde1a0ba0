"""K-shot sampling: a deterministic draw of K examples from a task's K-shot pool."""

from __future__ import annotations

import random

from kexpert.data.records import Example
from kexpert.utils.errors import ConfigError


def sample_kshot(pool: list[Example], k_shot: int, data_seed: int) -> list[Example]:
    """Draw ``k_shot`` examples without replacement.

    The draw depends only on the pool's ids and ``data_seed``: the pool is sorted by id first, so the same
    K-shot comes out whatever order the source lists the rows in, and a smaller K from the same seed is a
    prefix of a larger one (K=5 is inside K=20), as with the paper's 10/20/50-shot files.

    Args:
        pool: The task's K-shot pool.
        k_shot: K, at least 1.
        data_seed: Seed of the draw.

    Returns:
        K examples.

    Raises:
        ConfigError: K < 1 or K larger than the pool.
    """
    if k_shot < 1:
        raise ConfigError(f"k_shot must be >= 1, got {k_shot}")
    if k_shot > len(pool):
        raise ConfigError(f"k_shot={k_shot} is larger than the K-shot pool ({len(pool)} examples)")
    ordered = sorted(pool, key=lambda e: e.id)
    order = list(range(len(ordered)))
    random.Random(data_seed).shuffle(order)
    return [ordered[i] for i in order[:k_shot]]
