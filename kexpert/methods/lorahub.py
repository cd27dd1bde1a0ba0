"""LoRAHub (Huang et al., COLM 2024; docs/method.md §9): gradient-free search of linear composition weights.

As LoRAHub composes its modules, the candidates' A and B matrices are combined entry by entry with the weights w,
giving the update ``(sum_i w_i s_i B_i)(sum_i w_i A_i)`` (``composition=elementwise``; ``sum`` composes the updates
``sum_i w_i s_i B_i A_i`` instead). The weights start at 0 and are searched with nevergrad (LoRAHub's own optimiser,
``NGOpt``, 40 steps, box [-1.5, 1.5]) to minimise the K-shot loss plus LoRAHub's regulariser
``0.05 * mean_i |w_i|``. Each candidate composition is patched into the base weights in place
(:class:`~kexpert.bank.merge.WeightPatcher`); only the composition weights are learned, and the result is saved as
one exact PEFT adapter.

The loss is the mean NLL per response token over the objective's items. The official ``get_loss`` divides the sum
of its batch losses by the number of examples, which for its default single batch scales the loss by 1/K and so
makes the regulariser K times stronger; ``method.l1=2.5`` reproduces that weighting at K=50.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from kexpert.bank.merge import COMPOSITIONS, WeightPatcher, delta_weights, save_merged_adapter
from kexpert.data.sft import instruction_prompt
from kexpert.eval.scoring import score_continuations
from kexpert.methods.base import Method, MethodContext, draw_seed, pick_random
from kexpert.methods.baselines import SingleLoRAMethod
from kexpert.models.adapter import read_peft_adapter
from kexpert.utils.errors import ConfigError
from kexpert.utils.io import write_json
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


class LoRAHubMethod(Method):
    """LoRAHub over the selected experts (``candidates=selected``) or ``num_candidates`` random bank LoRAs.

    The random candidates and the search's random state follow the K-shot draw
    (:func:`~kexpert.methods.base.draw_seed` of ``seed`` and ``data_seed``; ``data_seed=0``: ``seed``, as before).

    Args:
        name: Method name.
        candidates: ``selected`` (the expert-selection stage's group) or ``random``.
        num_candidates: Candidates for ``random`` (LoRAHub's default is 20).
        budget: Objective evaluations (LoRAHub's ``max_inference_step``, default 40).
        l1: L1 regularisation weight (LoRAHub: 0.05).
        l1_reduction: ``mean`` (LoRAHub: ``0.05 * sum|w| / n``) or ``sum`` of the absolute weights.
        composition: ``elementwise`` (LoRAHub: A and B combined entry by entry) or ``sum`` (the updates).
        bounds: Box for each weight (LoRAHub: [-1.5, 1.5]).
        optimizer: nevergrad optimiser name.
        data: ``kshot`` (LoRAHub) or ``kshot+selected`` (LoRAHub†: the objective uses D_K + D_A).
        batch_size: Scoring batch size.
        label: Display label.
    """

    uses_bank = True  # the candidates are bank LoRAs, selected or drawn

    def __init__(
        self,
        name: str = "lorahub",
        candidates: Literal["selected", "random"] = "selected",
        num_candidates: int = 20,
        budget: int = 40,
        l1: float = 0.05,
        l1_reduction: Literal["mean", "sum"] = "mean",
        composition: Literal["elementwise", "sum"] = "elementwise",
        bounds: tuple[float, float] = (-1.5, 1.5),
        optimizer: str = "NGOpt",
        data: str = "kshot",
        batch_size: int = 8,
        label: str | None = "LoRAHub",
    ) -> None:
        super().__init__(name, data, label)  # type: ignore[arg-type]
        if data == "none":
            raise ConfigError("method.data: LoRAHub needs the K-shot for its objective")
        if candidates not in ("selected", "random"):
            raise ConfigError(f"method.candidates: expected selected|random, got {candidates!r}")
        if l1_reduction not in ("mean", "sum"):
            raise ConfigError(f"method.l1_reduction: expected mean|sum, got {l1_reduction!r}")

        if composition not in COMPOSITIONS:
            raise ConfigError(f"method.composition: expected one of {list(COMPOSITIONS)}, got {composition!r}")
        self.l1_reduction, self.composition = l1_reduction, composition
        self.candidates, self.num_candidates, self.budget = candidates, int(num_candidates), int(budget)
        self.l1, self.bounds, self.optimizer, self.batch_size = float(l1), tuple(bounds), optimizer, batch_size
        self.needs_experts = candidates == "selected"

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            **super().describe(),
            "candidates": self.candidates,
            "num_candidates": self.num_candidates,
            "budget": self.budget,
            "l1": self.l1,
            "l1_reduction": self.l1_reduction,
            "composition": self.composition,
            "bounds": list(self.bounds),
            "optimizer": self.optimizer,
        }

    def build(self, ctx: MethodContext, out_dir: Path) -> dict[str, Any]:  # noqa: D102
        import nevergrad as ng

        bank = ctx.get_bank()
        if self.candidates == "selected":
            names = ctx.get_experts()
        else:
            names = pick_random(bank.names(), ctx.seed, min(self.num_candidates, len(bank)), ctx.data_seed)
        adapters = [read_peft_adapter(bank[n].path) for n in names]
        model, tok = ctx.base_spec.load()
        pf = ctx.base_spec.prompt_format
        items = ctx.train_items(self.data)
        pairs = [(pf.render(instruction_prompt(it), tok), pf.response(" " + it.output.lstrip())) for it in items]
        patcher = WeightPatcher(model)

        def objective(w: np.ndarray) -> float:
            patcher.apply(delta_weights(adapters, list(map(float, w)), self.composition))
            scores = score_continuations(model, tok, pairs, batch_size=self.batch_size)
            patcher.restore()
            nll = sum(-s.logprob for s in scores) / max(sum(s.num_tokens for s in scores), 1)
            reg = np.abs(w).mean() if self.l1_reduction == "mean" else np.abs(w).sum()
            return float(nll + self.l1 * reg)

        param = ng.p.Array(init=np.zeros(len(names))).set_bounds(*self.bounds)
        opt = ng.optimizers.registry[self.optimizer](parametrization=param, budget=self.budget)
        opt.parametrization.random_state = np.random.RandomState(draw_seed(ctx.seed, ctx.data_seed))
        history = []
        for step in range(self.budget):
            cand = opt.ask()
            loss = objective(cand.value)
            opt.tell(cand, loss)
            history.append(round(loss, 5))
            log.info("lorahub step %d/%d: loss %.4f", step + 1, self.budget, loss)
        best = np.asarray(opt.provide_recommendation().value, dtype=float)
        save_merged_adapter(adapters, best.tolist(), out_dir / "adapter", ctx.base_spec.identity, self.composition)
        info = {
            "method": self.name,
            "candidates": names,
            "weights": best.round(5).tolist(),
            "objective_history": history,
            "best_objective": objective(best),
            "adapter": "adapter",
            "trainable_params": len(names),
        }
        write_json(out_dir / "method.json", info)
        return info

    load = SingleLoRAMethod.load
