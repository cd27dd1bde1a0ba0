"""Token-wise top-k router of the LoRA-MoE (docs/method.md §4, Eq. 9) and its optional auxiliary losses.

``G(x) = softmax(top-k(x W_g / T))``: a bias-free ``Linear(d_in, N)`` per adapted layer, applied to that layer's
input token by token; the k largest logits are kept and the rest set to -inf before the softmax. That equals the
official code's softmax over all N followed by renormalising the top-k weights, but the official code hard-codes
k = 2 (docs/method.md §10.7a); here ``top_k`` is validated against N at construction. The temperature T (default 1, the
paper) sharpens or flattens the mixture without changing which experts are selected.

The paper trains with plain cross-entropy (no auxiliary loss). The Switch-Transformer load-balancing loss and the
ST-MoE router z-loss are offered with coefficient 0 by default; every statistic takes an optional token mask so
padding never counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kexpert.utils.errors import ConfigError


@dataclass
class RouterOutput:
    """The routing of ``T`` tokens.

    Attributes:
        weights: ``(T, k)`` gate weights of the selected experts; each row sums to 1.
        indices: ``(T, k)`` selected expert ids, best first.
        logits: ``(T, N)`` raw router logits in fp32 (before the temperature).
    """

    weights: torch.Tensor
    indices: torch.Tensor
    logits: torch.Tensor

    @property
    def num_experts(self) -> int:
        """N."""
        return self.logits.shape[-1]

    def dense_weights(self) -> torch.Tensor:
        """``(T, N)`` gate weights, zero outside the top-k."""
        return torch.zeros_like(self.logits).scatter(1, self.indices, self.weights.to(self.logits.dtype))


class TopKRouter(nn.Module):
    """``Linear(d_in, N, bias=False)`` -> top-k -> softmax over the kept logits.

    Args:
        in_features: d_in of the adapted layer.
        num_experts: N.
        top_k: k, with ``1 <= k <= N``.
        temperature: Softmax temperature (> 0).

    Raises:
        ConfigError: ``top_k`` outside ``[1, num_experts]`` or a non-positive temperature.
    """

    def __init__(self, in_features: int, num_experts: int, top_k: int, temperature: float = 1.0) -> None:
        super().__init__()
        if num_experts < 1:
            raise ConfigError(f"moe.num_experts: expected >= 1, got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ConfigError(f"moe.top_k: expected 1 <= top_k <= num_experts={num_experts}, got {top_k}")
        if not temperature > 0:
            raise ConfigError(f"moe.temperature: expected > 0, got {temperature}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.temperature = float(temperature)
        self.gate = nn.Linear(in_features, num_experts, bias=False)

    def reset_parameters(self) -> None:
        """The paper's router init: ``nn.Linear``'s default (Kaiming-uniform) draw."""
        self.gate.reset_parameters()

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Route ``x`` of shape ``(T, d_in)``."""
        logits = self.gate(x.to(self.gate.weight.dtype)).float()  # (T, N)
        top_logits, indices = logits.topk(self.top_k, dim=-1)  # (T, k), (T, k)
        weights = torch.softmax(top_logits / self.temperature, dim=-1)  # (T, k), rows sum to 1
        return RouterOutput(weights=weights, indices=indices, logits=logits)

    def extra_repr(self) -> str:  # noqa: D102
        return f"num_experts={self.num_experts}, top_k={self.top_k}, temperature={self.temperature}"


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (T, ...) over the tokens where ``mask`` (T,) is true."""
    if mask is None:
        return values.mean(dim=0)
    m = mask.to(values.dtype).reshape(-1, *([1] * (values.dim() - 1)))  # (T, 1, ...)
    return (values * m).sum(dim=0) / m.sum().clamp(min=1.0)


def router_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``(T, N)`` softmax over all N experts (the distribution the top-k is cut from)."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def expert_load(indices: torch.Tensor, num_experts: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of the ``T * k`` top-k assignments that go to each expert: ``(N,)``, sums to 1 (uniform = 1/N)."""
    one_hot = torch.nn.functional.one_hot(indices, num_experts).float().sum(dim=1)  # (T, N): 1 where selected
    return _masked_mean(one_hot, mask) / indices.shape[-1]


def load_balancing_loss(
    logits: torch.Tensor, indices: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch-Transformer balance loss ``N * sum_i f_i * P_i`` (1 when routing is perfectly uniform).

    Args:
        logits: ``(T, N)`` router logits.
        indices: ``(T, k)`` selected experts.
        temperature: The router temperature.
        mask: ``(T,)`` true for real (non-padding) tokens.
    """
    num_experts = logits.shape[-1]
    f = expert_load(indices, num_experts, mask)  # (N,) no gradient: a count
    p = _masked_mean(router_probs(logits, temperature), mask)  # (N,) differentiable
    return num_experts * (f * p).sum()


def router_z_loss(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE z-loss ``mean(logsumexp(logits)^2)``: keeps router logits small and the softmax stable."""
    z = torch.logsumexp(logits.float(), dim=-1) ** 2  # (T,)
    return _masked_mean(z, mask)


def routing_entropy(logits: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-token entropy (nats) of the full router distribution; ``log N`` is uniform, 0 is one-hot."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (T, N)
    ent = -(logp.exp() * logp).sum(dim=-1)  # (T,)
    return _masked_mean(ent, mask)
