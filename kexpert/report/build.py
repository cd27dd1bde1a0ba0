"""Build the results report of a multirun (docs/method.md §8): tables in the paper's layouts, plots, and an index.

``build_report(sweep_dir)`` writes, under ``<sweep_dir>/report`` by default::

    report.md                      index: every table (embedded) and plot, and the command that made them
    tables/<results>.md|.csv       Table 1/2/3/4/6/7 layout (rows = the factors the sweep varies)
    tables/runs.csv|.md            every run, long format (evaluated, skipped, incomplete, superseded)
    tables/table5_expert_agreement runs with per_expert data (Table 5)
    tables/routing_mean            mean expert activation of the MoE runs (Fig. 7)
    tables/stage_timing            per-stage wall time and cache reuse
    plots/*.png                    curves vs K / N / k / C, routing heatmaps, expert-agreement bars
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kexpert.report.agreement import agreement_groups, agreement_table
from kexpert.report.factors import MAIN_FACTORS, Factor, dedupe, fixed_settings, varying_factors
from kexpert.report.plots import plot_agreement, plot_curve, plot_routing
from kexpert.report.routing import routing_groups, routing_table
from kexpert.report.runs import RunCollection, collect_runs
from kexpert.report.tables import Table, results_grid, results_table, runs_table, table_name, write_table
from kexpert.report.timing import timing_table
from kexpert.report.wandb_log import log_report
from kexpert.utils.errors import DataError
from kexpert.utils.io import atomic_write
from kexpert.utils.logging import get_logger

log = get_logger(__name__)
CURVE_FACTORS = ("k_shot", "num_experts", "top_k", "budget")
NOTES_FILE = "NOTES.md"  # hand-written notes in the sweep dir, kept in report.md across rebuilds
MAX_INLINE_RUNS = 40  # report.md embeds the run list up to this many runs (always in tables/runs.csv)


@dataclass
class Report:
    """What :func:`build_report` wrote.

    Attributes:
        out_dir: The report dir.
        index: ``report.md``.
        collection: The runs it read.
        factors: The row factors detected.
        tables: ``name -> Table``.
        table_files: ``name -> {"md": path, "csv": path}``.
        plots: ``name -> PNG path``.
        wandb: The W&B run info when logged.
        notes: The text of the source dir's ``NOTES.md``, when it has one.
    """

    out_dir: Path
    index: Path
    collection: RunCollection
    factors: list[Factor]
    tables: dict[str, Table] = field(default_factory=dict)
    table_files: dict[str, dict[str, Path]] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    wandb: dict[str, Any] | None = None
    notes: str | None = None


def _slug(text: str) -> str:
    """A file-name part for ``text``; the dagger of the "with D_A" rows (``MixLoRA†``) is spelled out."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text.replace("\u2020", "_dagger")).strip("_").lower() or "all"


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... if an earlier plot of the same report has it (two labels, one slug)."""
    out, i = name, 1
    while out in taken:
        i += 1
        out = f"{name}_{i}"
    taken.add(out)
    return out


def _add_table(report: Report, table: Table) -> None:
    report.tables[table.name] = table
    report.table_files[table.name] = write_table(table, report.out_dir / "tables")


def _write_results(report: Report) -> str:
    """The results table, the curves, Table 5 and the routing of the evaluated runs; returns the results' name."""
    runs, factors, plots_dir = report.collection.evaluated, report.factors, report.out_dir / "plots"
    row_factors = factors or [next(f for f in MAIN_FACTORS if f.key == "method")]
    row_title = " / ".join(f.title for f in row_factors)
    grid = results_grid(runs, row_factors)
    results_name, title = table_name(factors)
    _add_table(report, results_table(grid, runs, fixed_settings(runs), results_name, title))
    for f in factors:
        if f.key in CURVE_FACTORS and f.source == "metrics":
            report.plots[f"metric_vs_{f.key}"] = plot_curve(grid, f, runs, plots_dir / f"metric_vs_{f.key}.png")
    agree = agreement_groups(runs, row_factors)
    if agree:
        _add_table(report, agreement_table(agree, row_title))
        report.plots["table5_expert_agreement"] = plot_agreement(agree, plots_dir / "table5_expert_agreement.png")
    routes = routing_groups(runs, row_factors)
    if routes:
        _add_table(report, routing_table(routes, row_title))
        taken: set[str] = set()
        for g in routes:
            name = _unique(f"routing_{g.task}_{_slug(g.row_label)}", taken)
            report.plots[name] = plot_routing(g, plots_dir / f"{name}.png")
    return results_name


