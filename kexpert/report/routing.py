"""Expert activation across runs: the paper's Fig. 7 heatmap averaged over draws (docs/method.md §7).

Every MoE run writes ``routing/routing.json`` (:mod:`kexpert.models.routing_stats`): per layer, the fraction of
eval tokens whose top-k includes each expert. Runs of one (row, task) are averaged element-wise (an unweighted
mean over draws). Different draws may select different bank LoRAs, so experts are matched by slot; the expert
names label the axis only when every draw chose the same ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kexpert.report.factors import Factor, display_value, row_key, row_sort_key, task_sort_key, task_title
from kexpert.report.runs import RunRecord
from kexpert.report.tables import Table
from kexpert.utils.errors import DataError
from kexpert.utils.io import read_json


def short_layer_name(path: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``L3.q_proj``."""
    m = re.search(r"\.(\d+)\.", path)
    return f"L{m.group(1)}.{path.rsplit('.', 1)[-1]}" if m else path


@dataclass
class RoutingGroup:
    """Mean routing fractions of one (row, task).

    Attributes:
        row: Row key.
        row_label: Its display label.
        task: Task name.
        layers: MoE layer paths.
        expert_labels: Axis labels (names if identical in every draw, else ``slot i``).
        fractions: ``[layer][expert]`` mean fraction of tokens routed.
        top_k: k.
        runs: Runs averaged.
        expert_names: Each run's expert names.
    """

    row: tuple
    row_label: str
    task: str
    layers: list[str]
    expert_labels: list[str]
    fractions: list[list[float]]
    top_k: int
    runs: int
    expert_names: list[list[str]] = field(default_factory=list)

    @property
    def title(self) -> str:
        """Plot title."""
        return f"{task_title(self.task)} — {self.row_label}" if self.row_label else task_title(self.task)


def routing_file(run: RunRecord) -> Path | None:
    """The run's ``routing.json`` (its recorded path, else ``<run dir>/routing/routing.json``), if any."""
    recorded = (run.metrics.get("routing") or {}).get("json")
    for candidate in ([Path(recorded)] if recorded else []) + [run.run_dir / "routing" / "routing.json"]:
        if candidate.exists():
            return candidate
    return None


def _load(path: Path) -> dict:
    doc = read_json(path)
    fr = doc.get("fractions") if isinstance(doc, dict) else None
    layers, experts = (doc.get("layers"), doc.get("experts")) if isinstance(doc, dict) else (None, None)
    if not isinstance(fr, list) or not isinstance(layers, list) or not isinstance(experts, list):
        raise DataError(f"{path}: expected keys layers, experts, fractions (kexpert.models.routing_stats)")
    if len(fr) != len(layers) or any(not isinstance(r, list) or len(r) != len(experts) for r in fr):
        raise DataError(f"{path}: fractions must be a {len(layers)} x {len(experts)} list (layers x experts)")
    return doc


def routing_groups(runs: Sequence[RunRecord], factors: Sequence[Factor]) -> list[RoutingGroup]:
    """Average the routing of every MoE run by (row, task).

    Raises:
        DataError: a malformed routing.json, or runs of one group with different layers or expert counts.
    """
    docs: dict[tuple[tuple, str], list[tuple[Path, dict]]] = {}
    for run in runs:
        path = routing_file(run)
        if path is not None:
            docs.setdefault((row_key(run, factors), run.task), []).append((path, _load(path)))
    out = []
    for row, task in sorted(docs, key=lambda k: (row_sort_key(k[0], factors), task_sort_key(k[1]))):
        items = docs[(row, task)]
        first_path, first = items[0]
        for path, doc in items[1:]:
            if doc["layers"] != first["layers"] or len(doc["experts"]) != len(first["experts"]):
                raise DataError(
                    f"{path}: its layers / expert count differ from {first_path}, which is averaged "
                    "with it (same row and task); expected the same MoE shape"
                )
        n_layers, n_exp = len(first["layers"]), len(first["experts"])
        mean = [
            [sum(d["fractions"][li][e] for _, d in items) / len(items) for e in range(n_exp)] for li in range(n_layers)
        ]
        names = [list(map(str, d["experts"])) for _, d in items]
        same = all(n == names[0] for n in names)
        labels = names[0] if same else [f"slot {i + 1}" for i in range(n_exp)]
        row_label = ", ".join(display_value(f, v, runs) for f, v in zip(factors, row))
        out.append(
            RoutingGroup(
                row,
                row_label,
                task,
                list(first["layers"]),
                labels,
                mean,
                int(first.get("top_k", 0)),
                len(items),
                names,
            )
        )
    return out


def routing_table(groups: Sequence[RoutingGroup], row_title: str) -> Table:
    """Long format of the averaged fractions: one row per (row, task, layer, expert)."""
    rows, csv_rows = [], []
    for g in groups:
        for li, layer in enumerate(g.layers):
            for e, label in enumerate(g.expert_labels):
                frac = g.fractions[li][e]
                rows.append(
                    [g.row_label, task_title(g.task), short_layer_name(layer), label, f"{frac:.3f}", str(g.runs)]
                )
                csv_rows.append(
                    {
                        "row": g.row_label,
                        "task": g.task,
                        "layer": layer,
                        "expert": label,
                        "fraction": round(frac, 6),
                        "runs": g.runs,
                    }
                )
    notes = [
        "Fraction of eval tokens whose top-k includes the expert, averaged over the runs (draws) of the row; "
        "a layer's fractions sum to k."
    ]
    for g in groups:
        if g.expert_labels[0].startswith("slot "):
            notes.append(
                f"{g.title}: draws chose different experts: " + " | ".join(", ".join(n) for n in g.expert_names) + "."
            )
    columns = [row_title, "Task", "Layer", "Expert", "Fraction", "Runs"]
    return Table(
        "routing_mean", "Expert activation (Fig. 7): mean fraction of tokens routed", columns, rows, csv_rows, notes
    )
