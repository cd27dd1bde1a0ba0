"""Per-stage wall time and cache reuse over a sweep (kexpert.pipeline.train's ``stage_wall_s`` / ``stage_cache``).

A stage's wall time in a run includes reading a reused artifact, so a sweep that shares the K-shot, the
expert selection or the selected data shows it as a high reuse count and a small mean time.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from kexpert.report.runs import RunRecord
from kexpert.report.tables import Table

STAGE_ORDER = ("kshot", "experts", "oracle", "data", "train", "load_model", "eval", "report")


def _stage_key(name: str) -> tuple:
    return (STAGE_ORDER.index(name), "") if name in STAGE_ORDER else (len(STAGE_ORDER), name)


def timing_table(runs: Sequence[RunRecord]) -> Table:
    """One row per stage: runs that ran it, mean / max / total wall seconds, reuse counts, build times."""
    walls: dict[str, list[float]] = {}
    reused: dict[str, int] = {}
    built: dict[str, list[float]] = {}
    keys: dict[str, set[str]] = {}
    for run in runs:
        for stage, secs in (run.metrics.get("stage_wall_s") or {}).items():
            walls.setdefault(stage, []).append(float(secs))
        for stage, info in (run.metrics.get("stage_cache") or {}).items():
            if not isinstance(info, dict):
                continue
            keys.setdefault(stage, set()).add(str(info.get("key")))
            if info.get("reused"):
                reused[stage] = reused.get(stage, 0) + 1
            elif info.get("built_wall_s") is not None:
                built.setdefault(stage, []).append(float(info["built_wall_s"]))
    stages = sorted(set(walls) | set(keys), key=_stage_key)
    columns = [
        "Stage",
        "Runs",
        "Mean wall (s)",
        "Max wall (s)",
        "Total wall (s)",
        "Cached",
        "Reused",
        "Built",
        "Distinct artifacts",
        "Mean build (s)",
    ]
    rows, csv_rows = [], []
    for stage in stages:
        w = walls.get(stage, [])
        cached = stage in keys
        n_built = len(built.get(stage, []))
        rec: dict[str, Any] = {
            "stage": stage,
            "runs": len(w),
            "mean_wall_s": round(statistics.fmean(w), 3) if w else "",
            "max_wall_s": round(max(w), 3) if w else "",
            "total_wall_s": round(sum(w), 3) if w else "",
            "cached": cached,
            "reused": reused.get(stage, 0),
            "built": n_built,
            "distinct_artifacts": len(keys.get(stage, ())),
            "mean_build_s": round(statistics.fmean(built[stage]), 3) if n_built else "",
        }
        csv_rows.append(rec)
        rows.append(
            [
                stage,
                str(rec["runs"]),
                _num(rec["mean_wall_s"]),
                _num(rec["max_wall_s"]),
                _num(rec["total_wall_s"]),
                "yes" if cached else "no",
                str(rec["reused"]) if cached else "—",
                str(n_built) if cached else "—",
                str(rec["distinct_artifacts"]) if cached else "—",
                _num(rec["mean_build_s"]),
            ]
        )
    notes = [
        f"Over {len(runs)} runs (evaluated or incomplete). Reused: runs that found the stage's artifact in the "
        "cache (built by an earlier run or sweep); Built: runs that computed it (mean build time)."
    ]
    return Table("stage_timing", "Per-stage wall time and cache reuse", columns, rows, csv_rows, notes)


def _num(v: Any) -> str:
    return "—" if v == "" else f"{v:.2f}"
