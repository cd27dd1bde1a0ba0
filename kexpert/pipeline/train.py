"""``python train.py``: the whole ROCKET pipeline for one task, as cached stages over typed results.

Stages, in order (``stages=`` runs a prefix or a subset), each a function in :mod:`kexpert.pipeline.stages`:

* ``kshot``: draw the K-shot (``task``, ``k_shot``, ``data_seed``) -> :class:`KShot`;
* ``experts``: K-shot expert selection (Algorithm 1; ``bank``, ``expert_selection``) -> :class:`ExpertPick`,
  when the method uses it;
* ``data``: Sim-Div data selection (Algorithm 2; ``pool``, ``encoder``, ``data_selection``) ->
  :class:`SelectedData`, when the method uses it;
* ``train``: build / fine-tune the method's model (``method``, ``moe``, ``optim``, ``trainer``, ``seed``) ->
  :class:`TrainedModel`;
* ``eval``: evaluate it on the task's eval split (``eval``) -> :class:`Evaluation`;
* ``report``: ``metrics.json`` (per-stage wall time, trainable parameters), links to the artifacts used, routing
  statistics for MoE methods.

Every stage's artifact lives in ``${paths.cache_dir}/stages/<stage>/<hash of exactly its inputs>`` and is
published atomically (:mod:`kexpert.pipeline.cache`): a sweep over ``moe.top_k`` or ``seed`` reuses the K-shot,
the expert selection, the embeddings and the selected data.
"""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from kexpert.methods.base import Method, MethodContext
from kexpert.pipeline.cache import StageCache
from kexpert.pipeline.stages import (
    DATA_KEYS,
    DataSelectionConfig,
    StageLog,
    choose_experts,
    count_params,
    draw_kshot,
    eval_split_overlap,
    eval_task,
    evaluate_model,
    load_bank,
    log_metrics,
    publish_run_dir,
    rank_oracle,
    select_data,
    selects_data,
    stage_cache_summary,
    summary_line,
    train_inputs,
    train_method,
)
from kexpert.pipeline.stages.order import resolve_stages
from kexpert.pipeline.stages.report import init_routing_report, routing_report
from kexpert.pipeline.validate import validate_config
from kexpert.utils.distributed import process_rank
from kexpert.utils.errors import InvalidGridPoint
from kexpert.utils.hydra_choices import config_choices
from kexpert.utils.instantiate import instantiate, to_container
from kexpert.utils.io import sha1_of, write_json
from kexpert.utils.loggers import build_loggers, close_loggers
from kexpert.utils.logging import get_logger
from kexpert.utils.provenance import provenance

log = get_logger(__name__)


