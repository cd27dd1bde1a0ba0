"""lm-evaluation-harness model ``kexpert``: score any kexpert artifact on any lm-eval task.

Importing this module registers the model class with lm-eval (``pip install "kexpert[lm-eval]"``)::

    python -m kexpert.lm_eval --model kexpert --model_args expert=outputs/runs/rocket_arc_e --tasks arc_easy

    import kexpert.integrations.lm_eval, lm_eval
    lm_eval.simple_evaluate(model="kexpert", model_args={"expert": "outputs/runs/rocket_arc_e"}, tasks=["arc_easy"])

``expert`` is any kexpert artifact (:func:`load_artifact`): a ``train.py`` run dir, a LoRA-MoE checkpoint dir, a
PEFT LoRA dir (a bank entry, or a LoRA-MoE exported by :func:`kexpert.models.moe_checkpoint.export_to_lora`), a
local HF model dir, or a ``conf/base_model`` name. The loaded model object goes to lm-eval's own ``HFLM``, so
tokenization, batching and every metric are lm-eval's; ``base=`` names the base model of a PEFT LoRA when its
``adapter_config.json`` does not, ``device=`` moves the model. docs/evaluation.md has the recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from omegaconf import OmegaConf
from peft import PeftModel

from kexpert.api import CONF_DIR, compose
from kexpert.api import load_expert as load_run_or_checkpoint
from kexpert.models import moe_checkpoint
from kexpert.models.factory import BaseModelSpec
from kexpert.utils.errors import ConfigError
from kexpert.utils.instantiate import instantiate
from kexpert.utils.io import read_json
from kexpert.utils.logging import get_logger

log = get_logger(__name__)

KINDS = ("run", "lora_moe", "lora", "hf", "base")
"""What :func:`load_artifact` recognises, in the order it tries them."""


def base_spec(name_or_dir: str, device: str | None = None) -> BaseModelSpec:
    """A base model: a ``conf/base_model`` name (``smollm2_135m``, ``tiny``) or a local HF model dir."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        spec = BaseModelSpec(name=path.name, path=str(path))
    elif (CONF_DIR / "base_model" / f"{name_or_dir}.yaml").exists():
        spec = instantiate(compose([f"base_model={name_or_dir}"]).base_model, key="base_model")
    else:
        names = sorted(p.stem for p in (CONF_DIR / "base_model").glob("*.yaml"))
        raise ConfigError(f"base model {name_or_dir!r}: neither a local HF model dir nor one of {names}")
    if device is not None:
        spec.device = device
    return spec


def adapter_base(adapter_dir: Path, base: str | None, device: str | None) -> BaseModelSpec:
    """The base model of a PEFT adapter: ``base`` if given, else the one its ``adapter_config.json`` records.

    A bank entry records its base's ``BaseModelSpec.identity`` (a hub id, a local path, or ``tiny:...``); an
    adapter saved by peft alone records the ``name_or_path`` of the model it was trained on.
    """
    if base is not None:
        return base_spec(base, device)
    recorded = read_json(adapter_dir / "adapter_config.json").get("base_model_name_or_path") or ""
    if recorded and Path(recorded).expanduser().is_dir():
        return base_spec(recorded, device)
    for cfg_file in sorted((CONF_DIR / "base_model").glob("*.yaml")) if recorded else []:
        raw = OmegaConf.load(cfg_file)  # unresolved: composing every config only to compare ids is slow
        if recorded in (raw.get("hf_id"), raw.get("path")):
            return base_spec(cfg_file.stem, device)
        if raw.get("tiny") is not None and recorded == base_spec(cfg_file.stem).identity:
            return base_spec(cfg_file.stem, device)
    raise ConfigError(
        f"{adapter_dir}: adapter_config.json names base model {recorded!r}, which is neither a local dir nor the "
        "hub id or identity of a conf/base_model config; pass base=<conf/base_model name or HF model dir>"
    )


