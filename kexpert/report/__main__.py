"""``python -m kexpert.report <multirun dir> [--out DIR] [--wandb]``: the results report of a sweep."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from kexpert.report.build import build_report
from kexpert.utils.cli import friendly_errors


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m kexpert.report",
        description="Tables (paper layouts, markdown + CSV), plots and an index (report.md) for every metrics.json "
        "under a multirun dir of `python train.py -m ...`. A NOTES.md in that dir is copied into report.md.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the multirun (sweep) dir, or a parent of several")
    parser.add_argument("--out", type=Path, default=None, help="report dir (default: <sweep_dir>/report)")
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log tables and plots to one W&B run (project kexpert, job_type report, "
        "group = the sweep name; offline without credentials)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Build the report and print where it is."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    report = build_report(
        args.sweep_dir,
        args.out,
        use_wandb=args.wandb,
        progress=not args.no_progress,
        command="python -m kexpert.report " + shlex.join(argv),
    )
    c = report.collection
    print(
        f"report: {report.index} ({len(c.evaluated)} evaluated, {len(c.skipped)} skipped, "
        f"{len(c.incomplete)} incomplete runs; {len(report.tables)} tables, {len(report.plots)} plots)"
    )
    if report.wandb:
        print(f"wandb ({report.wandb['mode']}): {report.wandb.get('url') or report.wandb.get('dir')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