def run(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the configured stages; with ``skip_invalid=true`` an :class:`InvalidGridPoint` is recorded, not raised.

    Returns:
        ``(metrics, objects)``: metrics.json's content and the stage results / model objects (for tests).
    """
    loggers: list = []
    status = "failed"
    try:
        validate_config(cfg)
        loggers = build_loggers(cfg.get("logger"))
        out = run_stages(cfg, loggers)
        status = "success"
        return out
    except InvalidGridPoint as e:
        if not cfg.get("skip_invalid", False):
            raise
        log.warning("skipping this grid point: %s", e)
        metrics = {
            "skipped": str(e),
            "method": cfg.method.get("name"),
            "task": cfg.task.get("name"),
            **{k: int(cfg[k]) for k in ("k_shot", "data_seed", "seed")},
            "sweep_name": cfg.get("sweep_name"),
        }
        write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)
        print(f"skipped: {e}")
        status = "success"
        return metrics, {}
    finally:
        close_loggers(loggers, status)


def release_memory() -> None:
    """Free the memory of models whose references were dropped.

    A Lightning ``Trainer`` and its module reference each other, so a trained model is only freed by the cycle
    collector; CUDA's caching allocator keeps the freed blocks until ``empty_cache``. Called wherever a stage's model
    goes out of scope, before the next model is built.
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class RunObjects(dict):
    """``run``'s stage results and model objects; a ``"model"`` released for the report is reloaded on first access.

    Only item access (``objects["model"]``) reloads; ``get`` does not.

    Args:
        reload: Returns ``(model, tokenizer)`` of the trained artifact, or ``None`` when nothing was released.
        **objects: The objects (``stages``, ``model``, ``tokenizer``).
    """

    def __init__(self, reload: Callable[[], tuple[Any, Any]] | None = None, **objects: Any) -> None:
        super().__init__(**objects)
        self._reload = reload

    def __missing__(self, key: str) -> Any:
        if key != "model" or self._reload is None:
            raise KeyError(key)
        model = self["model"] = self._reload()[0]
        return model


def _header(cfg: DictConfig, method: Method, task_name: str, stages: list[str]) -> dict[str, Any]:
    """The run's identity in ``metrics.json``: method, task, seeds, the chosen config-group options."""
    metrics: dict[str, Any] = {
        "method": method.name,
        "label": method.label,
        "task": task_name,
        **{k: int(cfg[k]) for k in ("k_shot", "data_seed", "seed")},
        "stages_run": stages,
        "sweep_name": cfg.get("sweep_name"),
        "tags": list(cfg.get("tags") or []),
        "oracle": method.oracle,
    }
    if cfg.get("moe") is not None:
        metrics.update(num_experts=int(cfg.moe.num_experts), top_k=int(cfg.moe.top_k))
    choices = config_choices()
    for name in ("expert_selection", "data_selection", "encoder", "pool", "moe", "base_model", "bank"):
        group = cfg.get(name)
        if group is not None:
            metrics[name] = choices.get(name) or group.get("name") or group.get("_target_", "").rsplit(".", 1)[-1]
    if cfg.get("data_selection") is not None and cfg.data_selection.get("budget") is not None:
        metrics["budget"] = int(cfg.data_selection.budget) if selects_data(cfg.data_selection) else 0
    return metrics


def run_stages(cfg: DictConfig, loggers: list) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compose the stage functions for one config (each upstream result computed once, on first use)."""
    t_run = time.perf_counter()
    stages = resolve_stages(cfg.get("stages", "all"))
    cache = StageCache(cfg.paths.cache_dir, enabled=bool(cfg.get("use_cache", True)))
    out_dir = Path(cfg.paths.output_dir)
    task = instantiate(cfg.task, key="task")
    evaluated = eval_task(task, cfg.eval)  # the task with its eval.split override, built once
    if "eval" in stages and "train" in stages:  # an empty split or eval.limit fails here, before any model loads
        evaluated.eval_examples(limit=cfg.eval.limit, seed=cfg.eval.seed)
    spec = instantiate(cfg.base_model, key="base_model")
    method: Method = instantiate(cfg.method, key="method")
    data_dir, plot = cfg.paths.data_dir, bool(cfg.get("plot", True))
    log_ = StageLog()
    metrics = _header(cfg, method, task.name, stages)

    def timed(name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        log_.wall_s[name] = round(time.perf_counter() - t0, 3)
        return out

    @functools.cache
    def kshot():
        return log_.record_result(draw_kshot(task, cfg.task, cfg.k_shot, cfg.data_seed, cache))

    @functools.cache
    def bank():
        return load_bank(
            cfg.get("bank"),
            spec,
            build_if_missing=bool(cfg.get("build_bank_if_missing")),
            tasks_cfg=cfg.get("bank_tasks"),
            optim_cfg=cfg.optim,
            trainer_cfg=cfg.trainer,
        )

    @functools.cache
    def experts():
        return log_.record_result(
            choose_experts(task, cfg.task, kshot(), bank(), spec, cfg.expert_selection, cache, data_dir, plot)
        )

    @functools.cache
    def oracle():
        sel = cfg.get("oracle_selection")
        return log_.record_result(rank_oracle(task, cfg.task, kshot(), bank(), spec, sel, cache, data_dir, plot))

    @functools.cache
    def data():
        return log_.record_result(
            select_data(task, kshot(), DataSelectionConfig(**{k: cfg.get(k) for k in DATA_KEYS}), cache, data_dir)
        )

    if "kshot" in stages:
        timed("kshot", kshot)
        metrics["kshot_pool"] = task.kshot_pool_source
    if "experts" in stages and method.needs_experts:
        metrics["experts"] = timed("experts", experts).chosen
    if "data" in stages and method.needs_data:
        metrics["selected_items"] = len(timed("data", data).items)
    model = tok = evaluation = None
    if "train" in stages:
        ctx = MethodContext(
            task=task,
            base_spec=spec,
            kshot=kshot().examples,
            kshot_items=kshot().items,
            seed=int(cfg.seed),
            data_seed=int(cfg.data_seed),
            optim=cfg.optim,
            trainer=cfg.trainer,
            moe=cfg.get("moe"),
            get_bank=bank,
            get_experts=lambda: experts().chosen,
            get_selected=lambda: data().items,
            get_oracle=lambda: oracle().ranking,
            logger=loggers[0] if loggers else None,
        )
        inputs = train_inputs(
            method,
            cfg.task,
            spec,
            kshot(),
            cfg.seed,
            optim_cfg=cfg.optim,
            trainer_cfg=cfg.trainer,
            moe_cfg=cfg.get("moe"),
            bank=bank() if method.uses_bank else None,
            experts=experts() if method.needs_experts else None,
            data=data() if method.needs_data else None,
        )
        trained = log_.record_result(timed("train", train_method, method, ctx, inputs, cache))
        release_memory()  # the training model (and its trainer, optimizer state) went out of scope
        metrics["method_info"] = {k: v for k, v in trained.info.items() if k != "objective_history"}
        if process_rank() != 0:  # a rank > 0 of a multi-process training: rank zero evaluates and reports
            log.info("rank %d: training done; evaluation and report are rank zero's", process_rank())
            return metrics, {}
        if "eval" in stages:
            model, tok = timed("load_model", method.load, ctx, trained.artifact.path)
            metrics["params"] = count_params(model)
            metrics["task_info"] = evaluated.info()
            if cfg.eval.get("split") is not None:
                items = list(kshot().items) if method.trains or method.needs_data else []
                items += data().items if method.needs_data else []
                metrics["eval_split_overlap"] = eval_split_overlap(evaluated, cfg.eval, items)
            names = (
                (metrics.get("experts") or [f"expert_{i}" for i in range(int(cfg.moe.num_experts))])
                if (method.routes)
                else None
            )
            evaluation = log_.record_result(
                timed(
                    "eval",
                    evaluate_model,
                    evaluated,
                    cfg.task,
                    cfg.eval,
                    trained,
                    model,
                    tok,
                    spec,
                    cache,
                    expert_names=names,
                )
            )
            metrics["eval"] = evaluation.metrics
            if evaluation.per_expert is not None:
                metrics["per_expert"] = evaluation.per_expert
            metrics["score"] = evaluation.score
    reload = None
    if "report" in stages:
        t0 = time.perf_counter()
        publish_run_dir(out_dir, log_, evaluation)
        if model is not None and method.routes and cfg.get("routing_stats", True):
            chosen = experts().chosen if method.needs_experts else None
            routing, probe, stats = routing_report(task, evaluated, cfg.eval, spec, model, tok, chosen, out_dir)
            model = None  # released before the untrained MoE (the init-correlation reference) is built
            reload = functools.partial(method.load, ctx, trained.artifact.path)
            release_memory()
            routing.update(init_routing_report(probe, stats, functools.partial(method.load_untrained, ctx), out_dir))
            release_memory()
            metrics["routing"] = routing
        log_.wall_s["report"] = round(time.perf_counter() - t0, 3)
    metrics["stage_wall_s"] = log_.wall_s
    metrics["stage_cache"] = stage_cache_summary(log_)
    metrics["config_hash"] = sha1_of(to_container(cfg))
    metrics["wall_s"] = round(time.perf_counter() - t_run, 3)
    metrics["provenance"] = provenance()
    write_json(out_dir / "metrics.json", metrics)
    log_metrics(loggers, metrics)
    if evaluation is not None:
        print(summary_line(task.name, method.label, method.oracle, evaluation, out_dir))
    objects = RunObjects(reload, stages=log_, tokenizer=tok)
    if reload is None:
        objects["model"] = model
    return metrics, objects
