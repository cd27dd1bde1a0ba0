"""Log a finished report to Weights & Biases.

One run (project ``kexpert``, job type ``report``, group = the sweep name) holds every table as a ``wandb.Table``
and every plot as a ``wandb.Image``; it is offline without credentials.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kexpert.report.tables import Table
from kexpert.utils.loggers import wandb_credentials_present
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


def wandb_mode() -> str:
    """``WANDB_MODE`` if set, else ``online`` with credentials and ``offline`` without."""
    return os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_present() else "offline")


def _wandb_table(table: Table):
    import wandb

    columns: list[str] = []
    for row in table.csv_rows:
        columns += [str(k) for k in row if str(k) not in columns]
    data = [[None if row.get(c, "") == "" else row.get(c) for c in columns] for row in table.csv_rows]
    return wandb.Table(columns=columns, data=data, allow_mixed_types=True)


def log_report(
    tables: Mapping[str, Table],
    plots: Mapping[str, Path],
    *,
    group: str,
    save_dir: str | Path,
    config: dict[str, Any] | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    """Log tables and plots to one W&B run, then ``wandb.finish()``.

    Args:
        tables: ``name -> Table``.
        plots: ``name -> PNG path``.
        group: Run group (the sweep name).
        save_dir: Where W&B keeps its files (offline runs: ``<save_dir>/wandb/offline-run-*``).
        config: Run config (the report's inputs).
        mode: ``online``/``offline``/``disabled``; default :func:`wandb_mode`.

    Returns:
        ``{"mode", "name", "dir", "url"}`` of the W&B run.
    """
    import wandb

    mode = mode or wandb_mode()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project="kexpert",
        job_type="report",
        group=group,
        name=f"report-{group}",
        mode=mode,
        dir=str(save_dir),
        config=dict(config or {}),
    )
    try:
        payload: dict[str, Any] = {f"tables/{name}": _wandb_table(t) for name, t in tables.items()}
        payload.update({f"plots/{name}": wandb.Image(str(p)) for name, p in plots.items()})
        run.log(payload)
        info = {
            "mode": mode,
            "name": run.name,
            "dir": str(getattr(run, "dir", "") or ""),
            "url": getattr(run, "url", None),
        }
    finally:
        wandb.finish()
    log.info("logged the report to W&B (%s): %s", mode, info.get("url") or info.get("dir"))
    return info
