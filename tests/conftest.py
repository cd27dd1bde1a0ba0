"""Shared fixtures: offline environment, tiny model + tokenizer, fixture data dir, Hydra composition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DATA = Path(__file__).parent / "fixtures" / "data"
REAL_DATA = Path(os.environ.get("KEXPERT_DATA_DIR") or ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def fixture_data_dir() -> Path:
    """A tiny data dir in the layout of shared/data (a few rows per split)."""
    return FIXTURE_DATA


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real task data (skips the test when it is absent)."""
    if not (REAL_DATA / "eval").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (set KEXPERT_DATA_DIR to shared/data)")
    return REAL_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from kexpert.models.tiny import build_byte_tokenizer

    return build_byte_tokenizer()


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    """A fresh tiny random LLaMA (seeded: identical in every test and process)."""
    from kexpert.models.tiny import build_tiny_llama

    return build_tiny_llama(vocab_size=len(tiny_tokenizer))


@pytest.fixture()
def compose_cfg(tmp_path, fixture_data_dir):
    """Compose a config by name with overrides, outside a Hydra run (output dir = tmp_path)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    def _compose(config_name: str = "eval", overrides: list[str] | None = None):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=False)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "out")
            cfg.paths.data_dir = str(fixture_data_dir)
            cfg.paths.cache_dir = str(tmp_path / "cache")
            cfg.paths.log_dir = str(tmp_path / "logs")
        return cfg

    return _compose


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls when the shared CPU is busy (250x slower with 2).

    Use it per module with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def save_random_loras(root: Path, vocab_size: int, ranks, seed: int) -> list[tuple[str, str]]:
    """Random PEFT q,v LoRAs (both factors non-zero) on fresh tiny models: ``[(name, dir), ...]`` named e0, e1...

    Entry ``i`` is drawn with ``torch.manual_seed(seed + i)``; shared by the MoE training and resume tests.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from kexpert.models.tiny import build_tiny_llama

    out = []
    for i, rank in enumerate(ranks):
        torch.manual_seed(seed + i)
        pm = get_peft_model(
            build_tiny_llama(vocab_size),
            LoraConfig(r=rank, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        )
        pm.save_pretrained(str(root / f"e{i}"))
        out.append((f"e{i}", str(root / f"e{i}")))
    return out
