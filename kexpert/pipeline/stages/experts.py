"""Stages ``experts`` (Algorithm 1, K-shot expert selection) and ``oracle`` (bank entries by eval accuracy).

:func:`run_selection` is the selection itself (the body of ``python select_experts.py``); :func:`choose_experts`
and :func:`rank_oracle` run it as cached stages of ``train.py`` over the K-shot and bank the run already holds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kexpert.bank.manifest import Bank
from kexpert.models.factory import BaseModelSpec
from kexpert.pipeline.cache import StageCache
from kexpert.pipeline.keys import bank_identity, clean, node
from kexpert.pipeline.stages.results import ExpertPick, KShot
from kexpert.selection.experts.base import ExpertSelection, SelectionContext
from kexpert.selection.experts.rationales import uses_base_model
from kexpert.selection.experts.report import build_report, scatter_png
from kexpert.selection.experts.signals import BankScorer
from kexpert.tasks.task import Task
from kexpert.utils.errors import ConfigError
from kexpert.utils.instantiate import instantiate, to_container
from kexpert.utils.io import read_json, sha1_of, write_json, write_jsonl
from kexpert.utils.logging import get_logger
from kexpert.utils.provenance import provenance

log = get_logger(__name__)


def _rationale_generator(signals_cfg: Any) -> tuple[Any, str | None]:
    """``(loader, identity)`` of a separate rationale model (``rationale_generator``), or ``(None, None)``."""
    gen = signals_cfg.rationale.generator
    if uses_base_model(gen):
        return None, None
    spec = gen if isinstance(gen, BaseModelSpec) else instantiate(DictConfig(gen), key="rationale_generator")

    def load():
        model, tok = spec.load()
        return model, tok, spec.prompt_format, spec.identity

    return load, spec.identity


def selection_context(
    task: Task, kshot: KShot, bank: Bank, spec: BaseModelSpec, selector: Any, cache_dir: Path, data_dir: Any
) -> SelectionContext:
    """The selection context: the K-shot, the bank and a scorer that caches every signal on disk."""
    rationale_loader, rationale_identity = _rationale_generator(selector.signals)
    scorer = BankScorer(
        task,
        kshot.examples,
        bank,
        model_loader=spec.load,
        prompt_format=spec.prompt_format,
        base_identity=spec.identity,
        config=selector.signals,
        cache_dir=cache_dir,
        data_dir=data_dir,
        rationale_loader=rationale_loader,
        rationale_identity=rationale_identity,
    )
    return SelectionContext(task=task, kshot=kshot.examples, bank=bank, scorer=scorer, cache_dir=cache_dir)


def run_selection(
    task: Task,
    kshot: KShot,
    bank: Bank,
    spec: BaseModelSpec,
    selection_cfg: DictConfig,
    *,
    cache_dir: Path,
    data_dir: Any,
    out_dir: Path,
    plot: bool = True,
) -> tuple[ExpertSelection, dict[str, Any], Path | None]:
    """Select experts and write ``experts.json`` (+ ``rationales.jsonl``, ``selection_scatter.png``) to ``out_dir``.

    Returns:
        The selection, the ``experts.json`` document and the scatter plot (``None`` when not drawn).
    """
    start = time.perf_counter()
    selector = instantiate(selection_cfg, key="expert_selection")
    ctx = selection_context(task, kshot, bank, spec, selector, Path(cache_dir), data_dir)
    log.info(
        "%s: selecting %d experts from bank %s (%d LoRAs) with %s on a %d-shot",
        task.name,
        selector.num_experts,
        bank.name,
        len(bank),
        selector.name,
        len(kshot.examples),
    )
    selection = selector.select(ctx)
    for s in selector.signals.extra:
        ctx.signal(s)
    resolved = to_container(selection_cfg)
    report = build_report(
        ctx,
        selection,
        selector.diversity,
        {
            "task": task.name,
            "k_shot": int(kshot.inputs["k_shot"]),
            "data_seed": int(kshot.inputs["data_seed"]),
            "num_experts": selector.num_experts,
            "base_model": spec.identity,
            "expert_selection": resolved,
            "config_hash": sha1_of(resolved),
            "wall_s": round(time.perf_counter() - start, 3),
            "provenance": provenance(),
        },
    )
    out_dir = Path(out_dir)
    if ctx.scorer.computed_rationales is not None:
        write_jsonl(out_dir / "rationales.jsonl", ctx.scorer.computed_rationales)
    write_json(out_dir / "experts.json", report)
    png = scatter_png(report, out_dir / "selection_scatter.png") if plot else None
    tag = " [ORACLE: eval-split labels]" if selection.oracle else ""
    log.info("%s: chose %s%s -> %s", task.name, selection.chosen, tag, out_dir / "experts.json")
    return selection, report, png


def _ranking(report: dict[str, Any], names: list[str]) -> list[str]:
    """Bank entries ordered by the report's fused rank (ties: bank order)."""
    rows = report.get("entries") or report.get("loras") or []
    by_name = rows if isinstance(rows, dict) else {r["name"]: r for r in rows if "name" in r}
    ranks = {name: row.get("rank_sum", 0.0) for name, row in by_name.items()}
    return sorted(names, key=lambda n: (ranks.get(n, float("inf")), names.index(n)))


def _cached_selection(
    stage: str,
    inputs: dict[str, Any],
    task: Task,
    kshot: KShot,
    bank: Bank,
    spec: BaseModelSpec,
    selection_cfg: DictConfig,
    cache: StageCache,
    data_dir: Any,
    plot: bool,
) -> ExpertPick:
    def build(d: Path) -> None:
        run_selection(
            task, kshot, bank, spec, selection_cfg, cache_dir=cache.root, data_dir=data_dir, out_dir=d, plot=plot
        )

    art = cache.run(stage, inputs, build)
    report = read_json(art.path / "experts.json")
    return ExpertPick(list(report["chosen"]), _ranking(report, bank.names()), report, art)


def choose_experts(
    task: Task,
    task_cfg: DictConfig,
    kshot: KShot,
    bank: Bank,
    spec: BaseModelSpec,
    selection_cfg: DictConfig,
    cache: StageCache,
    data_dir: Any,
    plot: bool = True,
) -> ExpertPick:
    """Stage ``experts``: Algorithm 1 on the run's K-shot and bank (cached by K-shot, model, bank and strategy)."""
    inputs = {
        **kshot.inputs,
        "base_model": spec.identity,
        "bank": bank_identity(bank),
        "expert_selection": node(selection_cfg),
    }
    return _cached_selection("experts", inputs, task, kshot, bank, spec, selection_cfg, cache, data_dir, plot)


def rank_oracle(
    task: Task,
    task_cfg: DictConfig,
    kshot: KShot,
    bank: Bank,
    spec: BaseModelSpec,
    oracle_cfg: DictConfig | None,
    cache: StageCache,
    data_dir: Any,
    plot: bool = True,
) -> ExpertPick:
    """Stage ``oracle``: every bank entry ranked by eval-split accuracy (Source Best first). ORACLE."""
    if oracle_cfg is None:
        raise ConfigError("oracle_selection: missing (train.yaml sets it from conf/expert_selection/oracle)")
    inputs = {
        "task": node(task_cfg),
        "base_model": spec.identity,
        "bank": bank_identity(bank),
        "oracle_selection": clean(to_container(oracle_cfg)),
        "k_shot": int(kshot.inputs["k_shot"]),
        "data_seed": int(kshot.inputs["data_seed"]),
    }
    return _cached_selection("oracle", inputs, task, kshot, bank, spec, oracle_cfg, cache, data_dir, plot)
