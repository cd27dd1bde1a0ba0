"""Hydra callbacks: a summary table at the end of a multirun."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from kexpert.pipeline.validate import InvalidGridPoint, validate_config


def _fmt(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, float) else str(v)


def summarize_runs(sweep_dir: str | Path) -> str:
    """A markdown table of every ``metrics.json`` under a sweep dir (task, n, primary metric, 95% CI)."""
    rows = []
    for path in sorted(Path(sweep_dir).glob("*/metrics.json")):
        m = json.loads(path.read_text())
        ev = m.get("eval", m)
        key = ev.get("primary_metric", "acc")
        ci = ev.get(f"{key}_ci95", [float("nan")] * 2)
        rows.append(
            (
                path.parent.name,
                ev.get("task", "?"),
                ev.get("mode", "?"),
                ev.get("n", "?"),
                key,
                _fmt(ev.get(key, float("nan"))),
                f"[{_fmt(ci[0])}, {_fmt(ci[1])}]",
            )
        )
    if not rows:
        return f"(no metrics.json under {sweep_dir})"
    head = "| job | task | mode | n | metric | value (%) | 95% CI |\n|---|---|---|---|---|---|---|\n"
    return head + "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows)


def grid_points(overrides: list[str]) -> list[list[str]]:
    """Every job of a basic-sweeper multirun: the cartesian product of the sweep overrides, in Hydra's order.

    ``a=1,2 b=x`` gives ``[["a=1", "b=x"], ["a=2", "b=x"]]``, as the basic sweeper launches them (public override
    parser only; the sweeper's own splitting is private Hydra API).
    """
    per_key: list[list[str]] = []
    for ov in OverridesParser.create().parse_overrides(overrides):
        if ov.is_sweep_override():
            per_key.append([f"{ov.get_key_element()}={v}" for v in ov.sweep_string_iterator()])
        else:
            per_key.append([ov.input_line or ov.get_key_element()])
    return [list(job) for job in itertools.product(*per_key)]


class MultirunSummary(Callback):
    """Print the metrics table of a finished multirun and save it as ``summary.md`` in the sweep dir."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        sweep_dir = Path(config.hydra.sweep.dir)
        if config.hydra.job.config_name == "select_data":
            print(f"\nper-task statistics: python experiments/data_selection/summarize_runs.py {sweep_dir}")
            return
        table = summarize_runs(sweep_dir)
        if sweep_dir.exists():
            (sweep_dir / "summary.md").write_text(table + "\n")
        print(f"\nResults ({sweep_dir}):\n{table}\n")
        if config.hydra.job.config_name == "train":
            print(f"tables and plots: python -m kexpert.report {sweep_dir}")


class ValidateSweep(Callback):
    """Compose every job of a multirun before launching any, and reject invalid grid points up front.

    Each job's config goes through :func:`kexpert.pipeline.train.validate_config`; one failure stops the sweep
    with a message naming the job's overrides (unless ``skip_invalid=true``, then invalid points are only listed).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        if config.hydra.job.config_name != "train":
            return
        task_overrides = list(config.hydra.overrides.task)
        node = config.hydra.sweeper.get("params")
        params = OmegaConf.to_container(node, resolve=False) if node is not None else {}
        given = {o.split("=", 1)[0].lstrip("+~") for o in task_overrides}
        extra = [f"{k}={v}" for k, v in params.items() if k not in given]
        jobs = grid_points(task_overrides + extra)
        bad = []
        for job in jobs:
            try:
                validate_config(compose(config_name="train", overrides=list(job)))
            except InvalidGridPoint as e:
                bad.append(f"{' '.join(job)}: {e}")
        if bad:
            listing = "\n  ".join(bad)
            skip = any(o.startswith("skip_invalid=true") for o in task_overrides) or bool(config.get("skip_invalid"))
            if not skip:
                # Hydra turns exceptions raised in callbacks into warnings: exit to really stop the sweep.
                print(
                    f"error: {len(bad)} of {len(jobs)} grid points are invalid (nothing was run):\n  {listing}",
                    file=sys.stderr,
                )
                raise SystemExit(2)
            print(f"skip_invalid: {len(bad)} of {len(jobs)} grid points will be skipped:\n  {listing}")
