"""The single registry of row formats: format name -> how a raw row of that schema is normalized.

Two kinds of rows are read:

* **task rows** (``conf/task/*.yaml``: ``local_format`` / ``hub_format``) become one
  :class:`~kexpert.data.records.Example`; the normalizers are in :mod:`kexpert.data.formats.tasks`;
* **pool rows** (``conf/pool/*.yaml`` and bank entries: ``fmt``) become a list of
  :class:`~kexpert.data.records.Instruction` (zero or more); the normalizers are in :mod:`kexpert.data.formats.pools`.

A name may serve both kinds (``gsm8k``: a task split, or GSM8K rows used as pool data), so each
:class:`RowFormat` records which kinds it has. Look one up with :func:`example_normalizer` or
:func:`instruction_normalizer`: an unknown name, or a name without that kind, is a :class:`ConfigError`
naming the format and the formats of the expected kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kexpert.data.formats import pools, tasks
from kexpert.data.formats.pools import InstructionNormalizer
from kexpert.data.formats.tasks import ExampleNormalizer
from kexpert.utils.errors import ConfigError

RowKind = Literal["task", "pool"]
"""``task``: a row becomes one :class:`Example`; ``pool``: a row becomes a list of :class:`Instruction`."""

_YIELDS = {"task": "task rows into an Example", "pool": "pool rows into Instructions"}


@dataclass(frozen=True)
class RowFormat:
    """One named row schema and its normalizers.

    Attributes:
        name: The format name used in configs.
        example: Task-row normalizer (``(row, task, index) -> Example``), or ``None``.
        instructions: Pool-row normalizer (``row -> list[Instruction]``), or ``None``.
    """

    name: str
    example: ExampleNormalizer | None = None
    instructions: InstructionNormalizer | None = None

    @property
    def kinds(self) -> tuple[RowKind, ...]:
        """The kinds of rows this format reads (``task``, ``pool`` or both)."""
        return tuple(k for k, fn in (("task", self.example), ("pool", self.instructions)) if fn is not None)


def _registry() -> dict[str, RowFormat]:
    task_rows: dict[str, ExampleNormalizer] = {
        "arc_ai2": tasks.arc_ai2,
        "arc_hf": tasks.arc_hf,
        "arc_llm_adapters": tasks.arc_llm_adapters,
        "piqa": tasks.piqa,
        "boolq_superglue": tasks.boolq_superglue,
        "boolq_google": tasks.boolq_google,
        "gsm8k": tasks.gsm8k,
        "mbpp": tasks.mbpp,
    }
    pool_rows: dict[str, InstructionNormalizer] = {
        "alpaca": pools.alpaca,
        "gpteacher": pools.gpteacher,
        "commonsense_qa": pools.commonsense_qa,
        "commonsense_qa_hf": pools.commonsense_qa_hf,
        "social_i_qa": pools.social_i_qa,
        "csqa2": pools.csqa2,
        "qasc_mcq": pools.qasc_mcq,
        "llm_adapters_mc": pools.llm_adapters_mc,
        "math_cot": pools.math_cot,
        "mawps": pools.mawps,
        "svamp": pools.svamp,
        "asdiv": pools.asdiv,
        "aqua_rat": pools.aqua_rat,
        "self_instruct_seed": pools.self_instruct_seed,
        "t0_p3": pools.prompt_completion,
        "prompt_completion": pools.prompt_completion,
        "gsm8k": pools.gsm8k,
    }
    return {
        name: RowFormat(name, example=task_rows.get(name), instructions=pool_rows.get(name))
        for name in [*task_rows, *(n for n in pool_rows if n not in task_rows)]
    }


FORMATS: dict[str, RowFormat] = _registry()
"""Format name -> :class:`RowFormat`: every task-row and pool-row schema."""


def format_names(kind: RowKind) -> list[str]:
    """The sorted names of the formats that read ``kind`` rows."""
    return sorted(name for name, fmt in FORMATS.items() if kind in fmt.kinds)


def get_format(name: str, kind: RowKind, where: str) -> RowFormat:
    """The registered format ``name``, checked to read ``kind`` rows.

    Args:
        name: A format name from a config.
        kind: The kind of rows the caller reads.
        where: What names the format in the error message (config key, file, hub spec).

    Returns:
        The format.

    Raises:
        ConfigError: ``name`` is not registered, or does not read ``kind`` rows.
    """
    fmt = FORMATS.get(name)
    if fmt is None:
        raise ConfigError(f"{where}: unknown {kind} format {name!r}; expected one of {format_names(kind)}")
    if kind not in fmt.kinds:
        raise ConfigError(
            f"{where}: format {name!r} reads {', '.join(_YIELDS[k] for k in fmt.kinds)}, not {_YIELDS[kind]}; "
            f"expected one of the {kind} formats {format_names(kind)}"
        )
    return fmt


def example_normalizer(name: str, where: str) -> ExampleNormalizer:
    """The task-row normalizer of format ``name`` (see :func:`get_format`)."""
    fn = get_format(name, "task", where).example
    assert fn is not None
    return fn


def instruction_normalizer(name: str, where: str) -> InstructionNormalizer:
    """The pool-row normalizer of format ``name`` (see :func:`get_format`)."""
    fn = get_format(name, "pool", where).instructions
    assert fn is not None
    return fn


__all__ = [
    "FORMATS",
    "ExampleNormalizer",
    "InstructionNormalizer",
    "RowFormat",
    "RowKind",
    "example_normalizer",
    "format_names",
    "get_format",
    "instruction_normalizer",
]
