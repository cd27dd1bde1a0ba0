"""The evaluator: one code path that scores any model on any task.

Modes:
* ``loglikelihood`` (multiple choice): the option whose continuation has the highest log-likelihood;
  reports raw ``acc`` (the primary metric) and length-normalised ``acc_norm``, defined as lm-eval-harness
  defines it: log-likelihood divided by the number of characters of the option, without the leading space
  (:func:`kexpert.eval.metrics.norm_length`; docs/evaluation.md).
* ``generate``: greedy decoding, then the task's answer extraction; ``acc`` is exact match. MBPP runs the
  extracted code against its tests in :mod:`kexpert.eval.sandbox` and reports ``pass@1``.

Every metric carries ``n`` and a 95% Wilson interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from kexpert.data.prompts import PromptFormat
from kexpert.data.records import Example
from kexpert.eval.generation import generate_greedy
from kexpert.eval.metrics import pick_options, proportion
from kexpert.eval.sandbox import run_tests
from kexpert.eval.scoring import score_continuations
from kexpert.tasks.task import Task
from kexpert.utils.errors import ConfigError


@dataclass
class EvalResult:
    """Metrics and per-item predictions of one evaluation."""

    metrics: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def score(self) -> float:
        """The task's primary metric."""
        return float(self.metrics[self.metrics["primary_metric"]])


def evaluate(
    task: Task,
    model,
    tokenizer,
    prompt_format: PromptFormat,
    examples: list[Example] | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
    mode: str | None = None,
    batch_size: int = 8,
    generate_batch_size: int | None = None,
    max_length: int = 2048,
    sandbox_timeout_s: float = 10.0,
    progress: bool = True,
    adapter_name: str | None = None,
    share_prefix: bool | str = True,
) -> EvalResult:
    """Evaluate ``model`` on ``task``.

    Args:
        task: The task.
        model: Causal LM (HF, peft or kexpert LoRA-MoE).
        tokenizer: Its tokenizer.
        prompt_format: The base model's prompt format.
        examples: Items to score; default the task's eval split (``limit``/``seed`` subset).
        limit: Deterministic subset size.
        seed: Seed of the subset.
        mode: Override the task's eval mode.
        batch_size: Sequences per forward (log-likelihood scoring; generation too unless ``generate_batch_size``).
        generate_batch_size: Rows decoded together in ``generate`` mode (``None``: ``batch_size``). Decoding
            retires finished rows, so a larger batch than scoring uses keeps the CPU or GPU busier.
        max_length: Prompt truncation (from the left) in tokens.
        sandbox_timeout_s: Per-program wall-clock limit for MBPP.
        progress: Progress bars.
        adapter_name: For peft models with several adapters: score every item with this one.
        share_prefix: Forward each item's context once for all its options (``eval.share_prefix``: true or
            ``packed`` = one row under a block mask, ``kv`` = after the context's KV cache; False: one
            whole-sequence forward per option; the same log-likelihoods to ~1e-4).

    Returns:
        The :class:`EvalResult`.
    """
    mode = mode or task.eval_mode
    if mode not in ("loglikelihood", "generate"):
        raise ConfigError(f"eval.mode: expected loglikelihood|generate, got {mode!r}")
    if examples is None:
        examples = task.eval_examples(limit=limit, seed=seed)
    start = time.perf_counter()
    if mode == "loglikelihood":
        preds, metrics = _eval_loglikelihood(
            task,
            model,
            tokenizer,
            prompt_format,
            examples,
            batch_size,
            max_length,
            progress,
            adapter_name,
            share_prefix,
        )
    else:
        preds, metrics = _eval_generate(
            task,
            model,
            tokenizer,
            prompt_format,
            examples,
            generate_batch_size or batch_size,
            max_length,
            sandbox_timeout_s,
            progress,
        )
    metrics.update(
        task=task.name,
        mode=mode,
        n=len(examples),
        primary_metric=task.primary_metric,
        eval_wall_s=round(time.perf_counter() - start, 3),
    )
    return EvalResult(metrics=metrics, predictions=preds)


