"""The expert-selection interface (docs/method.md §3): a selector picks N bank LoRAs for a task.

Every strategy of the ``expert_selection`` config group is a class with ``select(ctx) -> ExpertSelection``.
The :class:`SelectionContext` gives it the task, the K-shot, the bank, lazily computed and cached K-shot signals
(:class:`~kexpert.selection.experts.signals.BankScorer`) and the bank's similarity matrix, computed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kexpert.bank.manifest import Bank
from kexpert.data.records import Example
from kexpert.models.adapter import read_peft_adapter
from kexpert.selection.experts.diversity import DiversityConfig, group_mean_similarity, omega, similarity_matrix
from kexpert.selection.experts.signals import BASE, BankScorer
from kexpert.tasks.task import Task
from kexpert.utils.errors import ConfigError
from kexpert.utils.io import read_json, sha1_of, write_json


@dataclass
class ExpertSelection:
    """What a selector chose and why.

    Attributes:
        strategy: Strategy name (the config option).
        chosen: Names of the chosen bank entries, in the selector's order.
        oracle: True when the choice used the evaluation split (Source Best); never a K-shot method.
        rank_sum: Entry -> weighted rank sum used by the selector (empty when it does not rank).
        candidates: The top-M candidates (Algorithm 1 step 3), when the selector has them.
        group: Details of the group decision (diversity rank, total, runners-up), when there is one.
        notes: Human-readable remarks (tie-breaks, approximations, labels).
    """

    strategy: str
    chosen: list[str]
    oracle: bool = False
    rank_sum: dict[str, float] = field(default_factory=dict)
    candidates: list[str] = field(default_factory=list)
    group: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class SelectionContext:
    """Everything a selector may use.

    Attributes:
        task: The task.
        kshot: The K-shot items.
        bank: The LoRA bank.
        scorer: Cached K-shot signal scorer.
        cache_dir: Root of the caches (similarity matrices).
        eval_limit: Items of the eval split used by the oracle (``None`` = all).
        eval_seed: Seed of that subset.
        eval_mode: Evaluation mode there (``None`` = the task's eval mode).
    """

    task: Task
    kshot: list[Example]
    bank: Bank
    scorer: BankScorer
    cache_dir: Path
    eval_limit: int | None = None
    eval_seed: int = 0
    eval_mode: str | None = None
    signal_details: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _sims: dict[str, np.ndarray] = field(default_factory=dict)

    def signal(self, name: str) -> np.ndarray:
        """One value per bank entry (manifest order) of a K-shot signal; computed once and cached.

        The base model is scored alongside when ``signals.score_base`` is set (kept for the report only).
        """
        if name not in self.signal_details:
            names = self.bank.names() + ([BASE] if self.scorer.cfg.score_base else [])
            self.signal_details[name] = self.scorer.compute(name, names)
        return np.array([self.signal_details[name][n]["value"] for n in self.bank.names()], dtype=np.float64)

    def eval_accuracy(self) -> np.ndarray:
        """Accuracy of every bank entry on the task's eval split (oracle only)."""
        if "eval_accuracy" not in self.signal_details:
            examples = self.task.eval_examples(limit=self.eval_limit, seed=self.eval_seed)
            self.signal_details["eval_accuracy"] = self.scorer.eval_accuracy(
                self.bank.names(), examples, self.eval_mode
            )
        return np.array([self.signal_details["eval_accuracy"][n]["value"] for n in self.bank.names()])

    def similarity(self, config: DiversityConfig, progress: bool = True) -> np.ndarray:
        """The bank's ``(E, E)`` LoRA similarity matrix, computed once per setting and cached on disk."""
        key = sha1_of({"sha": [e.sha256 for e in self.bank.entries], "q": config.quantity, "abs": config.absolute})
        if key not in self._sims:
            path = self.cache_dir / "lora_similarity" / f"{key}.json"
            if path.exists():
                self._sims[key] = np.asarray(read_json(path)["matrix"], dtype=np.float64)
            else:
                adapters = [read_peft_adapter(e.path) for e in self.bank.entries]
                sim = similarity_matrix(adapters, config.quantity, config.absolute, progress=progress)
                write_json(
                    path,
                    {
                        "names": self.bank.names(),
                        "quantity": config.quantity,
                        "absolute": config.absolute,
                        "matrix": sim.tolist(),
                    },
                )
                self._sims[key] = sim
        return self._sims[key]

    def group_diversity(self, names: list[str], config: DiversityConfig) -> dict[str, Any]:
        """Mean pairwise similarity and the paper's Omega of a group of entries."""
        idx = np.array([[self.bank.names().index(n) for n in names]])
        mean = float(group_mean_similarity(self.similarity(config), idx)[0])
        return {
            "mean_similarity": mean,
            "omega": omega(mean),
            "quantity": config.quantity,
            "absolute": config.absolute,
        }


class ExpertSelector(Protocol):
    """A strategy of the ``expert_selection`` config group."""

    name: str
    num_experts: int
    signals: Any
    diversity: DiversityConfig

    def select(self, ctx: SelectionContext) -> ExpertSelection:
        """Choose the experts."""
        ...


def check_num_experts(num_experts: int, bank_size: int, what: str = "num_experts") -> None:
    """Raise a ConfigError unless ``1 <= num_experts <= bank_size``."""
    if not 1 <= num_experts <= bank_size:
        raise ConfigError(f"expert_selection.{what}={num_experts} must be between 1 and the bank size ({bank_size})")