def artifact_kind(expert: str | Path) -> str:
    """Which of :data:`KINDS` ``expert`` is (see :func:`load_artifact`)."""
    path = Path(expert).expanduser()
    if path.is_dir():
        if (path / ".hydra" / "config.yaml").exists():
            return "run"
        if (path / moe_checkpoint.CONFIG).exists():
            return "lora_moe"
        if (path / "adapter_config.json").exists():
            return "lora"
        if (path / "config.json").exists():
            return "hf"
    elif (CONF_DIR / "base_model" / f"{expert}.yaml").exists():
        return "base"
    raise ConfigError(
        f"expert={expert}: expected a train.py run dir, a LoRA-MoE checkpoint dir (moe_config.json), a PEFT LoRA dir "
        "(adapter_config.json), a local HF model dir (config.json) or a conf/base_model name"
    )


def load_artifact(expert: str | Path, *, base: str | None = None, device: str | None = None) -> tuple[Any, Any, str]:
    """Load a kexpert artifact as ``(model, tokenizer, kind)``, the model in eval mode.

    Args:
        expert: A ``train.py`` run dir (``kexpert.load_expert``), a LoRA-MoE checkpoint dir, a PEFT LoRA dir (bank
            entry or exported LoRA-MoE), a local HF model dir, or a ``conf/base_model`` name.
        base: For a PEFT LoRA: its base model (``conf/base_model`` name or HF dir), when the adapter's
            ``adapter_config.json`` does not name a local dir or a configured hub id. For a LoRA-MoE checkpoint: a
            local dir holding its base model's weights (moved since training). Ignored otherwise.
        device: Load onto this device (``cpu``, ``cuda``); default the artifact's own setting.

    Raises:
        ConfigError: ``expert`` is none of these, or a LoRA's base model is unknown.
        DataError: The artifact's files are missing or do not match.
    """
    kind = artifact_kind(expert)
    path = Path(expert).expanduser()
    if kind == "run":
        model, tok = load_run_or_checkpoint(path, device=device)
    elif kind == "lora_moe":
        model, tok = moe_checkpoint.load_expert(path, base_path=base, device=device)
    elif kind == "lora":
        model, tok = adapter_base(path, base, device).load()
        model = PeftModel.from_pretrained(model, str(path))
    else:
        model, tok = base_spec(str(expert), device).load()
    model.eval()
    return model, tok, kind


@register_model("kexpert")
class KexpertLM(HFLM):
    """lm-eval's ``HFLM`` around a kexpert artifact (``--model kexpert --model_args expert=<path>``).

    Args:
        expert: The artifact (see :func:`load_artifact`).
        base: Base model of a PEFT LoRA, or a LoRA-MoE's moved base dir (see :func:`load_artifact`).
        device: Device to load the model onto. lm-eval's command line passes ``cuda:0`` unless told otherwise; without
            CUDA that means the CPU (with a warning), as lm-eval's own ``hf`` model does.
        **kwargs: ``HFLM`` arguments (``batch_size``, ``max_length``, ...); those that configure loading
            (``dtype``, ``peft``, ``parallelize``) do not apply to a model object and are ignored by ``HFLM``.
    """

    def __init__(self, expert: str, base: str | None = None, device: str | None = None, **kwargs: Any) -> None:
        if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
            log.warning("device=%s, but CUDA is not available: loading %s on the CPU", device, expert)
            device = "cpu"
        model, tok, kind = load_artifact(expert, base=base, device=device)
        self.expert, self.expert_kind = str(expert), kind
        super().__init__(pretrained=model, tokenizer=tok, **kwargs)

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records about the model (no hub look-up: the model is a local object)."""
        return {
            "model_num_parameters": sum(p.numel() for p in self._model.parameters()),
            "model_dtype": str(next(self._model.parameters()).dtype),
            "kexpert_expert": self.expert,
            "kexpert_kind": self.expert_kind,
        }