def option_logliks(
    task: Task,
    model,
    tokenizer,
    prompt_format: PromptFormat,
    examples: list[Example],
    *,
    batch_size: int = 8,
    max_length: int = 2048,
    progress: bool = False,
    adapter_name: str | None = None,
    share_prefix: bool | str = True,
) -> list[list[tuple[str, float]]]:
    """What log-likelihood mode ranks: per item, per option, the scored continuation and its log-likelihood.

    The context is the rendered task prompt, the continuation the option's target (``task.continuations``,
    e.g. ``" {text}"``); ``experiments/eval/lm_eval_parity.py`` hands the same pairs to lm-eval.

    Raises:
        ConfigError: The task has no options.
    """
    if task.answer_kind not in ("multiple_choice", "yes_no"):
        raise ConfigError(f"task {task.name}: log-likelihood mode needs a multiple-choice task")
    pairs, owners = [], []
    for i, ex in enumerate(examples):
        ctx = prompt_format.render(task.prompt(ex, mode="loglikelihood"), tokenizer)
        for cont in task.continuations(ex):
            pairs.append((ctx, prompt_format.response(cont)))
            owners.append(i)
    names = [adapter_name] * len(pairs) if adapter_name else None
    scores = score_continuations(
        model,
        tokenizer,
        pairs,
        batch_size=batch_size,
        max_length=max_length,
        adapter_names=names,
        progress=f"{task.name} loglik" if progress else False,
        share_prefix=share_prefix,
    )
    per_item: list[list[tuple[str, float]]] = [[] for _ in examples]
    for (_, cont), owner, sc in zip(pairs, owners, scores):
        per_item[owner].append((cont, sc.logprob))
    return per_item


def _eval_loglikelihood(
    task, model, tokenizer, pf, examples, batch_size, max_length, progress, adapter_name, share_prefix=True
):
    per_item = option_logliks(
        task,
        model,
        tokenizer,
        pf,
        examples,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        adapter_name=adapter_name,
        share_prefix=share_prefix,
    )
    preds, correct, correct_norm = [], [], []
    for ex, opts in zip(examples, per_item):
        raw, norm = pick_options([ll for _, ll in opts], [cont for cont, _ in opts])
        correct.append(raw == ex.gold_index)
        correct_norm.append(norm == ex.gold_index)
        preds.append(
            {
                "id": ex.id,
                "gold": ex.gold,
                "pred": ex.choice_labels[raw],
                "pred_norm": ex.choice_labels[norm],
                "correct": raw == ex.gold_index,
                "correct_norm": norm == ex.gold_index,
                "loglik": [round(ll, 4) for _, ll in opts],
            }
        )
    metrics = {**proportion("acc", correct), **proportion("acc_norm", correct_norm), "acc_norm_length": "chars"}
    return preds, metrics


def _eval_generate(task, model, tokenizer, pf, examples, batch_size, max_length, sandbox_timeout_s, progress):
    prompts = [pf.render(task.prompt(ex, mode="generate"), tokenizer) for ex in examples]
    gens = generate_greedy(
        model,
        tokenizer,
        prompts,
        max_new_tokens=task.max_new_tokens,
        stop=task.stop,
        batch_size=batch_size,
        max_prompt_length=max_length,
        progress=f"{task.name} generate" if progress else False,
    )
    preds, flags = [], []
    if task.answer_kind == "code":
        for ex, gen in zip(examples, gens):
            code = task.extract(gen, ex) or ""
            res = run_tests(code, list(ex.tests or ()), timeout_s=sandbox_timeout_s, setup=ex.test_setup)
            flags.append(res.passed)
            preds.append({"id": ex.id, "generation": gen, "code": code, "status": res.status, "correct": res.passed})
        return preds, proportion("pass@1", flags)
    extracted = 0
    for ex, gen in zip(examples, gens):
        pred = task.extract(gen, ex)
        extracted += pred is not None
        ok = task.is_correct(pred, ex)
        flags.append(ok)
        preds.append({"id": ex.id, "gold": ex.gold, "pred": pred, "correct": ok, "generation": gen})
    metrics = proportion("acc", flags)
    metrics["parsed_fraction"] = extracted / len(examples) if examples else float("nan")
    return preds, metrics