def build_report(
    sweep_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    use_wandb: bool = False,
    command: str | None = None,
    progress: bool = False,
) -> Report:
    """Collect every run under ``sweep_dir`` and write the report.

    Args:
        sweep_dir: A multirun dir (or a parent of several).
        out_dir: Report dir (default ``<sweep_dir>/report``).
        use_wandb: Also log the tables and plots to one W&B run.
        command: The command line to print in ``report.md`` (default: the equivalent ``python -m`` call).
        progress: Progress bars.

    A ``NOTES.md`` in ``sweep_dir`` (hand-written remarks on the runs) is copied into ``report.md`` under
    "Notes", so a rebuilt report keeps them; its links are read relative to the report dir.

    Returns:
        The :class:`Report`.

    Raises:
        DataError: no ``metrics.json`` under ``sweep_dir``, a malformed run file, or a ``NOTES.md`` that is not
            UTF-8 text.
    """
    root = Path(sweep_dir)
    out = Path(out_dir) if out_dir is not None else root / "report"
    command = command or f"python -m kexpert.report {root}" + (f" --out {out}" if out_dir else "")
    collection = collect_runs(root, progress=progress)
    factors = varying_factors(collection.evaluated)
    collection = dedupe(collection, factors)
    runs = collection.evaluated
    report = Report(out, out / "report.md", collection, factors, notes=_read_notes(root / NOTES_FILE))
    results_name = _write_results(report) if runs else None
    timed = [*runs, *(r for r, _ in collection.incomplete)]
    if timed:
        _add_table(report, timing_table(timed))
    _add_table(report, runs_table(collection))
    if use_wandb:
        config = {
            "sweep_dir": str(root),
            "command": command,
            "factors": [f.key for f in factors],
            "runs": len(runs),
            "skipped": len(collection.skipped),
        }
        report.wandb = log_report(
            report.tables, report.plots, group=collection.sweep_name, save_dir=out, config=config
        )
    with atomic_write(report.index) as f:
        f.write(_index_markdown(report, results_name, command))
    log.info("report: %s (%d tables, %d plots)", report.index, len(report.tables), len(report.plots))
    return report


def _read_notes(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: expected UTF-8 markdown notes ({e.reason} at byte {e.start})") from e


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base).replace(os.sep, "/")


def _links(report: Report, name: str) -> str:
    files = report.table_files[name]
    return f"[markdown]({_rel(files['md'], report.out_dir)}) · [CSV]({_rel(files['csv'], report.out_dir)})"


def _section(report: Report, name: str, heading: str) -> list[str]:
    if name not in report.tables:
        return []
    t = report.tables[name]
    return [f"## {heading}", "", f"{t.title}. {_links(report, name)}", "", t.to_markdown()]


def _header_lines(report: Report, command: str) -> list[str]:
    c = report.collection
    lines = [
        f"# Results report: {c.sweep_name}",
        "",
        f"Produced by `{command}`",
        "",
        f"Source: `{c.root}`: {len(c.all_runs)} runs found: {len(c.evaluated)} evaluated, {len(c.skipped)} "
        f"skipped, {len(c.incomplete)} incomplete, {len(c.superseded)} superseded (a repeated configuration "
        "and draw; the newest is kept).",
        "",
    ]
    if report.factors:
        named = ", ".join(f"{f.title}" + (f" ({f.paper})" if f.paper else "") for f in report.factors)
        lines += [f"Row factors (vary across runs): {named}.", ""]
    elif c.evaluated:
        lines += ["No factor varies across runs: one row, averaged over the draws.", ""]
    draws = sorted({r.draw for r in c.evaluated})
    if draws:
        lines += [f"Draws (data_seed, seed): {', '.join(str(d) for d in draws)}.", ""]
    return lines


def _cell(text: object) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|")


def _images(report: Report, prefix: str) -> list[str]:
    return [f"![{n}]({_rel(p, report.out_dir)})" for n, p in report.plots.items() if n.startswith(prefix)]


def _analysis_lines(report: Report, results_name: str | None) -> list[str]:
    lines = _section(report, results_name, "Results") if results_name else []
    if curves := _images(report, "metric_vs_"):
        lines += ["## Ablation curves", "", *curves, ""]
    lines += _section(report, "table5_expert_agreement", "Expert agreement (Table 5, Fig. 11)")
    if agreement := _images(report, "table5_expert_agreement"):
        lines += [*agreement, ""]
    if "routing_mean" in report.tables:
        link = f"{report.tables['routing_mean'].title}. {_links(report, 'routing_mean')}"
        lines += ["## Expert activation (Fig. 7)", "", link, "", *_images(report, "routing_"), ""]
    lines += _section(report, "stage_timing", "Stage wall time and cache reuse")
    return lines


def _run_list_lines(report: Report) -> list[str]:
    c = report.collection
    lines = ["## Every run", "", f"Long format, one row per run: {_links(report, 'runs')}", ""]
    if len(report.tables["runs"].rows) <= MAX_INLINE_RUNS:
        lines += [report.tables["runs"].to_markdown()]
    lists = [
        ("Skipped runs", ("run", "reason"), [(r.run_dir, r.skipped or "") for r in c.skipped]),
        ("Incomplete runs", ("run", "reason"), [(r.run_dir, why) for r, why in c.incomplete]),
        (
            "Superseded runs",
            ("ignored", "kept (newer)"),
            [(o.run_dir, f"`{_rel(n.run_dir, c.root)}`") for o, n in c.superseded],
        ),
    ]
    for heading, (col1, col2), items in lists:
        if items:
            lines += [f"## {heading}", "", f"| {col1} | {col2} |", "|---|---|"]
            lines += [f"| `{_rel(d, c.root)}` | {_cell(text)} |" for d, text in items]
            lines.append("")
    return lines


def _index_markdown(report: Report, results_name: str | None, command: str) -> str:
    lines = _header_lines(report, command)
    if report.notes:
        lines += ["## Notes", "", f"From `{NOTES_FILE}` in the source dir.", "", report.notes, ""]
    lines += _analysis_lines(report, results_name) + _run_list_lines(report)
    if report.wandb is not None:
        w = report.wandb
        where = w.get("url") or (f"`{_rel(Path(w['dir']), report.out_dir)}`" if w.get("dir") else "")
        lines += [f"Logged to W&B ({w['mode']}, project kexpert, group {report.collection.sweep_name}): {where}", ""]
    elif report.collection.evaluated:
        lines += [f"Log to W&B: `{command} --wandb`", ""]
    return "\n".join(lines).rstrip() + "\n"
