"""``python select_experts.py``: K-shot expert selection for one task (Algorithm 1, docs/method.md §3).

Composes the stages: draw the K-shot, load the bank (validated against the base model), run the configured
strategy; writes ``experts.json``, ``rationales.jsonl`` (when reasoning perplexity was used) and
``selection_scatter.png`` into the run dir, and logs the same to the configured loggers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kexpert.models.factory import BaseModelSpec
from kexpert.pipeline.cache import StageCache
from kexpert.pipeline.stages import draw_kshot, load_bank, run_selection, selection_context
from kexpert.selection.experts.base import ExpertSelection, SelectionContext
from kexpert.selection.experts.report import log_to_loggers
from kexpert.utils.instantiate import instantiate
from kexpert.utils.loggers import build_loggers, close_loggers


def build_context(cfg: DictConfig, selector: Any) -> tuple[SelectionContext, BaseModelSpec]:
    """Task, K-shot, bank and scorer for a ``select_experts`` config (also used by the signal study)."""
    task = instantiate(cfg.task, key="task")
    spec: BaseModelSpec = instantiate(cfg.base_model, key="base_model")
    cache = StageCache(cfg.paths.cache_dir)
    kshot = draw_kshot(task, cfg.task, cfg.k_shot, cfg.data_seed, cache)
    bank = load_bank(cfg.get("bank"), spec)
    return selection_context(task, kshot, bank, spec, selector, cache.root, cfg.paths.data_dir), spec


def run(cfg: DictConfig) -> tuple[ExpertSelection, dict[str, Any]]:
    """Select the experts and write the report into ``paths.output_dir``.

    Returns:
        The selection and the ``experts.json`` document.
    """
    task = instantiate(cfg.task, key="task")
    spec: BaseModelSpec = instantiate(cfg.base_model, key="base_model")
    cache = StageCache(cfg.paths.cache_dir)
    kshot = draw_kshot(task, cfg.task, cfg.k_shot, cfg.data_seed, cache)
    bank = load_bank(cfg.get("bank"), spec)
    selection, report, png = run_selection(
        task,
        kshot,
        bank,
        spec,
        cfg.expert_selection,
        cache_dir=cache.root,
        data_dir=cfg.paths.data_dir,
        out_dir=Path(cfg.paths.output_dir),
        plot=bool(cfg.get("plot", True)),
    )
    loggers = build_loggers(cfg.get("logger"))
    try:
        log_to_loggers(loggers, report, png)
    finally:
        close_loggers(loggers, "success")
    tag = " [ORACLE: eval-split labels]" if selection.oracle else ""
    print(f"{task.name} ({selection.strategy}{tag}): {', '.join(selection.chosen)}")
    return selection, report
