"""Result tables in the layout of the paper's Tables 1-4, 6 and 7 (docs/method.md §8), plus a long CSV of every run.

Rows are the factors a sweep varies (:mod:`kexpert.report.factors`); columns are the tasks in the paper's order
and ``Avg``. A cell is the mean ± sample standard deviation (ddof 1) of the task's primary metric, in %, over the
draws (``data_seed``, ``seed``) of that row, followed by the number of draws. ``Avg`` is the paper's unweighted
mean of the task means; its spread is the sample std of the per-draw task averages over the draws present in
every task (left empty with fewer than 2 such draws), and it is only given for rows that cover every task.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kexpert.report.factors import (
    Factor,
    display_value,
    row_key,
    row_sort_key,
    task_sort_key,
    task_title,
)
from kexpert.report.runs import RunCollection, RunRecord
from kexpert.utils.io import atomic_write


@dataclass
class Table:
    """A table rendered both as markdown and as CSV.

    Attributes:
        name: File stem (``table1_method`` -> ``table1_method.md`` / ``.csv``).
        title: Heading.
        columns: Markdown header.
        rows: Markdown cells.
        csv_rows: One dict per CSV row (numbers unformatted).
        notes: Lines printed under the table.
    """

    name: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    csv_rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """Heading-less markdown table with its notes."""
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines) + "\n"


def write_table(table: Table, out_dir: str | Path) -> dict[str, Path]:
    """Write ``<name>.md`` and ``<name>.csv`` atomically; returns both paths."""
    out = Path(out_dir)
    md, cs = out / f"{table.name}.md", out / f"{table.name}.csv"
    with atomic_write(md) as f:
        f.write(f"# {table.title}\n\n{table.to_markdown()}")
    fieldnames: list[str] = []
    for row in table.csv_rows:
        fieldnames += [k for k in row if k not in fieldnames]
    with atomic_write(cs) as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table.csv_rows)
    return {"md": md, "csv": cs}


@dataclass(frozen=True)
class CellStats:
    """Mean ± sample std of a metric over draws (in %)."""

    mean: float
    std: float | None
    n: int

    def format(self) -> str:
        """``57.76 ± 1.20 (3)``; no std for a single draw."""
        spread = "" if self.std is None else f" ± {self.std:.2f}"
        return f"{self.mean:.2f}{spread} ({self.n})"


def summarize(values: Sequence[float]) -> CellStats:
    """Mean and sample standard deviation (ddof 1; None for one value)."""
    if not values:
        raise ValueError("summarize: no values")
    vals = [float(v) for v in values]
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return CellStats(statistics.fmean(vals), std, len(vals))


@dataclass
class ResultGrid:
    """Per-row, per-task statistics of the primary metric (in %).

    Attributes:
        factors: Row factors.
        tasks: Column tasks, in the paper's order.
        rows: Row keys (one value per factor), sorted.
        cells: ``(row, task) -> CellStats``.
        averages: ``row -> CellStats`` of the task average (rows covering every task only).
        oracle_rows: Rows that contain an oracle method.
        metrics: ``task -> primary metric names`` seen.
    """

    factors: list[Factor]
    tasks: list[str]
    rows: list[tuple]
    cells: dict[tuple[tuple, str], CellStats]
    averages: dict[tuple, CellStats]
    oracle_rows: set[tuple]
    metrics: dict[str, set[str]]


def results_grid(runs: Sequence[RunRecord], factors: Sequence[Factor]) -> ResultGrid:
    """Aggregate evaluated runs into rows x tasks."""
    tasks = sorted({r.task for r in runs}, key=task_sort_key)
    by_cell: dict[tuple[tuple, str], dict[tuple[int, int], float]] = {}
    oracle_rows: set[tuple] = set()
    metrics: dict[str, set[str]] = {}
    for run in runs:
        key = row_key(run, factors)
        by_cell.setdefault((key, run.task), {})[run.draw] = 100.0 * float(run.score)
        metrics.setdefault(run.task, set()).add(run.primary_metric)
        if run.oracle:
            oracle_rows.add(key)
    rows = sorted({k for k, _ in by_cell}, key=lambda k: row_sort_key(k, factors))
    cells = {ck: summarize(list(draws.values())) for ck, draws in by_cell.items()}
    averages: dict[tuple, CellStats] = {}
    for key in rows:
        if len(tasks) < 2 or any((key, t) not in cells for t in tasks):
            continue
        mean = statistics.fmean(cells[(key, t)].mean for t in tasks)
        common = set.intersection(*(set(by_cell[(key, t)]) for t in tasks))
        per_draw = [statistics.fmean(by_cell[(key, t)][d] for t in tasks) for d in sorted(common)]
        std = statistics.stdev(per_draw) if len(per_draw) > 1 else None
        averages[key] = CellStats(mean, std, len(per_draw))
    return ResultGrid(list(factors), tasks, rows, cells, averages, oracle_rows, metrics)


def table_name(factors: Sequence[Factor]) -> tuple[str, str]:
    """File stem and title of the results table for these row factors."""
    if not factors:
        return "results", "Results"
    if len(factors) == 1 and factors[0].paper:
        f = factors[0]
        stem = re.sub(r"[^a-z0-9]+", "", f.paper.lower())
        return f"{stem}_{f.key}", f"{f.paper} layout: primary metric (%) by {f.title}"
    keys = "_x_".join(re.sub(r"[^A-Za-z0-9]+", "_", f.key).strip("_") for f in factors)
    titles = " x ".join(f.title for f in factors)
    papers = ", ".join(f.paper for f in factors if f.paper)
    return f"results_{keys}", f"Primary metric (%) by {titles}" + (f" ({papers})" if papers else "")


def _best_rows(grid: ResultGrid) -> dict[str, set[tuple]]:
    """Per task (and ``avg``): the non-oracle rows with the highest mean (bolded when there are several rows)."""
    best: dict[str, set[tuple]] = {}
    if len(grid.rows) < 2:
        return best
    columns = [(t, {k: grid.cells.get((k, t)) for k in grid.rows}) for t in grid.tasks]
    columns.append(("avg", {k: grid.averages.get(k) for k in grid.rows}))
    for name, col in columns:
        vals = {k: c.mean for k, c in col.items() if c is not None and k not in grid.oracle_rows}
        if vals:
            top = max(vals.values())
            winners = {k for k, v in vals.items() if math.isclose(v, top, abs_tol=1e-9)}
            if len(winners) < len(vals):  # a tie of every row marks nothing
                best[name] = winners
    return best


def results_table(grid: ResultGrid, runs: Sequence[RunRecord], fixed: dict[str, str], name: str, title: str) -> Table:
    """The paper-layout table of a grid (markdown cells ``mean ± std (n)``, CSV ``<task>_mean/_std/_n``).

    Args:
        grid: The aggregated runs.
        runs: The runs (for method labels).
        fixed: Settings shared by every run (printed under the table).
        name: File stem.
        title: Heading.
    """
    has_avg = len(grid.tasks) > 1
    columns = [f.title for f in grid.factors] + [task_title(t) for t in grid.tasks] + (["Avg"] if has_avg else [])
    best = _best_rows(grid)
    rows, csv_rows = [], []
    for key in grid.rows:
        labels = [display_value(f, v, runs) for f, v in zip(grid.factors, key)]
        rec: dict[str, Any] = {}
        for f, v, lab in zip(grid.factors, key, labels):
            rec[f.key] = lab
            if lab != str(v):  # the config value behind a display label (method name)
                rec[f"{f.key}_value"] = v
        rec["oracle"] = key in grid.oracle_rows
        cells = []
        for t in grid.tasks:
            c = grid.cells.get((key, t))
            cells.append(_fmt_cell(c, key in best.get(t, ())))
            rec.update(_csv_cell(t, c))
        if has_avg:
            c = grid.averages.get(key)
            cells.append(_fmt_cell(c, key in best.get("avg", ())))
            rec.update(_csv_cell("avg", c))
        rows.append(labels + cells)
        csv_rows.append(rec)
    notes = [
        "Cells: mean ± sample std of the primary metric in % over draws (data_seed, seed), (number of draws).",
        "Avg: mean of the task means; its ± is over draws present in every task. Bold: best non-oracle row.",
    ]
    metric_names = ", ".join(f"{task_title(t)}: {'/'.join(sorted(grid.metrics[t]))}" for t in grid.tasks)
    notes.append(f"Primary metric per task: {metric_names}.")
    eval_sets = _eval_sets(runs, grid.tasks)
    if eval_sets:
        notes.append(f"Evaluated on: {eval_sets}.")
    if grid.oracle_rows:
        notes.append("[oracle] / (oracle): selected on eval-split labels, an upper reference, not a K-shot method.")
    if fixed:
        notes.append("Fixed in every run: " + ", ".join(f"{k} = {v}" for k, v in fixed.items()) + ".")
    return Table(name, title, columns, rows, csv_rows, notes)


def _split_name(where: Any) -> str:
    """A task_info ``eval_split`` (a local path, or hub arguments) as text."""
    if isinstance(where, dict):
        return " ".join(str(where[k]) for k in ("path", "name", "split") if where.get(k) is not None)
    return str(where)


def _eval_sets(runs: Sequence[RunRecord], tasks: Sequence[str]) -> str:
    """Per task, the eval split(s) and item counts the runs report (``task_info``, ``eval.n``)."""
    parts = []
    for t in tasks:
        seen = sorted(
            {
                (_split_name((r.metrics.get("task_info") or {}).get("eval_split", "")), int(r.eval["n"]))
                for r in runs
                if r.task == t and isinstance(r.eval.get("n"), int)
            }
        )
        if seen:
            desc = "; ".join(f"`{w}`, n = {n}" if w else f"n = {n}" for w, n in seen)
            parts.append(f"{task_title(t)}: {desc}")
    return ", ".join(parts)


def _fmt_cell(c: CellStats | None, bold: bool) -> str:
    if c is None:
        return "—"
    return f"**{c.format()}**" if bold else c.format()


def _csv_cell(prefix: str, c: CellStats | None) -> dict[str, Any]:
    if c is None:
        return {f"{prefix}_mean": "", f"{prefix}_std": "", f"{prefix}_n": 0}
    return {
        f"{prefix}_mean": round(c.mean, 4),
        f"{prefix}_std": "" if c.std is None else round(c.std, 4),
        f"{prefix}_n": c.n,
    }


LONG_COLUMNS = (
    "status",
    "run_dir",
    "task",
    "method",
    "label",
    "oracle",
    "base_model",
    "expert_selection",
    "data_selection",
    "k_shot",
    "num_experts",
    "top_k",
    "budget",
    "moe",
    "encoder",
    "pool",
    "bank",
    "data_seed",
    "seed",
    "metric",
    "score",
    "ci95_low",
    "ci95_high",
    "n",
    "mode",
    "experts",
    "wall_s",
    "sweep_name",
    "overrides",
    "note",
)


def _long_row(run: RunRecord, root: Path, status: str, note: str = "") -> dict[str, Any]:
    m, ev = run.metrics, run.eval
    key = run.primary_metric
    ci = ev.get(f"{key}_ci95") or ["", ""]
    row = {c: m.get(c, "") for c in LONG_COLUMNS}
    row.update(
        status=status,
        run_dir=str(run.run_dir.relative_to(root)) if run.run_dir != root else ".",
        task=run.task,
        method=run.method,
        label=run.label,
        oracle=run.oracle,
        metric=key if ev else "",
        score="" if run.score is None else run.score,
        ci95_low=ci[0],
        ci95_high=ci[1],
        n=ev.get("n", ""),
        mode=ev.get("mode", ""),
        experts=";".join(m.get("experts") or []),
        overrides=" ".join(f"{k}={v}" for k, v in run.overrides.items()),
        note=note,
    )
    return row


def runs_table(collection: RunCollection) -> Table:
    """The long format: one row per run found (evaluated, skipped, incomplete or superseded)."""
    root = collection.root
    entries = [(r, "evaluated", "") for r in collection.evaluated]
    entries += [(r, "skipped", r.skipped or "") for r in collection.skipped]
    entries += [(r, "incomplete", why) for r, why in collection.incomplete]
    entries += [
        (old, "superseded", f"same configuration and draw as {new.run_dir.relative_to(root)}")
        for old, new in collection.superseded
    ]
    entries.sort(key=lambda e: str(e[0].path))
    csv_rows = [_long_row(r, root, s, note) for r, s, note in entries]
    cols = ["status", "run_dir", "task", "label", "data_seed", "seed", "score", "note"]
    md_rows = [
        [str(row[c]) if c != "score" or row[c] == "" else f"{100 * row[c]:.2f}" for c in cols] for row in csv_rows
    ]
    return Table("runs", "Every run", cols, md_rows, csv_rows)
