"""Normalized records.

Every task example, whatever its source schema (local JSONL in AI2, HF or LLM-Adapters format, or a hub
dataset), becomes one :class:`Example`. Open instruction data becomes an :class:`Instruction`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One task example.

    Attributes:
        id: Stable identifier (source id, or a content hash when the source has none).
        task: Task name (``arc_c``, ``gsm8k`` ...).
        question: The question / goal / problem statement.
        context: Supporting passage (BoolQ) or ``None``.
        choices: Answer option texts for multiple choice, else ``None``.
        choice_labels: Option labels as the source gives them (``A``-``D`` or ``1``-``4``).
        gold: The gold answer: option label for multiple choice, final number for GSM8K, reference code
            for MBPP.
        gold_index: Index of the gold option for multiple choice, else ``None``.
        rationale: A worked solution when the source has one (GSM8K) or a CoT rationale, else ``None``.
        tests: MBPP assert statements, else ``None``.
        test_setup: MBPP setup code run before the tests.
    """

    id: str
    task: str
    question: str
    gold: str
    context: str | None = None
    choices: tuple[str, ...] | None = None
    choice_labels: tuple[str, ...] | None = None
    gold_index: int | None = None
    rationale: str | None = None
    tests: tuple[str, ...] | None = None
    test_setup: str = ""

    def __post_init__(self) -> None:
        if self.choices is not None:
            if self.choice_labels is None or len(self.choice_labels) != len(self.choices):
                raise ValueError(f"{self.task}/{self.id}: choice_labels must match choices")
            if self.gold_index is None or not 0 <= self.gold_index < len(self.choices):
                raise ValueError(f"{self.task}/{self.id}: gold_index out of range")

    @property
    def gold_text(self) -> str:
        """The gold option text for multiple choice, else the gold answer."""
        if self.choices is not None and self.gold_index is not None:
            return self.choices[self.gold_index]
        return self.gold

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        d = dataclasses.asdict(self)
        for k in ("choices", "choice_labels", "tests"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        for k in ("choices", "choice_labels", "tests"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass(frozen=True)
class Instruction:
    """One supervised fine-tuning item in the alpaca layout the paper uses.

    Attributes:
        instruction: The instruction text.
        output: The target response.
        input: Optional extra input, appended to the instruction in the prompt.
        source: Where it came from (pool file, task K-shot ...).
        meta: Free-form extra fields (scores, ids).
    """

    instruction: str
    output: str
    input: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instruction:
        """Build from a dict with at least ``instruction`` and ``output``."""
        return cls(
            instruction=str(d["instruction"]),
            output=str(d["output"]),
            input=str(d.get("input") or ""),
            source=str(d.get("source") or ""),
            meta=dict(d.get("meta") or {}),
        )
