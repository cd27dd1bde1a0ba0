"""Experiment loggers built from ``conf/logger``."""

from __future__ import annotations

import netrc
import os
from typing import Any


def wandb_credentials_present() -> bool:
    """Whether W&B can log online: ``WANDB_API_KEY`` or a netrc entry for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(mode: str = "auto", **kwargs: Any):
    """A Lightning ``WandbLogger``; ``mode=auto`` is online with credentials and offline otherwise.

    Args:
        mode: ``auto``, ``online``, ``offline`` or ``disabled``.
        **kwargs: ``WandbLogger`` arguments (project, group, tags, save_dir ...).
    """
    from lightning.pytorch.loggers import WandbLogger

    if mode == "auto":
        mode = "online" if wandb_credentials_present() else "offline"
    if kwargs.get("save_dir"):
        os.makedirs(kwargs["save_dir"], exist_ok=True)
    return WandbLogger(mode=mode, offline=(mode == "offline"), **kwargs)


def build_loggers(cfg: Any) -> list:
    """Instantiate every logger in a ``logger`` config mapping (``None`` -> no loggers)."""
    from kexpert.utils.instantiate import instantiate

    if not cfg:
        return []
    return [instantiate(sub, key=f"logger.{name}") for name, sub in cfg.items() if sub is not None]
