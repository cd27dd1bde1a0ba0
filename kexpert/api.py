"""The small public API: run the pipeline from Python and load the expert it produced.

``kexpert.compose(overrides)`` builds the ``train.py`` config, ``kexpert.run(cfg)`` runs it (the same stages and
cache as the command line), and ``kexpert.load_expert(path)`` loads a finished expert ready to ``generate``::

    import kexpert

    metrics, _ = kexpert.run(kexpert.compose(["task=arc_e", "k_shot=5"], output_dir="outputs/runs/mine"))
    model, tok = kexpert.load_expert("outputs/runs/mine")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict
from peft import PeftModel

from kexpert.models import moe_checkpoint
from kexpert.models.factory import BaseModelSpec
from kexpert.pipeline.train import run as run_pipeline
from kexpert.utils.errors import DataError
from kexpert.utils.instantiate import instantiate
from kexpert.utils.io import read_json
from kexpert.utils.resolvers import register_resolvers

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(
    overrides: Sequence[str] = (), *, output_dir: str | Path | None = None, config_dir: str | Path | None = None
) -> DictConfig:
    """The ``train.py`` config with command-line style ``overrides`` (``["task=gsm8k", "k_shot=5"]``).

    Args:
        overrides: Hydra overrides, as on the command line.
        output_dir: The run dir (``paths.output_dir``; default ``outputs/runs/api``).
        config_dir: The config tree (default: the repository's ``conf/``).
    """
    register_resolvers()
    with initialize_config_dir(config_dir=str(Path(config_dir or CONF_DIR).resolve()), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir or Path("outputs") / "runs" / "api")
    return cfg


def run(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the pipeline's stages for ``cfg`` (see :func:`compose`); returns ``(metrics, objects)``.

    The run dir gets ``.hydra/config.yaml`` as a command-line run does, so :func:`load_expert` can read it back.
    """
    saved = Path(cfg.paths.output_dir) / ".hydra" / "config.yaml"
    if not saved.exists():
        saved.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, saved)
    return run_pipeline(cfg)


def _train_artifact(run_dir: Path) -> Path:
    link = run_dir / "artifacts" / "train"
    if link.exists():
        return link.resolve()
    pointer = link.with_suffix(".path")
    if pointer.exists():
        return Path(pointer.read_text().strip())
    raise DataError(f"{run_dir}: no artifacts/train (run train.py with its train and report stages first)")


def load_expert(path: str | Path, *, device: str | None = None):
    """Load the task expert at ``path`` as ``(model, tokenizer)``, in eval mode, ready to ``generate``.

    Args:
        path: A ``train.py`` run dir (``outputs/runs/...``, with ``.hydra/config.yaml`` and ``artifacts/train``),
            or a LoRA-MoE checkpoint dir (``moe_config.json`` + ``moe_model.safetensors``).
        device: Override the device (LoRA-MoE checkpoints).

    Raises:
        DataError: ``path`` is neither, or its files are missing or do not match.
    """
    path = Path(path)
    if (path / moe_checkpoint.CONFIG).exists():
        return moe_checkpoint.load_expert(path, device=device)
    hydra_cfg = path / ".hydra" / "config.yaml"
    if not hydra_cfg.exists():
        raise DataError(f"{path}: expected a train.py run dir (.hydra/config.yaml) or a LoRA-MoE checkpoint dir")
    art = _train_artifact(path)
    info = read_json(art / "method.json")
    if info.get("checkpoint"):
        return moe_checkpoint.load_expert(art / info["checkpoint"], device=device)
    spec: BaseModelSpec = instantiate(OmegaConf.load(hydra_cfg).base_model, key="base_model")
    model, tok = spec.load()
    if info.get("adapter"):
        model = PeftModel.from_pretrained(model, str(art / info["adapter"]))  # absolute paths stay absolute
        model.eval()
    return model, tok
