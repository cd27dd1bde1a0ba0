"""Experiment loggers built from ``conf/logger``."""

from __future__ import annotations

import logging
import netrc
import os
from typing import Any

from kexpert.utils.instantiate import instantiate

log = logging.getLogger(__name__)


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
    if not cfg:
        return []
    return [instantiate(sub, key=f"logger.{name}") for name, sub in cfg.items() if sub is not None]


def close_loggers(loggers: list, status: str = "success") -> None:
    """End every logger of one job: ``finalize`` it and, for W&B, finish its run.

    Lightning's ``WandbLogger.finalize`` leaves the run open, so in a multirun on the basic launcher (all jobs in
    one process) every later job would log into the first job's run. Finishing here gives one W&B run per job,
    marked failed (exit code 1) when the job raised.

    Args:
        loggers: The job's loggers (from :func:`build_loggers`).
        status: ``success`` or ``failed``.
    """
    for lg in loggers:
        try:
            lg.finalize(status)
        except Exception as e:  # closing must not hide the job's own error
            log.warning("logger %s: finalize failed: %s", type(lg).__name__, e)
        if type(lg).__name__ == "WandbLogger" and getattr(lg, "_experiment", None) is not None:
            try:
                lg.experiment.finish(exit_code=0 if status == "success" else 1)
            except Exception as e:
                log.warning("W&B: finishing the run failed: %s", e)
            lg._experiment = None
