"""PNG figures of the report (matplotlib, Agg backend), written atomically.

Ablation curves (Tables 4, 6, 7 and Fig. 9 as lines), the expert-activation heatmaps (Fig. 7) and the
expert-agreement bars (Table 5 / Fig. 11).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from kexpert.report.agreement import AgreementGroup
from kexpert.report.factors import Factor, display_value, task_sort_key, task_title
from kexpert.report.routing import RoutingGroup, short_layer_name
from kexpert.report.runs import RunRecord
from kexpert.report.tables import ResultGrid
from kexpert.utils.io import atomic_write

MAX_ANNOTATED_CELLS = 256  # heatmaps with at most this many cells print their values


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


def plot_curve(grid: ResultGrid, factor: Factor, runs: Sequence[RunRecord], path: str | Path) -> Path:
    """Primary metric (%) against a numeric factor: one line per task and value of the other row factors.

    Error bars are the sample std over draws; ``Avg`` lines are the task averages (rows covering every task).

    Args:
        grid: The aggregated results (``factor`` must be one of its row factors).
        factor: The x axis (``k_shot``, ``num_experts``, ``top_k`` or ``budget``).
        runs: The runs (for labels of the other factors).
        path: Output PNG.
    """
    plt = _pyplot()
    idx = grid.factors.index(factor)
    others = [(i, f) for i, f in enumerate(grid.factors) if i != idx]
    series: dict[tuple[str, tuple], list[tuple[float, float, float]]] = {}
    for row in grid.rows:
        x = float(row[idx])
        rest = tuple(row[i] for i, _ in others)
        for task in grid.tasks:
            c = grid.cells.get((row, task))
            if c is not None:
                series.setdefault((task, rest), []).append((x, c.mean, c.std or 0.0))
        avg = grid.averages.get(row)
        if avg is not None:
            series.setdefault(("Avg", rest), []).append((x, avg.mean, avg.std or 0.0))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))

    def order(item: tuple) -> tuple:
        (task, rest), _ = item
        return (task == "Avg", task_sort_key(task), tuple(f.sort_key(v) for (_, f), v in zip(others, rest)))

    for (task, rest), pts in sorted(series.items(), key=order):
        pts.sort()
        label = task_title(task) if task != "Avg" else "Avg"
        if rest:
            label += " (" + ", ".join(display_value(f, v, runs) for (_, f), v in zip(others, rest)) + ")"
        style: dict = {}
        if task == "Avg":
            style = {"linestyle": "--", "color": "black"} if not others else {"linestyle": "--"}
        ax.errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            yerr=[p[2] for p in pts],
            marker="o",
            capsize=3,
            label=label,
            **style,
        )
    xs = sorted({float(r[idx]) for r in grid.rows})
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    if len(xs) > 2 and xs[0] > 0 and xs[-1] / xs[0] >= 20:
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
    ax.set_xlabel(factor.title + (f"  ({factor.paper})" if factor.paper else ""))
    ax.set_ylabel("primary metric (%)")
    ax.set_title(f"Primary metric vs {factor.title} (mean ± std over draws)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, Path(path))


def plot_routing(group: RoutingGroup, path: str | Path) -> Path:
    """Layers x experts heatmap of the mean routing fractions of one (row, task)."""
    plt = _pyplot()
    n_exp, n_layers = len(group.expert_labels), len(group.layers)
    fig, ax = plt.subplots(figsize=(1.4 * n_exp + 2.5, max(3.0, 0.22 * n_layers + 1.5)))
    vmax = max(1.0, max((v for row in group.fractions for v in row), default=1.0))
    im = ax.imshow(group.fractions, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
    ax.set_xticks(range(n_exp), group.expert_labels, rotation=30, ha="right")
    ax.set_yticks(range(n_layers), [short_layer_name(p) for p in group.layers], fontsize=7)
    ax.set_title(f"{group.title}\nmean fraction of tokens routed ({group.runs} run(s), top-{group.top_k})", fontsize=9)
    if n_layers * n_exp <= MAX_ANNOTATED_CELLS:
        for li, row in enumerate(group.fractions):
            for e, v in enumerate(row):
                ax.text(
                    e,
                    li,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v < 0.6 * vmax else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.05)
    return _save(fig, Path(path))


def plot_agreement(groups: Sequence[AgreementGroup], path: str | Path) -> Path:
    """Grouped bars: bucket counts per (row, task) (Fig. 11), and error rates on Mixed items (Table 5)."""
    plt = _pyplot()
    labels = [task_title(g.task) + (f"\n{g.row_label}" if g.row_label else "") for g in groups]
    n_max = max(len(g.stats.expert_errors) for g in groups)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(9.0, 2.2 * len(groups) + 5), 4.2))
    buckets = [("All Correct", "all_correct"), ("All Incorrect", "all_incorrect"), ("Mixed", "mixed")]
    width = 0.8 / len(buckets)
    for b, (name, attr) in enumerate(buckets):
        ax1.bar(
            [i + (b - 1) * width for i in range(len(groups))],
            [getattr(g.stats, attr) for g in groups],
            width,
            label=name,
        )
    ax1.set_xticks(range(len(groups)), labels, fontsize=8)
    ax1.set_ylabel("eval items")
    ax1.set_title("Items by expert agreement", fontsize=10)
    ax1.legend(fontsize=8)
    names = [f"Expert {i + 1}" for i in range(n_max)] + ["MoE"]
    width = 0.8 / len(names)
    for s, name in enumerate(names):
        vals = []
        for g in groups:
            errs = g.stats.expert_errors
            e = g.stats.moe_errors if name == "MoE" else (errs[s] if s < len(errs) else None)
            rate = None if e is None else g.stats.error_rate(e)
            vals.append(math.nan if rate is None else 100 * rate)
        offset = (s - (len(names) - 1) / 2) * width
        ax2.bar(
            [i + offset for i in range(len(groups))],
            vals,
            width,
            label=name,
            **({"color": "black"} if name == "MoE" else {}),
        )
    ax2.set_xticks(range(len(groups)), labels, fontsize=8)
    ax2.set_ylabel("error rate on Mixed items (%)")
    ax2.set_ylim(0, 100)
    ax2.set_title("Error rates on Mixed items", fontsize=10)
    ax2.legend(fontsize=8)
    return _save(fig, Path(path))
