"""Threshold-free check of a two-choice (yes/no) task: can a model tell the answers apart at all?

Accuracy on BoolQ mixes two things: how well the model separates "yes" items from "no" items, and where its
yes/no bias puts the threshold. This prints, per evaluated run under the given dirs (searched recursively), the
accuracy, the share of "yes" (first-choice) predictions, and the ROC AUC of ``loglik[0] - loglik[1]`` against the
gold answer: 0.5 means the scores carry no information about the answer, whatever the accuracy.

    python experiments/study_smollm2/binary_auc.py outputs/sweeps/main_table_boolq
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from paired import emit, run_dirs  # the script's own folder is on sys.path


def roc_auc(pos: list[float], neg: list[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half; Mann-Whitney U)."""
    if not pos or not neg:
        raise ValueError("roc_auc needs at least one positive and one negative item")
    scored = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(scored):
        j = i
        while j < len(scored) and scored[j][0] == scored[i][0]:
            j += 1
        mid_rank = (i + 1 + j) / 2  # average 1-based rank of the tied block
        rank_sum += mid_rank * sum(label for _, label in scored[i:j])
        i = j
    n_pos, n_neg = len(pos), len(neg)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def run_row(run_dir: Path) -> str | None:
    """One markdown row for an evaluated two-choice run, else ``None``."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ppath = run_dir / "predictions.jsonl"
    if "score" not in metrics or not ppath.exists():
        return None
    pos, neg, first = [], [], 0
    with ppath.open() as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                a, b = row["loglik"]
                gold, pred = row["gold"], row["pred"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise SystemExit(f"{ppath}:{lineno}: expected 'gold', 'pred' and a two-item 'loglik' ({e})") from e
            (pos if gold == "A" else neg).append(a - b)
            first += pred == "A"
    n = len(pos) + len(neg)
    label = metrics.get("label") or metrics.get("method", "?")
    return (
        f"| {label} | {metrics.get('data_seed', '')} | {100 * metrics['score']:.1f} | {100 * first / n:.0f}% | "
        f"{100 * len(pos) / n:.0f}% | {roc_auc(pos, neg):.3f} |"
    )


def main() -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path, help="run or multirun dirs, searched recursively")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    lines = ["| run | draw | acc | predicted first choice | gold first choice | AUC |", "|---|---|---|---|---|---|"]
    lines += [row for r in run_dirs(args.dirs) if (row := run_row(r)) is not None]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
