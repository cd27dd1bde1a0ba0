"""Which experimental factors a sweep varies, and the paper's orders for rows and columns (docs/method.md §8).

The paper's tables each vary one factor: the method (Table 1), the expert-selection strategy (Table 2), the
data-selection strategy (Table 3), K (Table 4), N (Table 6), k (Table 7) and the data budget C (Fig. 9); the
base model splits each table in two. A factor is a row factor of the report when it takes more than one value
over the evaluated runs. Other config choices recorded in metrics.json (``moe``, ``encoder``, ``pool``, ``bank``)
and Hydra overrides that metrics.json does not record become row factors only when they separate runs that the
task and the main factors do not (``pool`` follows ``task`` by default and is then no factor). ``data_seed`` and
``seed`` are never factors: they index the draws that a cell averages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kexpert.report.runs import RunCollection, RunRecord

TASK_ORDER = ("arc_c", "arc_e", "boolq", "piqa", "gsm8k", "mbpp")
TASK_TITLES = {"arc_c": "ARC-c", "arc_e": "ARC-e", "boolq": "BoolQ", "piqa": "PiQA", "gsm8k": "GSM8K", "mbpp": "MBPP"}
METHOD_ORDER = (
    "base",
    "random",
    "random_data",
    "expert_lora",
    "source_best",
    "source_best_sft",
    "mixlora",
    "mixlora_data",
    "lorahub",
    "lorahub_data",
    "uniform_merge",
    "rocket",
)
EXPERT_SELECTION_ORDER = (
    "random",
    "ppl",
    "reasoning_ppl",
    "accuracy",
    "accuracy_reasoning_ppl",
    "rocket",
    "fixed",
    "oracle",
)
DATA_SELECTION_ORDER = ("random", "cosine", "sim_div", "convex_hull", "kde")


@dataclass(frozen=True)
class Factor:
    """A dimension of the experiment grid.

    Attributes:
        key: Its key in metrics.json (or the Hydra override key for unrecorded knobs).
        title: Column header in tables.
        paper: The paper table or figure that ablates it ("" if none).
        order: Preferred order of its values (others follow, sorted).
        numeric: Whether its values are numbers (plotted as an x axis).
        source: ``metrics`` (recorded in metrics.json) or ``override`` (read from ``.hydra/overrides.yaml``).
    """

    key: str
    title: str
    paper: str = ""
    order: tuple[str, ...] = ()
    numeric: bool = False
    source: str = "metrics"

    def value(self, run: RunRecord) -> Any:
        """This factor's value in ``run`` (None when absent)."""
        if self.source == "override":
            return run.overrides.get(self.key)
        return run.metrics.get(self.key)

    def sort_key(self, value: Any) -> tuple:
        """Order: the paper's order first, then numbers ascending, then text; None last."""
        if value is None:
            return (3, 0.0, "")
        text = str(value)
        if text in self.order:
            return (0, float(self.order.index(text)), "")
        try:
            return (1, float(text), "")
        except ValueError:
            return (2, 0.0, text)


MAIN_FACTORS = (
    Factor("base_model", "Base model"),
    Factor("method", "Method", "Table 1", METHOD_ORDER),
    Factor("expert_selection", "Expert selection", "Table 2", EXPERT_SELECTION_ORDER),
    Factor("data_selection", "Data selection", "Table 3", DATA_SELECTION_ORDER),
    Factor("k_shot", "K", "Table 4", numeric=True),
    Factor("num_experts", "N", "Table 6", numeric=True),
    Factor("top_k", "k", "Table 7", numeric=True),
    Factor("budget", "C", "Fig. 9", numeric=True),
)
RECORDED_EXTRAS = (Factor("moe", "MoE"), Factor("encoder", "Encoder"), Factor("pool", "Pool"), Factor("bank", "Bank"))
# overrides that are draws, tasks, main factors, or do not change results
_OVERRIDE_IGNORED = {
    "task",
    "data_seed",
    "seed",
    "method",
    "expert_selection",
    "data_selection",
    "k_shot",
    "moe.num_experts",
    "moe.top_k",
    "data_selection.budget",
    "base_model",
    "moe",
    "encoder",
    "pool",
    "bank",
    "sweep_name",
    "tags",
    "use_cache",
    "routing_stats",
    "plot",
    "logger",
    "launcher",
    "sweep",
    "stages",
}
_OVERRIDE_IGNORED_PREFIXES = ("hydra.", "paths.", "logger.", "launcher.")


