"""Expert agreement analysis: the paper's Table 5 and Fig. 11 (docs/method.md §8.6).

Each eval item of a run with ``per_expert`` data is put in one bucket by how the MoE's N experts, each evaluated
alone, answer it: **All Correct** (every expert right), **All Incorrect** (every expert wrong) or **Mixed** (at
least one right and one wrong). On the Mixed items the report gives every expert's error rate and the MoE's
(read from the run's ``predictions.jsonl``): when the MoE errs less than every expert, the router resolves the
experts' disagreements. Runs of the same row and task are pooled (counts are summed over draws); experts are
compared by slot (Expert 1..N, in each run's ``per_expert.experts`` order), as in the paper.

``per_expert`` schema: ``{"experts": [name, ...], "ids": [item id, ...],
"correct": {name: [bool per id, in the order of ids], ...}}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kexpert.report.factors import Factor, display_value, row_key, row_sort_key, task_sort_key, task_title
from kexpert.report.runs import RunRecord
from kexpert.report.tables import Table
from kexpert.utils.errors import DataError
from kexpert.utils.io import read_jsonl


@dataclass
class Agreement:
    """Bucket counts and Mixed-item errors of one run, or of several pooled.

    Attributes:
        items: Eval items analysed.
        all_correct: Items every expert gets right.
        all_incorrect: Items every expert gets wrong.
        mixed: The other items.
        expert_errors: Errors on Mixed items, per expert slot.
        moe_errors: The MoE's errors on Mixed items.
        runs: Runs pooled.
        expert_names: Each run's expert names, by slot.
    """

    items: int = 0
    all_correct: int = 0
    all_incorrect: int = 0
    mixed: int = 0
    expert_errors: list[int] = field(default_factory=list)
    moe_errors: int = 0
    runs: int = 0
    expert_names: list[list[str]] = field(default_factory=list)

    def error_rate(self, errors: int) -> float | None:
        """Errors / Mixed items (None without Mixed items)."""
        return errors / self.mixed if self.mixed else None

    def add(self, other: Agreement, where: str) -> None:
        """Pool ``other`` into this one (same number of experts)."""
        if self.runs and len(self.expert_errors) != len(other.expert_errors):
            raise DataError(
                f"{where}: runs pooled in one row have {len(self.expert_errors)} and "
                f"{len(other.expert_errors)} experts in per_expert; expected the same number"
            )
        if not self.runs:
            self.expert_errors = [0] * len(other.expert_errors)
        self.items += other.items
        self.all_correct += other.all_correct
        self.all_incorrect += other.all_incorrect
        self.mixed += other.mixed
        self.expert_errors = [a + b for a, b in zip(self.expert_errors, other.expert_errors)]
        self.moe_errors += other.moe_errors
        self.runs += other.runs
        self.expert_names += other.expert_names


def _per_expert(run: RunRecord) -> tuple[list[str], list[str], dict[str, list[bool]]]:
    """Validated ``(experts, ids, correct)`` of a run's ``per_expert`` block."""
    where = f"{run.path}: per_expert"
    pe = run.metrics.get("per_expert")
    if not isinstance(pe, dict):
        raise DataError(f"{where}: expected an object with experts, ids and correct")
    experts, ids, correct = pe.get("experts"), pe.get("ids"), pe.get("correct")
    if not isinstance(experts, list) or len(experts) < 2:
        raise DataError(f"{where}.experts: expected a list of at least 2 expert names, got {experts!r}")
    if not isinstance(ids, list) or not ids:
        raise DataError(f"{where}.ids: expected a non-empty list of eval item ids")
    if not isinstance(correct, dict):
        raise DataError(f"{where}.correct: expected an object {{expert name: [bool per id]}}")
    for name in experts:
        flags = correct.get(name)
        if not isinstance(flags, list) or len(flags) != len(ids):
            got = "missing" if flags is None else f"{len(flags) if isinstance(flags, list) else type(flags).__name__}"
            raise DataError(f"{where}.correct[{name!r}]: expected {len(ids)} booleans (one per id), got {got}")
        if not all(isinstance(v, bool) for v in flags):
            raise DataError(f"{where}.correct[{name!r}]: expected booleans only")
    return [str(e) for e in experts], [str(i) for i in ids], correct


