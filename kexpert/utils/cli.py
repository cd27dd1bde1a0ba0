"""Entry-point wrapper: user errors become one clear line, not a traceback wall."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from kexpert.utils.errors import KExpertError
from kexpert.utils.logging import quiet_third_party
from kexpert.utils.resolvers import register_resolvers

# Every entry point imports this module before ``@hydra.main`` composes, so the configs' resolvers exist.
register_resolvers()


def multirun_job() -> str | None:
    """``job #3 (task=arc_c moe.top_k=2)`` inside a multirun job, else ``None``."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return f"job #{hc.job.num} ({' '.join(hc.overrides.task)})"


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print ``error: <message>`` and exit 2 on a :class:`KExpertError` (set ``KEXPERT_DEBUG=1`` for the trace).

    In a multirun the message names the failing job and its overrides; any other exception (a defect, not bad
    input) also names the job before it propagates with its traceback, so a sweep always says which cell failed.
    Every job starts with :func:`~kexpert.utils.logging.quiet_third_party` (Hydra has configured logging by then):
    one handler per log line, and the known third-party warnings silenced.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet_third_party()
        try:
            return fn(*args, **kwargs)
        except KExpertError as e:
            if os.environ.get("KEXPERT_DEBUG"):
                raise
            job = multirun_job()
            print(f"error: {job}: {e}" if job else f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except Exception as e:
            job = multirun_job()
            if job:
                print(f"error: {job} failed: {type(e).__name__}: {e}", file=sys.stderr)
            raise

    return wrapper


def configure_threads() -> None:
    """Respect ``KEXPERT_NUM_THREADS`` (default: torch's choice) for CPU runs."""
    n = os.environ.get("KEXPERT_NUM_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))
