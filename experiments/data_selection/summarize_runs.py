"""Collect the stats of select_data runs into a markdown table (and copy stats.json + histogram here).

    python experiments/data_selection/summarize_runs.py outputs/multiruns/select_data/<time>/* \
        --copy-to experiments/data_selection/real
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def row(stats: dict) -> str:
    dec = stats["decontamination"]
    sel = stats["selection"]
    sim = stats["similarity"]
    top = ", ".join(f"{k} {v}" for k, v in list(stats["selected_by_source"].items())[:3])
    dropped = f"{dec.get('dropped_total', 0)} ({dec.get('dropped_ngram', 0)} / {dec.get('dropped_embedding', 0)})"
    cells = [
        stats["task"],
        stats["pool"],
        f"{stats['pool_size']:,}",
        dropped,
        f"{stats['pool_after_decontamination']:,}",
        f"{stats['candidates']:,}",
        f"{sel.get('near_duplicate_pairs', 0):,}",
        f"{stats['kept_after_dedup']:,}",
        f"{stats['selected_total_with_kshot']:,}",
        f"{sim['candidates']['min']:.3f} / {sim['selected']['median']:.3f} / {sim['selected']['max']:.3f}",
        top,
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="+", help="run directories holding stats.json")
    ap.add_argument("--copy-to", type=Path, help="copy stats.json and similarity_hist.png to <dir>/<task>/")
    args = ap.parse_args()
    print(
        "| task | pool | pool size | decontaminated (n-gram / embedding hits) | after | C | close pairs | kept "
        "| + K-shot | sim: C-th / median / max | top sources |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in sorted(args.runs):
        f = run / "stats.json"
        if not f.exists():
            continue
        stats = json.loads(f.read_text())
        print(row(stats))
        if args.copy_to:
            dst = args.copy_to / stats["task"]
            dst.mkdir(parents=True, exist_ok=True)
            for name in ("stats.json", "similarity_hist.png"):
                shutil.copy2(run / name, dst / name)


if __name__ == "__main__":
    main()
