"""Grid-point validation: what a multirun checks for every job before launching any (and each job again)."""

from __future__ import annotations

from omegaconf import DictConfig

from kexpert.utils.errors import InvalidGridPoint
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


def validate_config(cfg: DictConfig) -> None:
    """Reject invalid grid points before any work (top-k vs N, N vs the selector, M vs N, K).

    Raises:
        InvalidGridPoint: naming the keys and what is expected (the one error ``skip_invalid=true`` skips).
    """
    if int(cfg.k_shot) < 1:
        raise InvalidGridPoint(f"k_shot must be >= 1, got {cfg.k_shot}")
    moe = cfg.get("moe")
    if moe is not None:
        n, k = int(moe.num_experts), int(moe.top_k)
        if not 1 <= k <= n:
            raise InvalidGridPoint(f"moe.top_k={k} must be between 1 and moe.num_experts={n}")
        if k == 1 and n > 1 and str(cfg.get("method", {}).get("name", "")) in ("rocket", "mixlora", "mixlora_data"):
            log.warning(
                "moe.top_k=1: the router gets no gradient (the softmax over one selected logit is always 1), so "
                "training leaves the routing where its init put it (docs/method.md §6)"
            )
    sel = cfg.get("expert_selection")
    if sel is not None and moe is not None and sel.get("num_experts") is not None:
        if int(sel.num_experts) != int(moe.num_experts):
            raise InvalidGridPoint(
                f"expert_selection.num_experts={sel.num_experts} differs from moe.num_experts="
                f"{moe.num_experts}: the MoE needs one expert per selected LoRA"
            )
        m = sel.get("num_candidates")
        if m is not None and int(m) < int(sel.num_experts):
            raise InvalidGridPoint(
                f"expert_selection.num_candidates (M={m}) must be >= num_experts (N={sel.num_experts})"
            )
