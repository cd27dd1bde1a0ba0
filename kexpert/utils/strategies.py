"""Helpers for Lightning strategies: FSDP wrap policies from dotted names, and full weights for a rank-zero writer."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any


def module_classes(names: list[str], ignore_missing: bool = True) -> set[type]:
    """Import ``module.Class`` names into a set of classes (FSDP ``auto_wrap_policy``).

    Args:
        names: Dotted class paths.
        ignore_missing: Skip classes whose module is not installed (another model family).
    """
    out: set[type] = set()
    for name in names:
        mod, _, cls = name.rpartition(".")
        try:
            out.add(getattr(importlib.import_module(mod), cls))
        except (ImportError, AttributeError):
            if not ignore_missing:
                raise
    return out


def fsdp_mixed_precision(precision: str, reduce_dtype: str = "float32", buffer_dtype: str = "float32"):
    """FSDP ``MixedPrecision`` for ``trainer.precision``: gathered weights in its compute dtype, the rest fp32.

    Lightning's own choice for ``bf16-mixed`` also reduces gradients and keeps buffers in bf16: the fp32 experts'
    gradients would be all-reduced in bf16, and buffers such as RoPE's ``inv_freq`` and the experts' scalings
    would be cast to bf16 (and the scalings saved so).

    Args:
        precision: ``trainer.precision`` (``bf16-mixed``, ``16-mixed``, ``bf16-true``, ``32-true``...).
        reduce_dtype: Gradient all-reduce dtype.
        buffer_dtype: Buffer dtype.
    """
    import torch
    from torch.distributed.fsdp import MixedPrecision

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    p = str(precision)
    param = torch.bfloat16 if p.startswith("bf16") else torch.float16 if p.startswith("16") else torch.float32
    return MixedPrecision(param_dtype=param, reduce_dtype=dtypes[reduce_dtype], buffer_dtype=dtypes[buffer_dtype])


@contextlib.contextmanager
def full_weights_on_rank_zero(strategy: Any) -> Iterator[None]:
    """Every rank enters this around a rank-zero writer: sharded weights are gathered so rank zero reads them whole.

    FSDP (FULL_SHARD, ``use_orig_params``) keeps only each rank's shard in the original parameters; gathering is a
    collective, so all ranks must take part while rank zero writes (the LoRA-MoE checkpoint, an adapter).
    DeepSpeed ZeRO-3 partitions the trainable parameters likewise. Other strategies hold full weights: no-op.
    """
    model = getattr(strategy, "model", None)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:  # pragma: no cover - torch without distributed
        FSDP = None
    if FSDP is not None and isinstance(model, FSDP):
        offload = getattr(getattr(strategy, "root_device", None), "type", "cpu") != "cpu"
        with FSDP.summon_full_params(model, writeback=False, rank0_only=True, offload_to_cpu=offload):
            yield
        return
    if type(strategy).__name__ == "DeepSpeedStrategy" and getattr(strategy, "zero_stage_3", False):
        import deepspeed  # only with trainer=deepspeed (untested here: needs a GPU)

        params = [p for p in model.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield
        return
    yield
