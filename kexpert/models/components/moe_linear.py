"""``LoRAMoELinear``: a frozen linear plus a token-routed top-k mixture of LoRA experts (docs/method.md §4, Eq. 8).

``y = W x + sum_{i in top-k(x)} G_i(x) * s_i * B_i A_i dropout(x)``

Two compute paths give the same output (tested):

* **dense**: every expert on every token in two batched matmuls, ``(T, d_in) @ (d_in, N*r)`` then
  ``(T, N*r) @ (N*r, d_out)``, with the ``(T, N*r)`` intermediate multiplied by the sparse top-k gates (zero
  outside the top-k). It does N/k times the expert FLOPs of a sparse dispatch but has no gather, scatter or Python
  loop, which is faster whenever ``N * r`` is small next to ``d_in`` (the paper: N = 4, r = 16).
* **grouped**: the ``T * k`` (token, expert) assignments are sorted by expert once; each expert multiplies only its
  contiguous slice of gathered tokens, and one ``index_add_`` scatters the gate-weighted results back. Expert FLOPs
  are exactly the routed ones, so it wins for many or large experts.

``compute="auto"`` picks dense when ``N * r_max <= dense_max_total_rank``. Dropout is drawn once per token and
shared by the experts (as a single peft LoRA does), so both paths see the same mask; the official code draws a
mask per (token, expert) call, which would need k copies of the activations.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from kexpert.models.components.lora_experts import LoRAExperts
from kexpert.models.components.router import RouterOutput, TopKRouter
from kexpert.utils.errors import ConfigError

ComputePath = Literal["auto", "dense", "grouped"]


class LoRAMoELinear(nn.Module):
    """Frozen ``base`` + routed ``experts``.

    Args:
        base: The pretrained linear layer (frozen here).
        experts: The stacked experts (``in/out_features`` must match ``base``).
        router: The top-k router (``num_experts`` must match).
        lora_dropout: Dropout on the expert input.
        compute: ``auto``, ``dense`` or ``grouped``.
        dense_max_total_rank: ``auto`` uses dense up to this ``N * r_max``.

    Attributes:
        enabled: When false the layer is just ``base`` (used to read hidden states of the base model).
        record_routing: When true, ``last_routing`` keeps the last forward's :class:`RouterOutput`.
    """

    def __init__(
        self,
        base: nn.Linear,
        experts: LoRAExperts,
        router: TopKRouter,
        lora_dropout: float = 0.0,
        compute: ComputePath = "auto",
        dense_max_total_rank: int = 512,
    ) -> None:
        super().__init__()
        if compute not in ("auto", "dense", "grouped"):
            raise ConfigError(f"moe.compute: expected auto|dense|grouped, got {compute!r}")
        if not 0.0 <= lora_dropout < 1.0:
            raise ConfigError(f"moe.lora_dropout: expected 0 <= p < 1, got {lora_dropout}")
        if (experts.in_features, experts.out_features) != (base.in_features, base.out_features):
            raise ConfigError(
                f"experts are {experts.in_features}->{experts.out_features} but the layer is "
                f"{base.in_features}->{base.out_features}"
            )
        if router.num_experts != experts.num_experts:
            raise ConfigError(f"router has {router.num_experts} outputs for {experts.num_experts} experts")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.experts = experts
        self.router = router
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.compute = compute
        self.dense_max_total_rank = dense_max_total_rank
        self.enabled = True
        self.record_routing = False
        self.last_routing: RouterOutput | None = None

    @property
    def in_features(self) -> int:
        """d_in."""
        return self.base.in_features

    @property
    def out_features(self) -> int:
        """d_out."""
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (for code that inspects ``proj.weight``)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The frozen base bias."""
        return self.base.bias

    def resolved_path(self) -> str:
        """``dense`` or ``grouped``: what ``compute`` means for this layer."""
        if self.compute != "auto":
            return self.compute
        total = self.experts.num_experts * self.experts.max_rank
        return "dense" if total <= self.dense_max_total_rank else "grouped"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_in) -> (..., d_out)``."""
        result = self.base(x)  # (..., d_out)
        if not self.enabled:
            return result
        delta, _ = self.delta(x)
        return result + delta.to(result.dtype)

    def delta(self, x: torch.Tensor, path: str | None = None) -> tuple[torch.Tensor, RouterOutput]:
        """The mixture's contribution ``sum_i G_i(x) s_i B_i A_i dropout(x)`` and the routing.

        Args:
            x: ``(..., d_in)``.
            path: Force ``dense`` or ``grouped`` (default: :meth:`resolved_path`).

        Returns:
            ``(delta (..., d_out), routing over the flattened tokens)``.
        """
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)  # (T, d_in)
        route = self.router(flat)
        if self.record_routing:
            self.last_routing = route
        xd = self.lora_dropout(flat).to(self.experts.lora_A.dtype)  # (T, d_in)
        weights = route.weights.to(xd.dtype)  # (T, k)
        if (path or self.resolved_path()) == "dense":
            out = self._dense(xd, route.indices, weights)
        else:
            out = self._grouped(xd, route.indices, weights)
        return out.reshape(*lead, self.out_features), route

    def _dense(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        e = self.experts
        n, r = e.num_experts, e.max_rank
        a = e.effective_A().reshape(n * r, self.in_features)  # (N*r, d_in)
        b = e.lora_B.permute(1, 0, 2).reshape(self.out_features, n * r)  # (d_out, N*r)
        gates = x.new_zeros(x.shape[0], n).scatter(1, indices, weights)  # (T, N), zero outside the top-k
        gates = gates * e.scaling.to(x.dtype)  # (T, N): s_i folded in
        h = (x @ a.t()).view(-1, n, r) * gates[:, :, None]  # (T, N, r)
        return h.reshape(-1, n * r) @ b.t()  # (T, d_out)

    def _grouped(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        e = self.experts
        k = indices.shape[1]
        flat_expert = indices.reshape(-1)  # (T*k,)
        order = flat_expert.argsort(stable=True)  # (T*k,) assignments sorted by expert
        token = order // k  # (T*k,) token of each sorted assignment
        counts = torch.bincount(flat_expert, minlength=e.num_experts).tolist()
        xs = x[token]  # (T*k, d_in) gathered once
        coef = weights.reshape(-1)[order] * e.scaling.to(x.dtype)[flat_expert[order]]  # (T*k,) gate * s_i
        a_all = e.effective_A()
        outs, start = [], 0
        for i, n_i in enumerate(counts):
            if n_i:
                r = e.rank_list[i]
                h = (xs[start : start + n_i] @ a_all[i, :r].t()) * coef[start : start + n_i, None]  # (n_i, r)
                outs.append(h @ e.lora_B[i, :, :r].t())  # (n_i, d_out), already gate-weighted
            start += n_i
        out = x.new_zeros(x.shape[0], self.out_features)  # (T, d_out)
        return out.index_add(0, token, torch.cat(outs))  # scatter-add the (T*k, d_out) rows to their tokens

    def extra_repr(self) -> str:  # noqa: D102
        return f"compute={self.compute}"
