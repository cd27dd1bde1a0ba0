"""How the routers of a freshly built LoRA-MoE start (docs/method.md §4, "Initialisation").

* :class:`DefaultRouterInit`: the paper and the official code, ``nn.Linear``'s default Kaiming-uniform draw.
* :class:`KShotStatsRouterInit` (kexpert's own): start each router from K-shot hidden-state statistics of its
  experts. For a token whose input to layer l is ``x``, expert i's *response* is ``rho_i(x) = ||s_i B_i A_i x||``:
  how much that expert would change the token. Over the K-shot tokens (hidden states of the base model, experts
  off) the router weight ``W (N, d_in)`` is fitted by ridge regression so that its logits predict the centred
  log-responses ``t_i(x) = log rho_i(x) - mean_j log rho_j(x)``::

      W = argmin_W  sum_x ||W x - t(x)||^2 + lambda ||W||^2,   lambda = ridge * trace(X^T X) / d_in

  in closed form from the accumulated ``X^T X`` (d_in x d_in) and ``X^T T`` (d_in x N), in float64. Tokens of the
  target task therefore begin routed to the experts that act on them most strongly: Arrow's "route to the expert
  whose subspace the token lies in", but fitted on the task's own hidden states, giving a soft, calibrated starting
  point that fine-tuning then refines. By default (``center_experts``) each expert's mean log-response over the
  K-shot is subtracted as well, so the fit follows which tokens an expert is *unusually* aligned with rather than
  which expert has the largest update overall (Arrow's singular vectors are unit-norm for the same reason).
  Memory is ``d_in^2`` doubles per adapted layer. With zero experts (``B = 0``, the MixLoRA init) every response
  is equal and the fit is refused.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from tqdm.auto import tqdm

from kexpert.models.components.moe_linear import LoRAMoELinear
from kexpert.utils.errors import ConfigError


@contextmanager
def experts_disabled(layers: Mapping[str, LoRAMoELinear]):
    """Run the model as its base: every MoE layer returns ``base(x)`` only."""
    previous = {name: layer.enabled for name, layer in layers.items()}
    try:
        for layer in layers.values():
            layer.enabled = False
        yield
    finally:
        for name, layer in layers.items():
            layer.enabled = previous[name]


def forward_tokens(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> None:
    """One inference forward of ``input_ids``/``attention_mask`` (LM head only on the last position when possible)."""
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), **kwargs)


class DefaultRouterInit:
    """The paper's router init: ``nn.Linear`` default (Kaiming-uniform), drawn from the global seed."""

    needs_data = False

    def __call__(
        self,
        model: torch.nn.Module,
        layers: Mapping[str, LoRAMoELinear],
        batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    ) -> dict[str, Any]:
        """Re-draw every router's weights; returns a summary for logs."""
        for layer in layers.values():
            layer.router.reset_parameters()
        return {"router_init": "default", "layers": len(layers)}


class _RidgeStats:
    """Sufficient statistics of one layer's regression, accumulated in float64 on the CPU."""

    def __init__(self, d_in: int, n_experts: int) -> None:
        self.xtx = torch.zeros(d_in, d_in, dtype=torch.float64)
        self.xtt = torch.zeros(d_in, n_experts, dtype=torch.float64)
        self.ttt = torch.zeros(n_experts, n_experts, dtype=torch.float64)
        self.xsum = torch.zeros(d_in, dtype=torch.float64)
        self.tsum = torch.zeros(n_experts, dtype=torch.float64)
        self.tokens = 0

    def add(self, x: torch.Tensor, t: torch.Tensor) -> None:
        x, t = x.double().cpu(), t.double().cpu()  # (n, d_in), (n, N)
        self.xtx += x.t() @ x
        self.xtt += x.t() @ t
        self.ttt += t.t() @ t
        self.xsum += x.sum(dim=0)
        self.tsum += t.sum(dim=0)
        self.tokens += x.shape[0]

    def solve(self, ridge: float, center_experts: bool) -> tuple[torch.Tensor, float]:
        """``W (N, d_in)`` and the fraction of the targets' ``||T||^2`` it explains on the K-shot tokens.

        With ``center_experts`` each expert's mean log-response over the tokens is removed from its target first
        (``T - 1 mu^T``), so the router follows token-specific affinity, not the experts' overall scale.
        """
        d = self.xtx.shape[0]
        xtt, ttt = self.xtt, self.ttt
        if center_experts:
            mu = self.tsum / max(self.tokens, 1)  # (N,)
            xtt = xtt - torch.outer(self.xsum, mu)
            ttt = ttt - self.tokens * torch.outer(mu, mu)
        lam = ridge * float(torch.trace(self.xtx)) / d
        wt = torch.linalg.solve(self.xtx + lam * torch.eye(d, dtype=torch.float64), xtt)  # (d_in, N)
        total = float(torch.trace(ttt))
        rss = total - 2 * float((wt * xtt).sum()) + float(torch.trace(wt.t() @ self.xtx @ wt))
        return wt.t().contiguous(), (1.0 - rss / total) if total > 0 else 0.0


