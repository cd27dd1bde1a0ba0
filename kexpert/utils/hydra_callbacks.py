"""Hydra callbacks: a summary table at the end of a multirun."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


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
        rows.append((path.parent.name, ev.get("task", "?"), ev.get("mode", "?"), ev.get("n", "?"), key,
                     _fmt(ev.get(key, float("nan"))), f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"))
    if not rows:
        return f"(no metrics.json under {sweep_dir})"
    head = "| job | task | mode | n | metric | value (%) | 95% CI |\n|---|---|---|---|---|---|---|\n"
    return head + "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows)


class MultirunSummary(Callback):
    """Print the metrics table of a finished multirun and save it as ``summary.md`` in the sweep dir."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        sweep_dir = Path(config.hydra.sweep.dir)
        table = summarize_runs(sweep_dir)
        if sweep_dir.exists():
            (sweep_dir / "summary.md").write_text(table + "\n")
        print(f"\nResults ({sweep_dir}):\n{table}\n")
