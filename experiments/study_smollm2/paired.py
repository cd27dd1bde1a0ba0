"""Paired comparison of every run of one or more sweep dirs against a baseline run on the same eval items.

Two runs evaluated on the same deterministic eval subset can be compared item by item: the discordant items (one
right, the other wrong) decide, and an exact two-sided sign test (McNemar) on them says whether the difference is
more than chance. That is far more sensitive than comparing two independent 95% intervals.

    python experiments/study_smollm2/paired.py outputs/sweeps/main_table_arc_e --baseline-dir outputs/runs/arc_e/<base>

Run dirs are found recursively (a sweep dir with nested sweeps in subfolders is one argument). Each run is paired
with the baseline run of its own K-shot draw (``data_seed``): a run whose ``metrics.json`` has
``<--key> == --baseline`` (default: ``method == base``), taken from the sweep dirs or, when ``--baseline-dir`` is
given, only from those dirs (run or sweep dirs). An ablation compares against one of its own rows, e.g.
``--key expert_selection --baseline rocket`` or ``--key k_shot --baseline 50``; two sweeps of the same methods
compare draw by draw, e.g. the same method at another learning rate:

    python experiments/study_smollm2/paired.py outputs/sweeps/paper_lr_arc_e --baseline rocket \
        --baseline-dir outputs/sweeps/main_table_arc_e

Prints a markdown table; ``--out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from kexpert.report.factors import ignored_override
from kexpert.report.runs import find_metrics_files, read_overrides


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided binomial p-value of ``wins`` vs ``losses`` under p = 1/2 (McNemar's exact test)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def load_run(run_dir: Path) -> tuple[dict, dict[str, bool]] | None:
    """``(metrics, {item id: correct})`` of an evaluated run, else ``None``."""
    mpath, ppath = run_dir / "metrics.json", run_dir / "predictions.jsonl"
    if not (mpath.exists() and ppath.exists()):
        return None
    metrics = json.loads(mpath.read_text())
    if "score" not in metrics:
        return None
    metrics["_overrides"] = read_overrides(run_dir)
    correct = {}
    with ppath.open() as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                correct[str(row["id"])] = bool(row["correct"])
            except (json.JSONDecodeError, KeyError) as e:
                raise SystemExit(f"{ppath}:{lineno}: expected a JSON object with 'id' and 'correct' ({e})") from e
    return metrics, correct


def run_dirs(dirs: list[Path]) -> list[Path]:
    """Every dir holding a ``metrics.json`` under ``dirs`` (searched recursively), sorted, each once."""
    for d in dirs:
        if not d.is_dir():
            raise SystemExit(f"{d}: not a directory")
    return sorted({m.parent for d in dirs for m in find_metrics_files(d)})


def emit(lines: list[str], out: Path | None) -> None:
    """Print a markdown table and, with ``out``, also write it there."""
    text = "\n".join(lines)
    if out:
        out.write_text(text + "\n")
    print(text)


def varying_overrides(metrics: list[dict]) -> set[str]:
    """Command-line overrides that differ between runs and that no factor of the report already covers."""
    keys = {k for m in metrics for k in m["_overrides"] if not ignored_override(k)}
    return {k for k in keys if len({m["_overrides"].get(k) for m in metrics}) > 1}


def describe(m: dict, varying: set[str] = frozenset()) -> str:
    """A short label of a run: method plus the factors an ablation varies (MoE knobs only for MoE runs)."""
    parts = [m.get("label") or m.get("method", "?")]
    is_moe = bool((m.get("method_info") or {}).get("moe"))
    trained_on_data = "selected_items" in m or m.get("budget") == 0
    bank_experts = is_moe and (m["method_info"]["moe"].get("expert_init", "bank") == "bank")
    factors = [("expert_selection", "experts")] if bank_experts else []
    factors += [("k_shot", "K")] + ([("data_selection", "data"), ("budget", "C")] if trained_on_data else [])
    factors += [("top_k", "k"), ("num_experts", "N")] if is_moe else []
    for key, short in factors:
        if key in m:
            parts.append(f"{short}={m[key]}")
    if is_moe and m.get("moe", "lora_moe") != "lora_moe":
        parts.append(f"moe={m['moe']}")
    parts += [f"{k}={m['_overrides'][k]}" for k in sorted(varying & m["_overrides"].keys())]
    return " ".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Print the paired table (``argv``: the command-line arguments, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dirs", nargs="+", type=Path, help="run or multirun dirs, searched recursively")
    ap.add_argument("--key", default="method", help="metrics.json field that names the baseline (default: method)")
    ap.add_argument("--baseline", default="base", help="value of --key of the baseline run (default: base)")
    ap.add_argument(
        "--baseline-dir",
        type=Path,
        nargs="+",
        default=None,
        help="run or sweep dirs (searched recursively) that hold the baseline runs; then only these are baselines",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    runs = [(p, r) for p in run_dirs(args.sweep_dirs) if (r := load_run(p)) is not None]
    varying = varying_overrides([m for _, (m, _) in runs])
    base_pool = list(runs)
    if args.baseline_dir is not None:
        base_pool = [(p, r) for p in run_dirs(args.baseline_dir) if (r := load_run(p)) is not None]
        if not base_pool:
            raise SystemExit(f"{args.baseline_dir}: no evaluated run (metrics.json with a score + predictions.jsonl)")
    base_paths = {p for p, _ in base_pool}

    def is_base(m: dict) -> bool:
        return str(m.get(args.key)) == args.baseline

    bases = [(p, r) for p, r in base_pool if is_base(r[0])]
    if not bases:
        where = args.baseline_dir or args.sweep_dirs
        raise SystemExit(f"no run with {args.key}={args.baseline!r} in {[str(d) for d in where]}")
    by_draw: dict = {}
    for p, r in bases:
        draw = r[0].get("data_seed")
        if draw in by_draw:
            print(f"note: draw {draw}: several baseline runs; using {by_draw[draw][0]}, not {p}", file=sys.stderr)
            continue
        by_draw[draw] = (p, r)
    bpath, (bm, bc) = bases[0]
    lines = [
        f"Baseline: {bm.get('label') or bm.get('method')} ({bpath}), acc {100 * bm['score']:.1f} on n={len(bc)}; "
        "each run is paired with the baseline run of the same K-shot draw where there is one.",
        "",
        "| run | draw | acc | baseline acc on the same items | wins | losses | sign-test p |",
        "|---|---|---|---|---|---|---|",
    ]
    for _path, (m, c) in sorted(runs, key=lambda x: (describe(x[1][0], varying), x[1][0].get("data_seed", 0))):
        if _path in base_paths and is_base(m):
            continue
        _, (_, bc) = by_draw.get(m.get("data_seed"), bases[0])
        common = sorted(set(c) & set(bc))
        if not common:
            continue
        wins = sum(c[i] and not bc[i] for i in common)
        losses = sum(bc[i] and not c[i] for i in common)
        acc = 100 * sum(c[i] for i in common) / len(common)
        bacc = 100 * sum(bc[i] for i in common) / len(common)
        p = sign_test_p(wins, losses)
        oracle = " [ORACLE]" if m.get("oracle") else ""
        draw = m.get("data_seed", "")
        lines.append(
            f"| {describe(m, varying)}{oracle} | {draw} | {acc:.1f} | {bacc:.1f} | {wins} | {losses} | {p:.3f} |"
        )
    emit(lines, args.out)


if __name__ == "__main__":
    main()
