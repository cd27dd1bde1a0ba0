"""Stage ``eval``: the task's evaluator on the eval split (every method is scored by the same code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kexpert.data.decontam import EvalIndex, find_overlaps
from kexpert.data.records import Instruction
from kexpert.eval.evaluator import evaluate
from kexpert.eval.per_expert import evaluate_experts_alone
from kexpert.eval.scoring import share_prefix_mode
from kexpert.models.factory import BaseModelSpec
from kexpert.pipeline.cache import StageCache
from kexpert.pipeline.keys import clean, node
from kexpert.pipeline.stages.results import Evaluation, TrainedModel
from kexpert.tasks.task import Task
from kexpert.utils.instantiate import to_container
from kexpert.utils.io import read_json, write_json, write_jsonl
from kexpert.utils.logging import get_logger

log = get_logger(__name__)
METRICS_VERSION = 2
"""Bumped whenever a metric's definition changes (2: ``acc_norm`` over characters without the leading space, as
lm-eval defines it; eval artifacts cached under another version are recomputed)."""


def eval_task(task: Task, eval_cfg: DictConfig) -> Task:
    """The task evaluation runs on: the configured one, or its ``eval.split`` override (training unchanged)."""
    override = eval_cfg.get("split")
    return task if override is None else task.with_eval_split(to_container(override), key="eval.split")


def eval_split_overlap(evaluated: Task, eval_cfg: DictConfig, train_items: list[Instruction]) -> dict[str, Any]:
    """Training items (D_K, D_A) that contain a question of an overridden eval split.

    Selection decontaminates D_A against the task's own eval split only, so evaluating on another split checks the
    training data against it again; a hit is logged as a warning and recorded in metrics.
    """
    index = EvalIndex()
    index.add_examples(evaluated.eval_examples(limit=eval_cfg.limit, seed=eval_cfg.seed))
    hits = find_overlaps(train_items, index)
    evals = sorted({h for v in hits.values() for h in v})
    if hits:
        log.warning(
            "eval.split: %d of %d training items contain %d questions of the evaluated split (e.g. %s); "
            "those scores are contaminated",
            len(hits),
            len(train_items),
            len(evals),
            ", ".join(evals[:3]),
        )
    return {"train_items_checked": len(train_items), "train_items_overlapping": len(hits), "eval_items_hit": evals}


def evaluator_kwargs(eval_cfg: DictConfig) -> dict[str, Any]:
    """The evaluator's settings from ``conf/eval``."""
    return {
        "mode": eval_cfg.mode,
        "batch_size": eval_cfg.batch_size,
        "generate_batch_size": eval_cfg.get("generate_batch_size"),
        "max_length": eval_cfg.max_length,
        "sandbox_timeout_s": eval_cfg.sandbox_timeout_s,
        "progress": eval_cfg.progress,
        "share_prefix": share_prefix_mode(eval_cfg.get("share_prefix", True)),
    }


def evaluate_model(
    evaluated: Task,
    task_cfg: DictConfig,
    eval_cfg: DictConfig,
    trained: TrainedModel,
    model: Any,
    tokenizer: Any,
    spec: BaseModelSpec,
    cache: StageCache,
    *,
    expert_names: list[str] | None = None,
) -> Evaluation:
    """Score the trained model on ``evaluated``'s eval split (cached by the trained artifact, task and eval config).

    Args:
        evaluated: The task (with its ``eval.split`` override applied).
        task_cfg: The task's config node (part of the key).
        eval_cfg: ``conf/eval``.
        trained: The train stage's result (its key is part of this stage's key).
        model: The loaded model.
        tokenizer: Its tokenizer.
        spec: The base model spec (prompt format).
        cache: The stage cache.
        expert_names: For a LoRA-MoE with ``eval.per_expert=true``: the experts' names (each is also scored
            alone); ``None`` otherwise.
    """
    ev_node = clean(to_container(eval_cfg))
    if ev_node.get("split") is None:
        ev_node.pop("split", None)  # no override: the same key as before eval.split existed
    per_expert = bool(eval_cfg.get("per_expert", False))
    inputs = {
        "train": trained.artifact.key,
        "task": node(task_cfg),
        "eval": ev_node,
        "per_expert": per_expert,
        "metrics": METRICS_VERSION,  # a cached eval.json computed with other metric definitions is not reused
    }
    kwargs = evaluator_kwargs(eval_cfg)

    def build(d: Path) -> None:
        examples = evaluated.eval_examples(limit=eval_cfg.limit, seed=eval_cfg.seed)
        res = evaluate(evaluated, model, tokenizer, spec.prompt_format, examples=examples, **kwargs)
        write_jsonl(d / "predictions.jsonl", res.predictions)
        write_json(d / "eval.json", res.metrics)
        if per_expert and expert_names is not None:
            alone = evaluate_experts_alone(
                evaluated, model, tokenizer, spec.prompt_format, examples, expert_names, **kwargs
            )
            write_json(d / "per_expert.json", alone)

    art = cache.run("eval", inputs, build)
    extra = read_json(art.path / "per_expert.json") if (art.path / "per_expert.json").exists() else None
    return Evaluation(read_json(art.path / "eval.json"), extra, art)
