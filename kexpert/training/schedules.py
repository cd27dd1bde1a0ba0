"""Learning-rate schedules (the paper: cosine decay with linear warm-up, Table 12)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cosine_with_warmup(
    optimizer: Optimizer,
    num_training_steps: int,
    warmup_ratio: float = 0.03,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up to the base LR, then cosine decay to ``min_lr_ratio`` x base LR.

    Args:
        optimizer: The optimizer.
        num_training_steps: Total optimizer steps.
        warmup_ratio: Warm-up as a fraction of the total (used when ``warmup_steps`` is ``None``).
        warmup_steps: Explicit warm-up steps.
        min_lr_ratio: Final LR as a fraction of the base LR.
    """
    total = max(int(num_training_steps), 1)
    warm = int(warmup_steps) if warmup_steps is not None else int(round(warmup_ratio * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        progress = min((step - warm) / max(total - warm, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, num_training_steps: int) -> LambdaLR:
    """Constant LR (for ablations and tests)."""
    return LambdaLR(optimizer, lambda step: 1.0)
