"""The stages of ``train.py`` in pipeline order, and which of them a run's ``stages=`` selects."""

from __future__ import annotations

from typing import Any

from kexpert.utils.errors import ConfigError

STAGES = ("kshot", "experts", "data", "train", "eval", "report")


def resolve_stages(value: Any) -> list[str]:
    """``all`` / a stage name (runs the prefix up to it) / a list (exactly those, in pipeline order)."""
    if value in (None, "all"):
        return list(STAGES)
    if isinstance(value, str):
        if value not in STAGES:
            raise ConfigError(f"stages: unknown stage {value!r}; expected all, one of {', '.join(STAGES)} or a list")
        return list(STAGES[: STAGES.index(value) + 1])
    names = list(value)
    bad = [s for s in names if s not in STAGES]
    if bad:
        raise ConfigError(f"stages: unknown stage(s) {bad}; expected a subset of {list(STAGES)}")
    return [s for s in STAGES if s in names]
