"""The method interface: what a method needs from the pipeline and what it hands back.

A method declares which upstream stages it needs (selected experts, selected data), trains whatever it
trains into a directory the pipeline caches (``build``), and loads the result for evaluation (``load``).
The pipeline evaluates every method with the same evaluator.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from kexpert.bank.manifest import Bank
from kexpert.data.records import Example, Instruction
from kexpert.models.factory import BaseModelSpec
from kexpert.tasks.task import Task
from kexpert.utils.errors import ConfigError

DataChoice = Literal["none", "kshot", "kshot+selected"]


@dataclass
class MethodContext:
    """What the pipeline hands a method: the upstream stages' results, computed on first use.

    Attributes:
        task: The task.
        base_spec: The base model spec.
        kshot: K-shot examples (D_K).
        kshot_items: The K-shot as SFT items.
        seed: Training seed.
        data_seed: Seed of the K-shot draw; a method's own random choices (the random LoRA, the router init)
            follow it through :func:`draw_seed`.
        optim: ``conf/optim`` (optimizer and scheduler partials).
        trainer: ``conf/trainer`` (the Lightning ``Trainer`` config).
        moe: ``conf/moe`` (LoRA-MoE methods), or ``None``.
        get_bank: Returns the bank (validated against the base model).
        get_experts: Returns the names chosen by the expert-selection stage (Algorithm 1).
        get_selected: Returns the selected open data D_A (without the K-shot).
        get_oracle: Returns the bank entries ordered by eval-split accuracy (best first). ORACLE.
        logger: The Lightning logger for training, or ``None``.
    """

    task: Task
    base_spec: BaseModelSpec
    kshot: list[Example]
    kshot_items: list[Instruction]
    seed: int
    optim: DictConfig
    trainer: DictConfig
    moe: DictConfig | None
    get_bank: Callable[[], Bank]
    get_experts: Callable[[], list[str]]
    get_selected: Callable[[], list[Instruction]]
    get_oracle: Callable[[], list[str]]
    logger: Logger | None = None
    data_seed: int = 0

    def train_items(self, data: DataChoice) -> list[Instruction]:
        """D_K, or D_K followed by D_A, as the paper trains on (docs/method.md §6)."""
        if data == "none":
            return []
        if data == "kshot":
            return list(self.kshot_items)
        if data == "kshot+selected":
            return list(self.kshot_items) + list(self.get_selected())
        raise ConfigError(f"method.data: expected none|kshot|kshot+selected, got {data!r}")


class Method:
    """Base class: subclasses set the class attributes and implement :meth:`build` and :meth:`load`.

    Args:
        name: Method name (reported in tables).
        data: Training data: ``none``, ``kshot`` (D_K) or ``kshot+selected`` (D_K + D_A).
        label: Display label (e.g. ``Random†``).
    """

    needs_experts: bool = False
    oracle: bool = False
    routes: bool = False  # the model is a LoRA-MoE: ``moe`` enters the key; routing and per-expert reports apply

    def __init__(self, name: str, data: DataChoice = "none", label: str | None = None) -> None:
        if data not in ("none", "kshot", "kshot+selected"):
            raise ConfigError(f"method.data: expected none|kshot|kshot+selected, got {data!r}")
        self.name = name
        self.data = data
        self.label = label or name

    @property
    def needs_data(self) -> bool:
        """Whether the data-selection stage must run."""
        return self.data == "kshot+selected"

    @property
    def trains(self) -> bool:
        """Whether :meth:`build` trains anything."""
        return self.data != "none"

    @property
    def uses_bank(self) -> bool:
        """Whether the artifact depends on the LoRA bank (its identity is then part of the cache key)."""
        return self.needs_experts or self.oracle

    @property
    def uses_seed(self) -> bool:
        """Whether the artifact depends on the run's ``seed`` (training, or a seeded draw)."""
        return self.trains

    def build(self, ctx: MethodContext, out_dir: Path) -> dict[str, Any]:
        """Train / assemble the model into ``out_dir``; return facts for metrics.json."""
        raise NotImplementedError

    def load(self, ctx: MethodContext, out_dir: Path):
        """``(model, tokenizer)`` from what :meth:`build` wrote."""
        raise NotImplementedError

    def load_untrained(self, ctx: MethodContext):
        """``(model, tokenizer)`` as training started (for the routing report of routing methods), or ``None``."""
        return None

    def describe(self) -> dict[str, Any]:
        """What identifies this method's artifact (part of its cache key)."""
        return {"name": self.name, "data": self.data, "cls": type(self).__name__}


def draw_seed(seed: int, data_seed: int = 0) -> int:
    """The seed of a method's random choices for one K-shot draw: ``seed`` itself for ``data_seed=0``.

    Any other draw gets a seed hashed from ``(seed, data_seed)``, so three K-shot draws are also three random LoRAs,
    three router inits and three LoRAHub candidate sets, while ``data_seed=0`` reproduces every earlier result.
    """
    if int(data_seed) == 0:
        return int(seed)
    digest = hashlib.sha256(f"kexpert-draw:{int(seed)}:{int(data_seed)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def pick_random(names: list[str], seed: int, k: int = 1, data_seed: int = 0) -> list[str]:
    """``k`` distinct names drawn with :func:`draw_seed` ``(seed, data_seed)``.

    The names are sorted first, so the draw does not depend on bank order.
    """
    if k > len(names):
        raise ConfigError(f"cannot draw {k} of {len(names)} bank entries")
    return random.Random(draw_seed(seed, data_seed)).sample(sorted(names), k)
