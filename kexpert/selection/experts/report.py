"""The expert-selection report: ``experts.json``, the reasoning-perplexity vs accuracy scatter, logger output.

``experts.json`` holds every bank LoRA's K-shot signals and per-signal ranks over the bank (plus the base model
for reference), the strategy's rank sums, candidates and chosen group with its diversity (docs/method.md §3.3-3.4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kexpert.selection.experts.base import ExpertSelection, SelectionContext
from kexpert.selection.experts.rank_fusion import HIGHER_IS_BETTER, competition_rank
from kexpert.selection.experts.signals import BASE
from kexpert.utils.io import atomic_write
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


def build_report(ctx: SelectionContext, selection: ExpertSelection, diversity_cfg, extra: dict[str, Any]) -> dict:
    """The ``experts.json`` document.

    Args:
        ctx: The selection context (its computed signals are reported).
        selection: The selector's result.
        diversity_cfg: Similarity settings for the chosen group's diversity.
        extra: Run information merged at the top level (task, K, seeds, config, provenance).
    """
    names = ctx.bank.names()
    signals = {s: d for s, d in ctx.signal_details.items()}
    ranks = {s: competition_rank([signals[s][n]["value"] for n in names], HIGHER_IS_BETTER[s]) for s in signals}
    entries = []
    for i, n in enumerate(names):
        e = ctx.bank[n]
        entries.append(
            {
                "name": n,
                "signals": {s: signals[s][n]["value"] for s in signals},
                "ranks": {s: int(ranks[s][i]) for s in signals},
                "rank_sum": selection.rank_sum.get(n),
                "candidate": n in selection.candidates,
                "chosen": n in selection.chosen,
                "expert_lora_for": e.expert_lora_for,
                "sha256": e.sha256,
            }
        )
    base = {s: signals[s][BASE]["value"] for s in signals if BASE in signals[s]}
    group = (
        {**ctx.group_diversity(selection.chosen, diversity_cfg), **selection.group}
        if len(selection.chosen) > 1
        else dict(selection.group)
    )
    sim = ctx.similarity(diversity_cfg, progress=False)
    return {
        **extra,
        "strategy": selection.strategy,
        "oracle": selection.oracle,
        "chosen": selection.chosen,
        "group": group,
        "candidates": selection.candidates,
        "notes": selection.notes,
        "bank": {"name": ctx.bank.name, "root": str(ctx.bank.root), "size": len(ctx.bank)},
        "kshot_ids": [ex.id for ex in ctx.kshot],
        "base_model_signals": base,
        "entries": entries,
        "per_example": {s: {n: signals[s][n].get("per_example") for n in signals[s]} for s in signals},
        "similarity": {
            "names": names,
            "quantity": diversity_cfg.quantity,
            "absolute": diversity_cfg.absolute,
            "matrix": np.round(sim, 6).tolist(),
        },
        "timings_s": {k: round(v, 3) for k, v in ctx.scorer.timings.items()},
    }


def scatter_png(report: dict[str, Any], path: Path) -> Path | None:
    """Reasoning perplexity (x, log scale) vs K-shot accuracy (y), chosen experts marked; ``None`` if unavailable."""
    entries = report["entries"]
    if not entries or not all("reasoning_ppl" in e["signals"] and "accuracy" in e["signals"] for e in entries):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for kind, style in (
        ("other", dict(c="0.6", marker="o")),
        ("candidate", dict(c="tab:blue", marker="s")),
        ("chosen", dict(c="tab:red", marker="*", s=160)),
    ):
        sel = [
            e
            for e in entries
            if (
                e["chosen"]
                if kind == "chosen"
                else (e["candidate"] and not e["chosen"])
                if kind == "candidate"
                else not (e["chosen"] or e["candidate"])
            )
        ]
        if sel:
            ax.scatter(
                [e["signals"]["reasoning_ppl"] for e in sel],
                [e["signals"]["accuracy"] for e in sel],
                label=kind,
                zorder=3,
                **style,
            )
        for e in sel:
            ax.annotate(
                e["name"],
                (e["signals"]["reasoning_ppl"], e["signals"]["accuracy"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    base = report.get("base_model_signals", {})
    if "reasoning_ppl" in base and "accuracy" in base:
        ax.scatter([base["reasoning_ppl"]], [base["accuracy"]], c="k", marker="x", label="base model", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("K-shot reasoning perplexity (lower is better)")
    ax.set_ylabel("K-shot accuracy")
    ax.set_title(f"{report.get('task')}: {report['strategy']} (K={report.get('k_shot')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


def log_to_loggers(loggers: list, report: dict[str, Any], png: Path | None) -> None:
    """Send the selection to every configured Lightning logger (hyper-parameters, per-LoRA metrics, figure)."""
    for lg in loggers:
        lg.log_hyperparams(
            {
                "expert_selection/strategy": report["strategy"],
                "expert_selection/oracle": report["oracle"],
                "expert_selection/chosen": ",".join(report["chosen"]),
            }
        )
        metrics = {f"selection/{e['name']}/{s}": float(v) for e in report["entries"] for s, v in e["signals"].items()}
        if report["group"].get("mean_similarity") is not None:
            metrics["selection/group_mean_similarity"] = float(report["group"]["mean_similarity"])
        lg.log_metrics(metrics)
        if png is not None:
            if hasattr(lg, "log_image"):
                lg.log_image(key="selection/scatter", images=[str(png)])
            elif hasattr(getattr(lg, "experiment", None), "add_image"):
                import matplotlib.image as mpimg

                img = mpimg.imread(str(png))[..., :3]
                lg.experiment.add_image("selection/scatter", img, dataformats="HWC")
        if hasattr(lg, "save"):
            lg.save()