def task_sort_key(task: str) -> tuple:
    """The paper's task order, unknown tasks after it alphabetically."""
    return (TASK_ORDER.index(task), "") if task in TASK_ORDER else (len(TASK_ORDER), task)


def task_title(task: str) -> str:
    """Display name of a task (``arc_c`` -> ``ARC-c``)."""
    return TASK_TITLES.get(task, task)


def ignored_override(key: str) -> bool:
    """Whether a command-line override is a draw, a task, a main or recorded factor, or does not change results."""
    return key in _OVERRIDE_IGNORED or key.startswith(_OVERRIDE_IGNORED_PREFIXES) or key.endswith("progress")


def _separates(factor: Factor, runs: Sequence[RunRecord], given: Sequence[Factor]) -> bool:
    """Whether ``factor`` takes several values among runs that agree on the task and the ``given`` factors."""
    seen: dict[tuple, Any] = {}
    for run in runs:
        key = (run.task, *(str(f.value(run)) for f in given))
        value = str(factor.value(run))
        if seen.setdefault(key, value) != value:
            return True
    return False


def varying_factors(runs: Sequence[RunRecord]) -> list[Factor]:
    """The row factors of a set of evaluated runs, in the paper's order (main factors, then extras)."""
    main = [f for f in MAIN_FACTORS if len({str(f.value(r)) for r in runs}) > 1]
    factors = list(main)
    for extra in RECORDED_EXTRAS:
        if _separates(extra, runs, factors):
            factors.append(extra)
    override_keys = sorted({k for r in runs for k in r.overrides if not ignored_override(k)})
    for key in override_keys:
        extra = Factor(key, key, source="override")
        if _separates(extra, runs, factors):
            factors.append(extra)
    return factors


def fixed_settings(runs: Sequence[RunRecord]) -> dict[str, str]:
    """Main factors (and the method label) that are the same in every run: the context of every table."""
    out: dict[str, str] = {}
    for f in MAIN_FACTORS:
        values = {str(f.value(r)) for r in runs if f.value(r) is not None}
        if len(values) == 1:
            out[f.title] = values.pop()
    labels = {r.label for r in runs}
    if len(labels) == 1 and "Method" in out:
        out["Method"] = labels.pop()
    return out


def row_key(run: RunRecord, factors: Sequence[Factor]) -> tuple:
    """The run's row: its value of each factor."""
    return tuple(f.value(run) for f in factors)


def row_sort_key(key: tuple, factors: Sequence[Factor]) -> tuple:
    """Sort rows by each factor's order."""
    return tuple(f.sort_key(v) for f, v in zip(factors, key))


def display_value(factor: Factor, value: Any, runs: Sequence[RunRecord]) -> str:
    """How a factor value is shown: methods by their label, oracle methods marked."""
    if factor.key == "method" and factor.source == "metrics":
        match = [r for r in runs if r.method == value]
        if match:
            label = match[0].label
            if match[0].oracle and "oracle" not in label.lower():
                label += " [oracle]"
            return label
    return "—" if value is None else str(value)


def dedupe(collection: RunCollection, factors: Sequence[Factor]) -> RunCollection:
    """Keep one run per (row, task, draw): the newest ``metrics.json``; older ones go to ``superseded``."""
    newest: dict[tuple, RunRecord] = {}
    superseded = list(collection.superseded)
    for run in collection.evaluated:
        key = (row_key(run, factors), run.task, run.draw)
        old = newest.get(key)
        if old is None:
            newest[key] = run
            continue
        older, newer = sorted((old, run), key=lambda r: (r.path.stat().st_mtime, str(r.path)))
        newest[key] = newer
        superseded.append((older, newer))
    kept = sorted(newest.values(), key=lambda r: str(r.path))
    return RunCollection(collection.root, kept, collection.skipped, collection.incomplete, superseded)
