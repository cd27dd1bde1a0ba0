"""Gradient clipping dispatch of CausalLMLitModule (issue 32): by norm under FSDP through the FSDP root's
``clip_grad_norm_`` (Lightning's FSDP precision plugin raises there), Lightning's own clipping otherwise."""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel

from kexpert.training.lit_module import CausalLMLitModule


def _module(strategy: MagicMock) -> tuple[CausalLMLitModule, MagicMock]:
    module = CausalLMLitModule(torch.nn.Linear(2, 2), optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    trainer = MagicMock()
    trainer.strategy = strategy
    module.trainer = trainer
    lightning_clip = MagicMock()
    module.clip_gradients = lightning_clip  # Lightning's default path (the precision plugin's clipping)
    return module, lightning_clip


def _fsdp_strategy() -> MagicMock:
    strategy = MagicMock(spec=FSDPStrategy)
    strategy.model = MagicMock(spec=FullyShardedDataParallel)
    return strategy


@pytest.mark.parametrize("algorithm", [None, "norm"])
def test_fsdp_clips_by_norm_through_the_fsdp_root(algorithm):
    strategy = _fsdp_strategy()
    module, lightning_clip = _module(strategy)
    module.configure_gradient_clipping(MagicMock(), gradient_clip_val=0.5, gradient_clip_algorithm=algorithm)
    strategy.model.clip_grad_norm_.assert_called_once_with(0.5)
    lightning_clip.assert_not_called()


@pytest.mark.parametrize(("value", "algorithm"), [(0.5, "value"), (None, "norm"), (0.0, None)])
def test_fsdp_without_norm_clipping_defers_to_lightning(value, algorithm):
    strategy = _fsdp_strategy()
    module, lightning_clip = _module(strategy)
    opt = MagicMock()
    module.configure_gradient_clipping(opt, gradient_clip_val=value, gradient_clip_algorithm=algorithm)
    strategy.model.clip_grad_norm_.assert_not_called()
    lightning_clip.assert_called_once_with(opt, gradient_clip_val=value, gradient_clip_algorithm=algorithm)


def test_other_strategies_clip_the_lightning_way():
    module, lightning_clip = _module(MagicMock(spec=DDPStrategy))
    opt = MagicMock()
    module.configure_gradient_clipping(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    lightning_clip.assert_called_once_with(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")


def test_fsdp_without_an_fsdp_root_fails_clearly():
    strategy = MagicMock(spec=FSDPStrategy)
    strategy.model = torch.nn.Linear(2, 2)
    module, _ = _module(strategy)
    with pytest.raises(RuntimeError, match="Linear"):
        module.configure_gradient_clipping(MagicMock(), gradient_clip_val=1.0, gradient_clip_algorithm="norm")


def test_conf_fsdp_clips_gradients():
    from hydra import compose, initialize_config_dir

    from tests.conftest import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=fsdp"])
    assert cfg.trainer.gradient_clip_val == 1.0
