"""``python select_experts.py``: K-shot expert selection for one task (Algorithm 1, METHOD.md section 3).

Draws the K-shot, loads the bank (validated against the base model), runs the configured strategy and writes
``experts.json``, ``rationales.jsonl`` (when reasoning perplexity was used) and ``selection_scatter.png`` into the
run dir, and logs the same to the configured loggers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kexpert.data.kshot import sample_kshot
from kexpert.models.factory import BaseModelSpec
from kexpert.selection.experts.base import ExpertSelection, SelectionContext
from kexpert.selection.experts.report import build_report, log_to_loggers, scatter_png
from kexpert.selection.experts.signals import BankScorer
from kexpert.tasks.task import Task
from kexpert.utils.instantiate import instantiate, to_container
from kexpert.utils.io import sha1_of, write_json, write_jsonl
from kexpert.utils.loggers import build_loggers
from kexpert.utils.logging import get_logger
from kexpert.utils.provenance import provenance

log = get_logger(__name__)


def _rationale_loader(signals_cfg):
    gen = signals_cfg.rationale.generator
    if gen is None:
        return None
    spec = gen if isinstance(gen, BaseModelSpec) else instantiate(DictConfig(gen), key="rationale.generator")

    def load():
        model, tok = spec.load()
        return model, tok, spec.prompt_format, spec.identity

    return load


def build_context(cfg: DictConfig, selector) -> tuple[SelectionContext, BaseModelSpec]:
    """Task, K-shot, bank and scorer for a config (shared with the signal study)."""
    task: Task = instantiate(cfg.task, key="task")
    spec: BaseModelSpec = instantiate(cfg.base_model, key="base_model")
    bank = instantiate(cfg.bank, key="bank").load(spec)
    kshot = sample_kshot(task.kshot_pool(), int(cfg.k_shot), int(cfg.data_seed))
    cache_dir = Path(cfg.paths.cache_dir)
    scorer = BankScorer(
        task,
        kshot,
        bank,
        model_loader=spec.load,
        prompt_format=spec.prompt_format,
        base_identity=spec.identity,
        config=selector.signals,
        cache_dir=cache_dir,
        data_dir=cfg.paths.data_dir,
        rationale_loader=_rationale_loader(selector.signals),
    )
    return SelectionContext(task=task, kshot=kshot, bank=bank, scorer=scorer, cache_dir=cache_dir), spec


def run(cfg: DictConfig) -> tuple[ExpertSelection, dict[str, Any]]:
    """Select the experts and write the report into ``paths.output_dir``.

    Returns:
        The selection and the ``experts.json`` document.
    """
    start = time.perf_counter()
    selector = instantiate(cfg.expert_selection, key="expert_selection")
    ctx, spec = build_context(cfg, selector)
    log.info(
        "%s: selecting %d experts from bank %s (%d LoRAs) with %s on a %d-shot",
        ctx.task.name,
        selector.num_experts,
        ctx.bank.name,
        len(ctx.bank),
        selector.name,
        len(ctx.kshot),
    )
    selection = selector.select(ctx)
    for s in selector.signals.extra:
        ctx.signal(s)
    out_dir = Path(cfg.paths.output_dir)
    resolved = to_container(cfg.expert_selection)
    report = build_report(
        ctx,
        selection,
        selector.diversity,
        {
            "task": ctx.task.name,
            "k_shot": int(cfg.k_shot),
            "data_seed": int(cfg.data_seed),
            "num_experts": selector.num_experts,
            "base_model": spec.identity,
            "expert_selection": resolved,
            "config_hash": sha1_of(resolved),
            "wall_s": round(time.perf_counter() - start, 3),
            "provenance": provenance(),
        },
    )
    if ctx.scorer.computed_rationales is not None:
        write_jsonl(out_dir / "rationales.jsonl", ctx.scorer.computed_rationales)
    write_json(out_dir / "experts.json", report)
    png = scatter_png(report, out_dir / "selection_scatter.png") if cfg.get("plot", True) else None
    log_to_loggers(build_loggers(cfg.get("logger")), report, png)
    tag = " [ORACLE: eval-split labels]" if selection.oracle else ""
    log.info("%s: chose %s%s -> %s", ctx.task.name, selection.chosen, tag, out_dir / "experts.json")
    print(f"{ctx.task.name} ({selection.strategy}{tag}): {', '.join(selection.chosen)}")
    return selection, report