def expert_log_responses(layer: LoRAMoELinear, x: torch.Tensor, eps: float) -> torch.Tensor:
    """``(n, N)`` centred ``log ||s_i B_i A_i x||`` of every expert for ``x (n, d_in)``."""
    e = layer.experts
    xf = x.float()
    cols = []
    for i, r in enumerate(e.rank_list):
        h = xf @ e.lora_A[i, :r].float().t()  # (n, r)
        out = h @ e.lora_B[i, :, :r].float().t()  # (n, d_out)
        cols.append(out.norm(dim=-1) * abs(float(e.scaling[i])))  # (n,)
    t = torch.log(torch.stack(cols, dim=-1) + eps)  # (n, N)
    return t - t.mean(dim=-1, keepdim=True)


class KShotStatsRouterInit:
    """Fit every router to its experts' responses on K-shot hidden states (see the module docstring).

    Args:
        ridge: Ridge strength relative to the mean eigenvalue of ``X^T X``.
        logit_scale: Multiplier on the fitted weights (1 keeps the natural log-response scale).
        center_experts: Remove each expert's mean log-response over the K-shot before fitting (scale-free
            targets); false keeps the experts' overall strength in the targets.
        eps: Added to responses before the log.
        max_batches: Use at most this many K-shot batches (``None``: all).
        progress: Show a progress bar.
    """

    needs_data = True

    def __init__(
        self,
        ridge: float = 0.1,
        logit_scale: float = 1.0,
        center_experts: bool = True,
        eps: float = 1e-6,
        max_batches: int | None = None,
        progress: bool = True,
    ) -> None:
        if ridge <= 0:
            raise ConfigError(f"moe.router_init.ridge: expected > 0, got {ridge}")
        if logit_scale <= 0:
            raise ConfigError(f"moe.router_init.logit_scale: expected > 0, got {logit_scale}")
        self.ridge = ridge
        self.logit_scale = logit_scale
        self.center_experts = center_experts
        self.eps = eps
        self.max_batches = max_batches
        self.progress = progress

    @torch.no_grad()
    def __call__(
        self,
        model: torch.nn.Module,
        layers: Mapping[str, LoRAMoELinear],
        batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    ) -> dict[str, Any]:
        """Collect the statistics over ``batches`` (``input_ids``, ``attention_mask``) and set every router.

        Returns:
            ``{"router_init", "tokens", "explained_mean", "explained_min"}`` for logs.

        Raises:
            ConfigError: no K-shot batches, or experts that are all zero.
        """
        if batches is None:
            raise ConfigError("moe.router_init=kshot_stats needs K-shot items (none were given)")
        stats = {name: _RidgeStats(layer.in_features, layer.experts.num_experts) for name, layer in layers.items()}
        mask_box: dict[str, torch.Tensor] = {}

        def make_hook(name: str):
            def hook(module: LoRAMoELinear, args: tuple[torch.Tensor, ...]) -> None:
                x = args[0][mask_box["mask"]]  # (n, d_in): real tokens only
                stats[name].add(x, expert_log_responses(module, x, self.eps))

            return hook

        handles = [layer.register_forward_pre_hook(make_hook(name)) for name, layer in layers.items()]
        was_training = model.training
        model.eval()
        try:
            with experts_disabled(layers):
                for i, batch in enumerate(tqdm(batches, desc="router init (K-shot)", disable=not self.progress)):
                    if self.max_batches is not None and i >= self.max_batches:
                        break
                    mask_box["mask"] = batch["attention_mask"].bool().to(next(model.parameters()).device)
                    forward_tokens(model, batch)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        return self._apply(layers, stats)

    def _apply(self, layers: Mapping[str, LoRAMoELinear], stats: Mapping[str, _RidgeStats]) -> dict[str, Any]:
        explained = []
        tokens = 0
        for name, layer in layers.items():
            st = stats[name]
            if st.tokens == 0:
                raise ConfigError("moe.router_init=kshot_stats: the K-shot batches contain no tokens")
            if float(torch.trace(st.ttt)) <= 1e-12 * st.tokens:
                raise ConfigError(
                    f"moe.router_init=kshot_stats: every expert of {name} responds identically (all-zero experts, "
                    "e.g. moe=mixlora); use router_init=default"
                )
            w, frac = st.solve(self.ridge, self.center_experts)
            layer.router.gate.weight.copy_((w * self.logit_scale).to(layer.router.gate.weight))
            explained.append(frac)
            tokens = st.tokens
        return {
            "router_init": "kshot_stats",
            "tokens": tokens,
            "explained_mean": sum(explained) / len(explained),
            "explained_min": min(explained) if explained else math.nan,
        }
