"""Entry-point wrapper: user errors become one clear line, not a traceback wall."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from kexpert.utils.errors import KExpertError
from kexpert.utils.resolvers import register_resolvers

# Every entry point imports this module before ``@hydra.main`` composes, so the configs' resolvers exist.
register_resolvers()


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print ``error: <message>`` and exit 2 on a :class:`KExpertError` (set ``KEXPERT_DEBUG=1`` for the trace)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KExpertError as e:
            if os.environ.get("KEXPERT_DEBUG"):
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def configure_threads() -> None:
    """Respect ``KEXPERT_NUM_THREADS`` (default: torch's choice) for CPU runs."""
    n = os.environ.get("KEXPERT_NUM_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))
