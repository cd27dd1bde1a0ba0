"""Helpers for Lightning strategy configs (FSDP wrap policies need classes, YAML has dotted names)."""

from __future__ import annotations

import importlib


def module_classes(names: list[str], ignore_missing: bool = True) -> set[type]:
    """Import ``module.Class`` names into a set of classes (FSDP ``auto_wrap_policy``).

    Args:
        names: Dotted class paths.
        ignore_missing: Skip classes whose module is not installed (another model family).
    """
    out: set[type] = set()
    for name in names:
        mod, _, cls = name.rpartition(".")
        try:
            out.add(getattr(importlib.import_module(mod), cls))
        except (ImportError, AttributeError):
            if not ignore_missing:
                raise
    return out
