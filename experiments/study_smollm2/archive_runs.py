"""Keep what the study's tables need from a sweep folder, small enough to commit beside the write-up.

``outputs/`` is git-ignored and does not survive a fresh machine, and re-creating a run's predictions means re-running
it. This copies, for every run under ``SRC`` (found by its ``metrics.json``, recursively): ``metrics.json``, the
resolved Hydra config and overrides, ``routing/routing.json`` of a MoE run (the report's routing table and heatmaps
read it: the path recorded in ``metrics.json`` first, then ``<run dir>/routing/routing.json``, which is the copy's),
and ``predictions.jsonl`` cut down to ``id``, ``correct`` and ``pred`` (no prompt, passage or generated text, so no
task data), into the same relative folders under ``DST``.
``paired.py`` and ``python -m kexpert.report`` read the copy as they read the original:

    python experiments/study_smollm2/archive_runs.py outputs/sweeps/lorahub experiments/study_smollm2/lorahub/runs/x

Each file is written to a temporary name and renamed into place, so an interrupted copy leaves no half file.

The copies are not committed file by file: when ``DST`` is (inside) a folder named ``runs``, that folder is then
packed into ``runs.tar.xz`` beside it (``experiments/pack_runs.py``: deterministic, members of the existing archive
that are not on disk are kept, so ``runs/`` need not be unpacked first), its sha256 is entered in
``experiments/archives.sha256`` and in the README's Archives table, and ``runs/`` itself stays git-ignored. Unpack
an archive to read the runs: ``python experiments/rebuild_tables.py --unpack-all`` (every archive, in place).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kexpert.utils.io import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/, for pack_runs
import pack_runs  # noqa: E402

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


def runs_folder(dst: Path) -> Path | None:
    """The folder named ``runs`` that ``dst`` is (or is inside), packed after the copy; ``None`` if there is none."""
    for d in (dst, *dst.parents):
        if d.name == "runs":
            return d
    return None


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="a sweep or run folder (searched recursively)")
    ap.add_argument("dst", type=Path, help="where the slim copies go (same relative layout)")
    ap.add_argument("--no-pack", action="store_true", help="only copy; do not pack the enclosing runs/ folder")
    args = ap.parse_args(argv)
    written = archive(args.src, args.dst)
    print(f"{len(written)} runs archived from {args.src} into {args.dst}")
    runs = runs_folder(args.dst)
    if args.no_pack:
        return 0
    if runs is None:
        print(f"{args.dst} is not inside a folder named runs: not packed (experiments/pack_runs.py packs a folder)")
        return 0
    try:
        packed = pack_runs.pack(runs)
    except pack_runs.ArchiveError as e:
        raise SystemExit(f"packing {runs}: {e}") from e
    n = len(pack_runs.read_members(packed))
    print(f"packed {runs} into {packed} ({n} files, sha256 {pack_runs.sha256_file(packed)}); commit the archive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
