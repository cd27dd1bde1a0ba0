"""``python eval.py``: evaluate a base model (optionally with a LoRA adapter) on one task.

Everything a user gives is checked before the model loads: the task's eval split is read and the ``eval.limit``
subset drawn (an empty split or an empty selection is an error), and the adapter goes through the one loader
(:func:`kexpert.models.adapter.load_adapter`: config, readable safetensors, finite values, base model name, with
``allow_base_mismatch=true`` to override); its target modules and shapes are checked against the loaded model before
peft touches it. Each failure is one line and exit 2; nothing is written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kexpert.eval.evaluator import EvalResult, evaluate
from kexpert.eval.scoring import share_prefix_mode
from kexpert.models.adapter import check_adapter_fits, load_adapter
from kexpert.models.factory import BaseModelSpec
from kexpert.tasks.task import Task
from kexpert.utils.instantiate import instantiate, to_container
from kexpert.utils.io import sha1_of, write_json, write_jsonl
from kexpert.utils.logging import get_logger
from kexpert.utils.provenance import provenance

log = get_logger(__name__)
_MODEL_CACHE: dict[str, Any] = {}


def load_model_cached(spec: BaseModelSpec, adapter: str | None = None, allow_base_mismatch: bool = False):
    """Load ``(model, tokenizer)`` once per process (a sequential multirun over tasks reuses it).

    The adapter is read and checked (:func:`~kexpert.models.adapter.load_adapter`) before the base model loads, and
    against the loaded model's modules before peft applies it.
    """
    key = f"{spec.identity}|{spec.dtype}|{adapter}"
    if key not in _MODEL_CACHE:
        lora = (
            load_adapter(adapter, base_identity=spec.identity, allow_base_mismatch=allow_base_mismatch)
            if adapter
            else None
        )
        _MODEL_CACHE.clear()
        model, tok = spec.load()
        if lora is not None:
            from peft import PeftModel

            check_adapter_fits(lora, model)
            model = PeftModel.from_pretrained(model, str(adapter))
            model.eval()
        _MODEL_CACHE[key] = (model, tok)
    return _MODEL_CACHE[key]


def run(cfg: DictConfig) -> EvalResult:
    """Evaluate and write ``predictions.jsonl`` + ``metrics.json`` into ``paths.output_dir``.

    Returns:
        The evaluation result.
    """
    task: Task = instantiate(cfg.task, key="task")
    if cfg.eval.get("split") is not None:
        task = task.with_eval_split(to_container(cfg.eval.split), key="eval.split")
    ev = cfg.eval
    examples = task.eval_examples(limit=ev.limit, seed=ev.seed)  # data errors before any model loads
    spec: BaseModelSpec = instantiate(cfg.base_model, key="base_model")
    out_dir = Path(cfg.paths.output_dir)
    t0 = time.perf_counter()
    model, tok = load_model_cached(spec, cfg.get("adapter"), bool(cfg.get("allow_base_mismatch", False)))
    load_s = time.perf_counter() - t0
    result = evaluate(
        task,
        model,
        tok,
        spec.prompt_format,
        examples,
        limit=ev.limit,
        seed=ev.seed,
        mode=ev.mode,
        batch_size=ev.batch_size,
        generate_batch_size=ev.get("generate_batch_size"),
        max_length=ev.max_length,
        sandbox_timeout_s=ev.sandbox_timeout_s,
        progress=ev.progress,
        share_prefix=share_prefix_mode(ev.get("share_prefix", True)),
    )
    adapter = cfg.get("adapter")
    metrics = {
        "score": result.score,
        "label": Path(adapter).name if adapter else "base model",
        "eval": result.metrics,
        "task_info": task.info(),
        "model": spec.identity,
        "adapter": adapter,
        "config_hash": sha1_of(to_container(cfg)),
        "model_load_s": round(load_s, 3),
        "provenance": provenance(),
    }
    write_jsonl(out_dir / "predictions.jsonl", result.predictions)
    write_json(out_dir / "metrics.json", metrics)
    key = result.metrics["primary_metric"]
    lo, hi = result.metrics[f"{key}_ci95"]
    extra = f" (acc_norm {100 * result.metrics['acc_norm']:.1f})" if "acc_norm" in result.metrics else ""
    log.info(
        "%s: %s = %.1f%% [%.1f, %.1f] n=%d%s -> %s",
        task.name,
        key,
        100 * result.score,
        100 * lo,
        100 * hi,
        result.metrics["n"],
        extra,
        out_dir,
    )
    print(
        f"{task.name}: {key} = {100 * result.score:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}, "
        f"n={result.metrics['n']}, mode={result.metrics['mode']}){extra}"
    )
    return result
