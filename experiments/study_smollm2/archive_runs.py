"""Keep what the study's tables need from a sweep folder, small enough to commit beside the write-up.

``outputs/`` is git-ignored and does not survive a fresh machine, and re-creating a run's predictions means re-running
it. This copies, for every run under ``SRC`` (found by its ``metrics.json``, recursively): ``metrics.json``, the
resolved Hydra config and overrides, ``routing/routing.json`` of a MoE run (the report's routing table and heatmaps
read it: the path recorded in ``metrics.json`` first, then ``<run dir>/routing/routing.json``, which is the copy's),
and ``predictions.jsonl`` cut down to ``id``, ``correct`` and ``pred`` (no prompt, passage or generated text, so no
task data), into the same relative folders under ``DST``.
``paired.py`` and ``python -m kexpert.report`` read the copy as they read the original:

    python experiments/study_smollm2/archive_runs.py outputs/sweeps/lorahub experiments/study_smollm2/lorahub/runs

Each file is written to a temporary name and renamed into place, so an interrupted copy leaves no half file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kexpert.utils.io import atomic_write

HYDRA_FILES = (".hydra/config.yaml", ".hydra/overrides.yaml")
ROUTING_FILE = "routing/routing.json"


def _write_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def slim_predictions(src: Path) -> str:
    """``predictions.jsonl`` with only ``id``, ``correct`` and ``pred`` per row; a bad line names the file and line."""
    out = []
    with src.open() as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                slim = {"id": row["id"], "correct": row["correct"]}
                if "pred" in row:
                    slim["pred"] = row["pred"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SystemExit(f"{src}:{lineno}: expected a JSON object with 'id' and 'correct' ({e!r})") from e
            out.append(json.dumps(slim) + "\n")
    return "".join(out)


def archive(src: Path, dst: Path) -> list[Path]:
    """Copy every run under ``src`` into ``dst``; returns the run dirs written (relative to ``dst``)."""
    if not src.is_dir():
        raise SystemExit(f"{src}: not a directory")
    runs = sorted(m.parent for m in src.rglob("metrics.json") if dst.resolve() not in m.resolve().parents)
    if not runs:
        raise SystemExit(f"{src}: no run (no metrics.json under it)")
    written = []
    for run in runs:
        rel = run.relative_to(src)
        target = dst / rel
        metrics = (run / "metrics.json").read_text()
        json.loads(metrics)  # fail on a broken file before copying anything of it
        preds = run / "predictions.jsonl"
        if preds.exists():
            _write_atomic(target / "predictions.jsonl", slim_predictions(preds))
        for name in HYDRA_FILES:
            if (run / name).exists():
                _write_atomic(target / name, (run / name).read_text())
        if (run / ROUTING_FILE).exists():
            routing = (run / ROUTING_FILE).read_text()
            try:
                json.loads(routing)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{run / ROUTING_FILE}: not valid JSON ({e})") from e
            _write_atomic(target / ROUTING_FILE, routing)
        _write_atomic(target / "metrics.json", metrics)  # last: a run counts once its metrics are in place
        written.append(rel)
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="a sweep or run folder (searched recursively)")
    ap.add_argument("dst", type=Path, help="where the slim copies go (same relative layout)")
    args = ap.parse_args(argv)
    written = archive(args.src, args.dst)
    print(f"{len(written)} runs archived from {args.src} into {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
