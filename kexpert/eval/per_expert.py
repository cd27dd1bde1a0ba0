"""Each expert of a trained LoRA-MoE on its own: route every token to one expert (weight 1) and evaluate.

This is the paper's Table 5 / Fig. 11 analysis (docs/method.md §8.6): eval items are split by how the MoE's experts
do alone (All correct / All incorrect / Mixed), and on Mixed items each expert's error rate is compared with
the routed MoE's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from kexpert.eval.evaluator import evaluate
from kexpert.models.components.router import RouterOutput
from kexpert.models.inject import moe_layers


@contextlib.contextmanager
def route_all_to(model: torch.nn.Module, expert: int) -> Iterator[None]:
    """Within the block every MoE layer sends every token to ``expert`` with gate weight 1."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError("route_all_to needs a LoRA-MoE model")
    originals = {}
    for layer in layers.values():
        router = layer.router
        n = layer.experts.num_experts
        if not 0 <= expert < n:
            raise ValueError(f"expert index {expert} out of range for {n} experts")

        def forced(x: torch.Tensor, _n: int = n) -> RouterOutput:
            t = x.shape[0]
            logits = torch.full((t, _n), -1e4, dtype=torch.float32, device=x.device)
            logits[:, expert] = 0.0
            return RouterOutput(
                weights=torch.ones(t, 1, dtype=torch.float32, device=x.device),
                indices=torch.full((t, 1), expert, dtype=torch.long, device=x.device),
                logits=logits,
            )

        originals[router] = router.forward
        router.forward = forced  # instance attribute shadows the method
    try:
        yield
    finally:
        for router in originals:
            del router.forward


def evaluate_experts_alone(
    task, model, tokenizer, prompt_format, examples, names: list[str], **eval_kwargs: Any
) -> dict[str, Any]:
    """Correctness of each expert alone on ``examples`` (same order) plus its accuracy."""
    correct: dict[str, list[bool]] = {}
    acc: dict[str, float] = {}
    for i, name in enumerate(names):
        with route_all_to(model, i):
            res = evaluate(task, model, tokenizer, prompt_format, examples=examples, **eval_kwargs)
        correct[name] = [bool(p["correct"]) for p in res.predictions]
        acc[name] = res.score
    return {"experts": names, "ids": [e.id for e in examples], "correct": correct, "acc": acc}
