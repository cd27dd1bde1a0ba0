"""Rank-aware logging, one handler per line, and no third-party noise that is not the user's business.

:func:`get_logger`: only global rank 0 logs, so DDP runs do not print everything N times.
:func:`quiet_third_party` (called by every entry point once Hydra has configured logging): Lightning's own console
handlers are removed so its lines go through Hydra's handlers only (console and the run's log file, once each), and
the known third-party warnings and tips listed in :data:`QUIET_WARNINGS` / :data:`QUIET_LINES` are silenced, each by
its message and the module that emits it (nothing else is filtered).
"""

from __future__ import annotations

import logging
import re
import warnings

from kexpert.utils.distributed import process_rank

# (category, message regex, emitting module regex): warnings about third-party internals, not about the user's run.
QUIET_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # Lightning 2.6 on torch >= 2.10 uses a deprecated torch pytree API internally, once per fit.
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree"),
    # kexpert resumes into its own checkpoint dir on purpose (exact resume after a kill).
    (
        UserWarning,
        r"Checkpoint directory .* exists and is not empty",
        r"lightning\.pytorch\.callbacks\.model_checkpoint",
    ),
)
# (logger, message regex): third-party log lines that advertise, not inform; dropped at the emitting logger.
QUIET_LINES: tuple[tuple[str, str], ...] = (
    ("lightning.pytorch.utilities.rank_zero", r"💡 Tip: .*litlogger"),
    ("lightning.fabric.utilities.rank_zero", r"💡 Tip: .*litlogger"),
    # faiss's loader reports, at INFO, which SIMD build it tried (AVX512, AVX2, generic) on first import.
    ("faiss.loader", r"^(Loading faiss|Could not load library|Successfully loaded faiss|Environment variable)"),
)
# Loggers that install their own console handler at import (Lightning does when the root logger has none yet).
_OWN_HANDLER_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning")


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return process_rank() == 0


class _DropMessages(logging.Filter):
    """Drops records whose message matches ``pattern``."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return self.pattern.search(record.getMessage()) is None


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


def quiet_third_party() -> None:
    """One handler per log line, and the known third-party warnings and tips silenced (idempotent).

    When the root logger has handlers (Hydra's console and file handlers), Lightning's own console handlers are
    removed and its loggers propagate, so every Lightning line is printed once, in the run's format, and lands in the
    run's log file too.
    """
    for category, message, module in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, pattern in QUIET_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMessages(pattern))
    if not logging.getLogger().handlers:
        return
    for name in _OWN_HANDLER_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # the console handler a library added for itself
                logger.removeHandler(handler)
        logger.propagate = True
