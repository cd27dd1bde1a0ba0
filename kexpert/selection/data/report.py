"""Outputs of a data-selection run (docs/method.md §5 and §10.6e): the training file and what it is made of.

- ``selected.jsonl``: the K-shot *plus* the selected pool items (the official script leaves the K-shot out),
  as :class:`~kexpert.data.records.Instruction` rows; ``meta.selection`` holds each item's rank, K-shot
  similarity, nearest K-shot item and strategy scores.
- ``decontaminated.jsonl``: every pool item dropped for overlapping the eval split, with the reason.
- ``dedup_removed.jsonl``: every candidate removed as a near-duplicate, with the item that kept its place.
- ``stats.json``: sizes at each stage, settings and similarity quantiles.
- ``similarity_hist.png``: K-shot similarity of the pool, the candidates and the selected items.

Everything is written atomically.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from kexpert.data.records import Instruction
from kexpert.selection.data.decontamination import DecontaminationResult
from kexpert.selection.data.selectors import Selection
from kexpert.utils.io import atomic_write, write_json, write_jsonl


def quantiles(x: np.ndarray) -> dict[str, float]:
    """Min, quartiles, p90 and max (empty -> {})."""
    if len(x) == 0:
        return {}
    qs = np.quantile(x.astype(np.float64), [0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
    return {k: round(float(v), 4) for k, v in zip(("min", "p25", "median", "p75", "p90", "max"), qs, strict=True)}


def selected_rows(kshot: list[Instruction], pool: list[Instruction], sel: Selection) -> list[dict[str, Any]]:
    """Rows of ``selected.jsonl``: K-shot first, then the selected items by rank.

    Args:
        kshot: The K-shot as instructions.
        pool: The pool that was selected from (indices of ``sel`` point into it).
        sel: The selection.
    """
    rows = []
    for i, it in enumerate(kshot):
        d = it.to_dict()
        d["meta"] = {**d["meta"], "selection": {"role": "kshot", "kshot_index": i}}
        rows.append(d)
    for rank, p in enumerate(sel.indices.tolist()):
        d = pool[p].to_dict()
        info: dict[str, Any] = {"role": "selected", "rank": rank, "score": round(float(sel.scores[p]), 6)}
        if sel.nearest[p] >= 0:
            k = int(sel.nearest[p])
            info["nearest_kshot"] = k
            info["nearest_kshot_id"] = kshot[k].meta.get("id") if k < len(kshot) else None
        for name, values in sel.extra.items():
            if p in values:
                info[name] = round(values[p], 6)
        d["meta"] = {**d["meta"], "selection": info}
        rows.append(d)
    return rows


def plot_histogram(path: Path, scores: np.ndarray, sel: Selection, title: str, bins: int = 60) -> None:
    """K-shot similarity histogram of pool, candidates and selected items (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    lo, hi = float(scores.min()), float(scores.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
    ax.hist(scores, bins=edges, color="0.7", label=f"pool (n={len(scores)})")
    ax.hist(
        scores[sel.candidates], bins=edges, color="tab:blue", alpha=0.7, label=f"candidates (C={len(sel.candidates)})"
    )
    ax.hist(scores[sel.indices], bins=edges, color="tab:orange", alpha=0.8, label=f"selected (n={len(sel.indices)})")
    ax.set_yscale("log")
    ax.set_xlabel(f"similarity to the K-shot ({sel.stats.get('scoring', 'max')})")
    ax.set_ylabel("items (log)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def write_outputs(
    out_dir: str | Path,
    kshot: list[Instruction],
    pool: list[Instruction],
    sel: Selection,
    decon: DecontaminationResult,
    full_pool: list[Instruction],
    stats: dict[str, Any],
    title: str,
) -> dict[str, Path]:
    """Write every output file.

    Args:
        out_dir: Run directory.
        kshot: K-shot items.
        pool: The decontaminated pool (``sel`` indexes it).
        sel: The selection.
        decon: The decontamination result (indexes ``full_pool``).
        full_pool: The pool before decontamination.
        stats: Run statistics (completed here with per-source counts and quantiles, then written).
        title: Histogram title.

    Returns:
        Output name -> path.
    """
    out = Path(out_dir)
    paths = {
        "selected": out / "selected.jsonl",
        "stats": out / "stats.json",
        "histogram": out / "similarity_hist.png",
        "decontaminated": out / "decontaminated.jsonl",
        "dedup_removed": out / "dedup_removed.jsonl",
    }
    write_jsonl(paths["selected"], selected_rows(kshot, pool, sel))
    dropped = []
    for p in np.flatnonzero(~decon.keep).tolist():
        row: dict[str, Any] = {"source": full_pool[p].source, "id": full_pool[p].meta.get("id")}
        if p in decon.ngram_hits:
            row["ngram_eval_index"] = decon.ngram_hits[p]
        if p in decon.embed_hits:
            row["embedding_eval_index"], row["embedding_cosine"] = decon.embed_hits[p]
        row["instruction"] = full_pool[p].instruction[:300]
        dropped.append(row)
    write_jsonl(paths["decontaminated"], dropped)
    write_jsonl(
        paths["dedup_removed"],
        (
            {
                "id": pool[r].meta.get("id"),
                "source": pool[r].source,
                "score": round(float(sel.scores[r]), 6),
                "kept_id": pool[k].meta.get("id"),
                "kept_score": round(float(sel.scores[k]), 6),
            }
            for r, k in sorted(sel.removed_by.items())
        ),
    )
    stats = dict(stats)
    stats["selected_by_source"] = dict(Counter(pool[p].source for p in sel.indices.tolist()).most_common())
    stats["similarity"] = {
        "pool": quantiles(sel.scores),
        "candidates": quantiles(sel.scores[sel.candidates]),
        "selected": quantiles(sel.scores[sel.indices]),
    }
    write_json(paths["stats"], stats)
    plot_histogram(paths["histogram"], sel.scores, sel, title)
    return paths
