"""N LoRA experts of one linear layer, stored as stacked tensors (docs/method.md §4).

Expert i computes ``s_i * B_i A_i x`` with ``A_i: (r_i, d_in)``, ``B_i: (d_out, r_i)`` and its own scaling
``s_i = alpha_i / r_i`` (or ``alpha_i / sqrt(r_i)`` for rsLoRA), which the official MoE forward forgets
(docs/method.md §10.7c). All experts live in two parameters, ``lora_A: (N, r_max, d_in)`` and
``lora_B: (N, d_out, r_max)``, so the whole mixture is one or two batched matmuls. Experts of different ranks are
zero-padded to ``r_max``; a fixed rank mask zeroes A's padding rows in every forward, so the padding gets no
gradient and an expert's rank never grows. Any rank works with any N (the official
``assert r % expert_num == 0`` is gone, §10.7b).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kexpert.utils.errors import ConfigError


class LoRAExperts(nn.Module):
    """Stacked LoRA experts.

    Args:
        in_features: d_in.
        out_features: d_out.
        ranks: Rank of each expert (N entries, each >= 1).
        scalings: The factor each expert's ``B A x`` is multiplied by.
        dtype: Parameter dtype (default: torch's default).
        device: Parameter device.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        ranks: Sequence[int],
        scalings: Sequence[float],
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if len(ranks) == 0 or len(ranks) != len(scalings):
            raise ConfigError(f"LoRAExperts: need one scaling per rank, got ranks={list(ranks)} scalings={scalings}")
        if min(ranks) < 1:
            raise ConfigError(f"LoRAExperts: every rank must be >= 1, got {list(ranks)}")
        self.in_features = in_features
        self.out_features = out_features
        self.rank_list = [int(r) for r in ranks]
        n, r_max = len(ranks), max(self.rank_list)
        self.lora_A = nn.Parameter(torch.zeros(n, r_max, in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(n, out_features, r_max, dtype=dtype, device=device))
        self.register_buffer("scaling", torch.tensor([float(s) for s in scalings], device=device))
        self.register_buffer("ranks", torch.tensor(self.rank_list, dtype=torch.long, device=device))
        self.uniform_rank = len(set(self.rank_list)) == 1
        mask = (torch.arange(r_max)[None, :] < torch.tensor(self.rank_list)[:, None]).to(device=device)  # (N, r_max)
        self.register_buffer("rank_mask", mask, persistent=False)

    @property
    def num_experts(self) -> int:
        """N."""
        return len(self.rank_list)

    @property
    def max_rank(self) -> int:
        """r_max (the padded rank)."""
        return self.lora_A.shape[1]

    def effective_A(self) -> torch.Tensor:
        """``(N, r_max, d_in)`` with the padding rows forced to zero."""
        if self.uniform_rank:
            return self.lora_A
        return self.lora_A * self.rank_mask[:, :, None].to(self.lora_A.dtype)

    @torch.no_grad()
    def load_expert_(self, index: int, A: torch.Tensor, B: torch.Tensor) -> None:
        """Copy expert ``index``'s ``A (r, d_in)`` and ``B (d_out, r)`` in; the padding is zeroed.

        Raises:
            ConfigError: shapes that do not match this layer and the expert's rank.
        """
        r = self.rank_list[index]
        if tuple(A.shape) != (r, self.in_features) or tuple(B.shape) != (self.out_features, r):
            raise ConfigError(
                f"expert {index}: expected A {(r, self.in_features)} and B {(self.out_features, r)}, "
                f"got A {tuple(A.shape)} and B {tuple(B.shape)}"
            )
        self.lora_A[index].zero_()
        self.lora_B[index].zero_()
        self.lora_A[index, :r].copy_(A.to(self.lora_A.dtype))
        self.lora_B[index, :, :r].copy_(B.to(self.lora_B.dtype))

    @torch.no_grad()
    def reset_random_(self, std: float, generator: torch.Generator | None = None) -> None:
        """MixLoRA-style random init (the official code without expert files): ``A ~ N(0, std)``, ``B = 0``."""
        a = torch.randn(self.lora_A.shape, generator=generator, dtype=torch.float32) * std
        self.lora_A.copy_(a.to(self.lora_A.dtype))
        self.lora_A.mul_(self.rank_mask[:, :, None].to(self.lora_A.dtype))
        self.lora_B.zero_()

    def delta_weight(self, index: int) -> torch.Tensor:
        """``s_i * B_i @ A_i``: expert ``index`` as a dense ``(d_out, d_in)`` update (fp32, detached)."""
        r = self.rank_list[index]
        a = self.lora_A[index, :r].detach().float()  # (r, d_in)
        b = self.lora_B[index, :, :r].detach().float()  # (d_out, r)
        return float(self.scaling[index]) * (b @ a)

    def extra_repr(self) -> str:  # noqa: D102
        return f"num_experts={self.num_experts}, in={self.in_features}, out={self.out_features}, r={self.rank_list}"
