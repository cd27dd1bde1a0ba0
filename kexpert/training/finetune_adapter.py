"""Continue training one PEFT LoRA adapter (the Random / Source-Best-SFT baselines, METHOD.md §9)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from kexpert.data.records import Instruction
from kexpert.utils.errors import DataError
from kexpert.utils.instantiate import instantiate
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


def finetune_adapter(
    base_spec,
    adapter_dir: str | Path,
    items: list[Instruction],
    cfg_optim: Any,
    cfg_trainer: Any,
    out_dir: str | Path,
    seed: int = 0,
    batch_size: int = 8,
    cutoff_len: int = 1024,
    logger: Any = None,
) -> dict[str, Any]:
    """Load ``adapter_dir`` trainable on the base model, fine-tune it on ``items`` and save it to ``out_dir``.

    Returns:
        Training statistics (first/last loss, steps, tokens, wall time).
    """
    import lightning as L
    from peft import PeftModel

    from kexpert.models.adapter import save_adapter
    from kexpert.training.datamodule import SFTDataModule
    from kexpert.training.lit_module import CausalLMLitModule

    t0 = time.perf_counter()
    L.seed_everything(seed, workers=True, verbose=False)
    model, tok = base_spec.load()
    pm = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    dm = SFTDataModule(items, tok, base_spec.prompt_format, batch_size=batch_size, cutoff_len=cutoff_len, seed=seed)
    lit = CausalLMLitModule(pm, optimizer=instantiate(cfg_optim.optimizer), scheduler=instantiate(cfg_optim.scheduler))
    losses: list[float] = []

    class _Rec(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            losses.append(float(loss.detach()))

    out_dir = Path(out_dir)
    work = out_dir.parent / f".{out_dir.name}.trainer"
    trainer = instantiate(
        cfg_trainer,
        key="trainer",
        logger=logger if logger is not None else False,
        enable_checkpointing=False,
        callbacks=[_Rec()],
        default_root_dir=str(work),
        **dm.trainer_overrides(cfg_trainer),
    )
    pm.train()
    trainer.fit(lit, datamodule=dm)
    shutil.rmtree(work, ignore_errors=True)
    if not losses or any(v != v for v in losses):
        raise DataError(f"fine-tuning {adapter_dir}: no finite training loss")
    pm.eval()
    save_adapter(pm, out_dir, base_spec.identity)
    return {
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
        "steps": len(losses),
        "train_items": len(dm.train_ds),
        "train_tokens": dm.stats["tokens"],
        "trainable_params": sum(p.numel() for p in pm.parameters() if p.requires_grad),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
