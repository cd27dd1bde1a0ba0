"""Collect the runs of a (possibly nested) multirun: every ``metrics.json`` written by ``python train.py``.

A run is *evaluated* (it has ``eval`` and ``score``), *skipped* (``{"skipped": reason}``: an invalid grid point),
or *incomplete* (e.g. ``stages=experts``: nothing to tabulate). The Hydra overrides of each job
(``.hydra/overrides.yaml``) are read too, so a sweep over a knob that metrics.json does not record (say
``optim.optimizer.lr``) still separates its rows instead of being averaged together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kexpert.utils.errors import DataError
from kexpert.utils.io import read_json
from kexpert.utils.logging import get_logger

log = get_logger(__name__)

METRICS_FILE = "metrics.json"


@dataclass
class RunRecord:
    """One job of a multirun.

    Attributes:
        path: Its ``metrics.json``.
        metrics: The parsed document.
        overrides: Its Hydra overrides (``key -> value`` as typed on the command line; empty if unknown).
    """

    path: Path
    metrics: dict[str, Any]
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """The job's output dir."""
        return self.path.parent

    @property
    def eval(self) -> dict[str, Any]:
        """The ``eval`` block (empty when the run was not evaluated)."""
        ev = self.metrics.get("eval")
        return ev if isinstance(ev, dict) else {}

    @property
    def task(self) -> str:
        """Task name."""
        return str(self.metrics.get("task") or self.eval.get("task") or "?")

    @property
    def method(self) -> str:
        """Method name (``conf/method``)."""
        return str(self.metrics.get("method") or "?")

    @property
    def label(self) -> str:
        """Display label of the method."""
        return str(self.metrics.get("label") or self.method)

    @property
    def oracle(self) -> bool:
        """Whether the method reads eval labels (an upper reference)."""
        return bool(self.metrics.get("oracle", False))

    @property
    def draw(self) -> tuple[int, int]:
        """``(data_seed, seed)``: the random draw this run is one sample of."""
        return int(self.metrics.get("data_seed", 0)), int(self.metrics.get("seed", 0))

    @property
    def primary_metric(self) -> str:
        """Name of the task's primary metric."""
        return str(self.eval.get("primary_metric", "acc"))

    @property
    def score(self) -> float | None:
        """Primary metric in [0, 1], or None when not evaluated."""
        value = self.metrics.get("score", self.eval.get(self.primary_metric))
        return None if value is None else float(value)

    @property
    def skipped(self) -> str | None:
        """The reason the run was skipped, if it was."""
        reason = self.metrics.get("skipped")
        return None if reason is None else str(reason)


@dataclass
class RunCollection:
    """Every run found under a sweep dir, sorted by path.

    Attributes:
        root: The directory that was searched.
        evaluated: Runs with a score (one per configuration and draw; see ``superseded``).
        skipped: Runs recorded as skipped.
        incomplete: ``(run, reason)`` for runs without a score.
        superseded: ``(older, newer)`` pairs: the same configuration and draw reported twice (a repeated
            sweep); only the newer one is kept.
    """

    root: Path
    evaluated: list[RunRecord]
    skipped: list[RunRecord]
    incomplete: list[tuple[RunRecord, str]]
    superseded: list[tuple[RunRecord, RunRecord]] = field(default_factory=list)

    @property
    def sweep_name(self) -> str:
        """The runs' ``sweep_name`` (joined with ``+`` when several), else the dir name."""
        names = sorted({str(r.metrics["sweep_name"]) for r in self.all_runs if r.metrics.get("sweep_name")})
        return "+".join(names) if names else self.root.name

    @property
    def all_runs(self) -> list[RunRecord]:
        """Every run, whatever its status."""
        runs = [*self.evaluated, *self.skipped, *(r for r, _ in self.incomplete), *(o for o, _ in self.superseded)]
        return sorted(runs, key=lambda r: str(r.path))


def find_metrics_files(root: Path) -> list[Path]:
    """Every ``metrics.json`` under ``root`` (any depth), not following symlinks (``artifacts/`` links)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if METRICS_FILE in filenames:
            found.append(Path(dirpath) / METRICS_FILE)
    return sorted(found)


def read_overrides(run_dir: Path) -> dict[str, str]:
    """``key -> value`` from ``<run_dir>/.hydra/overrides.yaml``.

    ``+``/``++`` prefixes are dropped; ``~key`` deletions read as ``<deleted>``.
    """
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    from omegaconf import OmegaConf

    try:
        items = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:  # yaml errors come in several types
        raise DataError(f"{path}: cannot parse the Hydra overrides ({e})") from e
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a YAML list of key=value overrides, got {type(items).__name__}")
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        text = str(item)
        if text.startswith("~"):
            out[text[1:].split("=", 1)[0]] = "<deleted>"
            continue
        if "=" not in text:
            raise DataError(f"{path}: entry {i} {text!r} is not a key=value override")
        key, value = text.split("=", 1)
        out[key.lstrip("+")] = value
    return out


def collect_runs(root: str | os.PathLike, progress: bool = False) -> RunCollection:
    """Load every run under ``root``.

    Args:
        root: A multirun (sweep) dir, a parent of several, or a single run dir.
        progress: Show a progress bar while reading.

    Returns:
        The :class:`RunCollection` (duplicates of a configuration and draw resolved; see ``superseded``).

    Raises:
        DataError: ``root`` is missing or holds no ``metrics.json``, or a file is malformed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected the sweep dir of `python train.py -m ...`)")
    files = find_metrics_files(root)
    if not files:
        raise DataError(
            f"{root}: no metrics.json found under it (expected the sweep dir of `python train.py -m ...`, "
            "e.g. outputs/multiruns/<sweep_name>/<time>, whose jobs each write <job>/metrics.json)"
        )
    evaluated, skipped, incomplete = [], [], []
    for path in tqdm(files, desc="reading runs", unit="run", disable=not progress):
        doc = read_json(path)
        if not isinstance(doc, dict):
            raise DataError(f"{path}: expected a JSON object, got {type(doc).__name__}")
        run = RunRecord(path=path, metrics=doc, overrides=read_overrides(path.parent))
        if run.skipped is not None:
            skipped.append(run)
        elif run.score is None:
            stages = doc.get("stages_run")
            incomplete.append((run, f"no eval score (stages_run={stages})" if stages else "no eval score"))
        elif "task" not in doc or "method" not in doc:
            incomplete.append((run, "not a train.py run (no task/method keys)"))
        else:
            evaluated.append(run)
    log.info(
        "%s: %d runs (%d evaluated, %d skipped, %d incomplete)",
        root,
        len(files),
        len(evaluated),
        len(skipped),
        len(incomplete),
    )
    return RunCollection(root=root, evaluated=evaluated, skipped=skipped, incomplete=incomplete)
