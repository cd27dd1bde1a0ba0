"""Rank-aware logging: only global rank 0 logs, so DDP runs do not print everything N times."""

from __future__ import annotations

import logging
import os


def _rank() -> int:
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if key in os.environ:
            try:
                return int(os.environ[key])
            except ValueError:
                continue
    return 0


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return _rank() == 0


def get_logger(name: str) -> logging.Logger:
    """A logger that is silent on every rank but 0.

    Args:
        name: Usually ``__name__``.

    Returns:
        The configured logger.
    """
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RankZeroFilter) for f in logger.filters):
        logger.addFilter(_RankZeroFilter())
    return logger
