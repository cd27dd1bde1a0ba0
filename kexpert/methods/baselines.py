"""Table 1 baselines (docs/method.md §9): Base, Random(†), Expert LoRA, Source Best (SFT), uniform merge."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from kexpert.bank.merge import save_merged_adapter
from kexpert.methods.base import DataChoice, Method, MethodContext, pick_random
from kexpert.models.adapter import read_peft_adapter
from kexpert.training.lora import finetune_adapter
from kexpert.utils.errors import ConfigError, InvalidGridPoint
from kexpert.utils.io import read_json, write_json


class BaseModelMethod(Method):
    """The pre-trained base model, no tuning."""

    def __init__(self, name: str = "base", label: str | None = "Base Model") -> None:
        super().__init__(name, "none", label)

    def build(self, ctx: MethodContext, out_dir: Path) -> dict[str, Any]:  # noqa: D102
        write_json(out_dir / "method.json", {"method": self.name, "model": ctx.base_spec.identity})
        return {"trainable_params": 0}

    def load(self, ctx: MethodContext, out_dir: Path):  # noqa: D102
        return ctx.base_spec.load()


Pick = Literal["random", "expert_lora", "source_best", "fixed"]


class SingleLoRAMethod(Method):
    """One bank LoRA, optionally fine-tuned further.

    * ``pick=random``: a bank LoRA drawn with :func:`~kexpert.methods.base.draw_seed` ``(seed, data_seed)``, so each
      K-shot draw draws its own LoRA (``data_seed=0``: the training seed, as before); ``data=kshot`` is "Random",
      ``data=kshot+selected`` is "Random†".
    * ``pick=expert_lora``: the bank's own LoRA trained on the task's train split ("Expert LoRA").
    * ``pick=source_best``: ORACLE: the bank LoRA with the best eval-split accuracy ("Source Best");
      with ``data=kshot+selected`` it is "Source Best SFT".
    * ``pick=fixed``: the entry named by ``entry``.

    Args:
        name: Method name.
        pick: How the LoRA is chosen.
        data: Fine-tuning data (``none`` = use the LoRA as is).
        entry: Bank entry name for ``pick=fixed``.
        batch_size: Fine-tuning micro-batch size.
        cutoff_len: Fine-tuning truncation.
        label: Display label.
    """

    def __init__(
        self,
        name: str,
        pick: Pick,
        data: DataChoice = "none",
        entry: str | None = None,
        batch_size: int = 8,
        cutoff_len: int = 1024,
        label: str | None = None,
    ) -> None:
        super().__init__(name, data, label)
        if pick not in ("random", "expert_lora", "source_best", "fixed"):
            raise ConfigError(f"method.pick: expected random|expert_lora|source_best|fixed, got {pick!r}")
        if pick == "fixed" and not entry:
            raise ConfigError("method.entry: pick=fixed needs the bank entry name")
        self.pick, self.entry = pick, entry
        self.batch_size, self.cutoff_len = batch_size, cutoff_len
        self.oracle = pick == "source_best"

    uses_bank = True  # every pick takes its LoRA from the bank

    @property
    def uses_seed(self) -> bool:
        """Training depends on the seed, and so does ``pick=random``'s draw (with ``data_seed``)."""
        return self.trains or self.pick == "random"

    def choose(self, ctx: MethodContext) -> str:
        """The bank entry this method uses."""
        bank = ctx.get_bank()
        if self.pick == "random":
            return pick_random(bank.names(), ctx.seed, data_seed=ctx.data_seed)[0]
        if self.pick == "expert_lora":
            entry = bank.expert_lora_for(ctx.task.name)
            if entry is None:
                raise InvalidGridPoint(
                    f"bank {bank.name} has no LoRA trained on {ctx.task.name}'s train split "
                    "(Expert LoRA needs one; see conf/bank)"
                )
            return entry.name
        if self.pick == "source_best":
            return ctx.get_oracle()[0]
        if self.entry not in bank.names():
            raise ConfigError(f"method.entry: {self.entry!r} is not in bank {bank.name}")
        return self.entry  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            **super().describe(),
            "pick": self.pick,
            "entry": self.entry,
            "batch_size": self.batch_size,
            "cutoff_len": self.cutoff_len,
        }

    def build(self, ctx: MethodContext, out_dir: Path) -> dict[str, Any]:  # noqa: D102
        name = self.choose(ctx)
        entry = ctx.get_bank()[name]
        info: dict[str, Any] = {
            "method": self.name,
            "entry": name,
            "entry_path": str(entry.path),
            "oracle": self.oracle,
        }
        if self.trains:
            stats = finetune_adapter(
                ctx.base_spec,
                entry.path,
                ctx.train_items(self.data),
                ctx.optim,
                ctx.trainer,
                out_dir / "adapter",
                seed=ctx.seed,
                batch_size=self.batch_size,
                cutoff_len=self.cutoff_len,
                logger=ctx.logger,
            )
            info.update(stats, adapter="adapter")  # relative: the stage dir is renamed into place afterwards
        else:
            info.update(adapter=str(entry.path), trainable_params=0)
        write_json(out_dir / "method.json", info)
        return info

    def load(self, ctx: MethodContext, out_dir: Path):  # noqa: D102
        from peft import PeftModel

        info = read_json(out_dir / "method.json")
        model, tok = ctx.base_spec.load()
        model = PeftModel.from_pretrained(model, str(out_dir / info["adapter"]))  # absolute paths stay absolute
        model.eval()
        return model, tok


class MergeMethod(Method):
    """Linear merge of the selected experts (``weights=uniform``: 1/N each), as one exact PEFT adapter."""

    needs_experts = True

    def __init__(self, name: str = "uniform_merge", label: str | None = "Uniform merge") -> None:
        super().__init__(name, "none", label)

    def build(self, ctx: MethodContext, out_dir: Path) -> dict[str, Any]:  # noqa: D102

        names = ctx.get_experts()
        bank = ctx.get_bank()
        adapters = [read_peft_adapter(bank[n].path) for n in names]
        weights = [1.0 / len(names)] * len(names)
        save_merged_adapter(adapters, weights, out_dir / "adapter", ctx.base_spec.identity)
        info = {"method": self.name, "experts": names, "weights": weights, "adapter": "adapter", "trainable_params": 0}
        write_json(out_dir / "method.json", info)
        return info

    load = SingleLoRAMethod.load
