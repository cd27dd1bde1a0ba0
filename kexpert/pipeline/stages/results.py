"""The typed results the pipeline's stages hand each other.

Each stage is a function over the results of the stages before it plus the sub-config it needs
(:mod:`kexpert.pipeline.stages`). Its result says what it produced and where its cached artifact lives, so
no caller has to recognise a stage's output by file names, keys or class names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from kexpert.data.records import Example, Instruction
from kexpert.pipeline.cache import StageArtifact

R = TypeVar("R")


@dataclass(frozen=True)
class KShot:
    """Stage ``kshot``: the K labelled examples (D_K).

    Attributes:
        examples: The drawn examples, in draw order.
        items: The same examples as SFT items.
        pool_source: Where they were drawn from (the task's K-shot pool).
        artifact: The cached artifact (``kshot.jsonl``, ``kshot_sft.jsonl``, ``info.json``).
        inputs: The cache-key inputs of the draw; every downstream stage that depends on D_K includes them.
    """

    examples: list[Example]
    items: list[Instruction]
    pool_source: str
    artifact: StageArtifact
    inputs: dict[str, Any]


@dataclass(frozen=True)
class ExpertPick:
    """Stage ``experts`` (Algorithm 1) or ``oracle``: the chosen bank entries and the selection report.

    Attributes:
        chosen: The chosen entry names (the MoE's experts, in expert order).
        ranking: Every bank entry, best first by the strategy's fused rank.
        report: The ``experts.json`` document.
        artifact: The cached artifact.
    """

    chosen: list[str]
    ranking: list[str]
    report: dict[str, Any]
    artifact: StageArtifact


@dataclass(frozen=True)
class SelectedData:
    """Stage ``data`` (Algorithm 2): the selected open data D_A (the K-shot not included).

    Attributes:
        items: D_A, best first; empty for ``data_selection=none``.
        artifact: The cached artifact (``selected.jsonl`` = D_K then D_A, ``stats.json``, audit files), or
            ``None`` when nothing was selected.
    """

    items: list[Instruction]
    artifact: StageArtifact | None


@dataclass(frozen=True)
class TrainedModel:
    """Stage ``train``: what the method built (a LoRA, a merge, a trained LoRA-MoE...).

    Attributes:
        info: ``method.json``: the method's facts (experts, losses, steps, trainable parameters...).
        artifact: The cached artifact the method's ``load`` reads.
    """

    info: dict[str, Any]
    artifact: StageArtifact


@dataclass(frozen=True)
class Evaluation:
    """Stage ``eval``: the evaluator's metrics on the eval split.

    Attributes:
        metrics: ``eval.json`` (primary metric, its 95% CI, n, mode...).
        per_expert: Each MoE expert alone (``eval.per_expert=true``), or ``None``.
        artifact: The cached artifact (``predictions.jsonl``, ``eval.json``).
    """

    metrics: dict[str, Any]
    per_expert: dict[str, Any] | None
    artifact: StageArtifact

    @property
    def score(self) -> float:
        """The primary metric."""
        return float(self.metrics[self.metrics["primary_metric"]])


@dataclass
class StageLog:
    """Wall time and cache use of every stage a run went through (for ``metrics.json``).

    Attributes:
        wall_s: Stage name -> seconds this run spent in it.
        artifacts: Stage name -> its artifact.
    """

    wall_s: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, StageArtifact] = field(default_factory=dict)

    def record_result(self, result: R) -> R:
        """Remember a stage result's artifact (if it has one); returns the result."""
        art = getattr(result, "artifact", None)
        if art is not None:
            self.artifacts[art.stage] = art
        return result