def analyze_run(run: RunRecord) -> Agreement:
    """Bucket the eval items of one run with ``per_expert`` data.

    Raises:
        DataError: malformed ``per_expert`` data, or an id missing from the run's ``predictions.jsonl``.
    """
    experts, ids, correct = _per_expert(run)
    pred_path = run.run_dir / "predictions.jsonl"
    preds: dict[str, Any] = {}
    for i, row in enumerate(read_jsonl(pred_path), start=1):
        if "id" not in row or "correct" not in row:
            raise DataError(f"{pred_path}: row {i} lacks 'id' or 'correct'")
        preds[str(row["id"])] = row["correct"]
    out = Agreement(expert_errors=[0] * len(experts), runs=1, expert_names=[experts])
    for j, item in enumerate(ids):
        if item not in preds:
            raise DataError(f"{run.path}: per_expert.ids[{j}] = {item!r} is not in {pred_path}")
        flags = [bool(correct[name][j]) for name in experts]
        out.items += 1
        if all(flags):
            out.all_correct += 1
        elif not any(flags):
            out.all_incorrect += 1
        else:
            out.mixed += 1
            out.expert_errors = [e + (not f) for e, f in zip(out.expert_errors, flags)]
            out.moe_errors += not bool(preds[item])
    return out


@dataclass
class AgreementGroup:
    """Pooled agreement of one (row, task)."""

    row: tuple
    row_label: str
    task: str
    stats: Agreement


def agreement_groups(runs: Sequence[RunRecord], factors: Sequence[Factor]) -> list[AgreementGroup]:
    """Pool the runs that carry ``per_expert`` data by (row, task), in table order."""
    groups: dict[tuple[tuple, str], Agreement] = {}
    for run in runs:
        if "per_expert" not in run.metrics:
            continue
        key = (row_key(run, factors), run.task)
        groups.setdefault(key, Agreement()).add(analyze_run(run), str(run.path))
    ordered = sorted(groups, key=lambda k: (row_sort_key(k[0], factors), task_sort_key(k[1])))
    out = []
    for row, task in ordered:
        label = ", ".join(display_value(f, v, runs) for f, v in zip(factors, row))
        out.append(AgreementGroup(row, label, task, groups[(row, task)]))
    return out


def _rate(stats: Agreement, errors: int) -> str:
    rate = stats.error_rate(errors)
    return "—" if rate is None else f"{100 * rate:.1f}% ({errors}/{stats.mixed})"


def agreement_table(groups: Sequence[AgreementGroup], row_title: str) -> Table:
    """Table 5 layout: bucket counts and error rates on Mixed items per expert slot and for the MoE."""
    n_max = max(len(g.stats.expert_errors) for g in groups)
    columns = [row_title, "Task", "Runs", "Items", "All Correct", "All Incorrect", "Mixed"]
    columns += [f"Expert {i + 1} err" for i in range(n_max)] + ["MoE err"]
    rows, csv_rows = [], []
    for g in groups:
        s = g.stats
        errs = [_rate(s, e) for e in s.expert_errors] + [""] * (n_max - len(s.expert_errors))
        rows.append(
            [
                g.row_label,
                task_title(g.task),
                str(s.runs),
                str(s.items),
                str(s.all_correct),
                str(s.all_incorrect),
                str(s.mixed),
                *errs,
                _rate(s, s.moe_errors),
            ]
        )
        rec: dict[str, Any] = {
            "row": g.row_label,
            "task": g.task,
            "runs": s.runs,
            "items": s.items,
            "all_correct": s.all_correct,
            "all_incorrect": s.all_incorrect,
            "mixed": s.mixed,
        }
        for i, e in enumerate(s.expert_errors):
            rate = s.error_rate(e)
            rec[f"expert{i + 1}_error_rate"] = "" if rate is None else round(rate, 6)
        rate = s.error_rate(s.moe_errors)
        rec["moe_error_rate"] = "" if rate is None else round(rate, 6)
        rec["experts"] = " | ".join(";".join(names) for names in s.expert_names)
        csv_rows.append(rec)
    notes = [
        "Buckets by the experts evaluated alone: All Correct / All Incorrect / Mixed (the rest).",
        "Error rates on Mixed items (errors/Mixed), pooled over the row's draws; experts by slot.",
        "Experts per run (slot order): "
        + "; ".join(
            f"{g.row_label} {task_title(g.task)}: " + " | ".join(", ".join(n) for n in g.stats.expert_names)
            for g in groups
        ),
    ]
    return Table(
        "table5_expert_agreement",
        "Table 5 layout: expert agreement and error rates on Mixed items",
        columns,
        rows,
        csv_rows,
        notes,
    )
