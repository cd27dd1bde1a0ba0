"""Every ``conf/moe`` option (and every ``moe/router_init``) composes, alone and inside a primary, and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kexpert.models.components.router_init import DefaultRouterInit, KShotStatsRouterInit
from kexpert.models.inject import LoRAMoESpec
from kexpert.utils.errors import ConfigError
from kexpert.utils.instantiate import instantiate

CONF = Path(__file__).resolve().parents[2] / "conf"
OPTIONS = sorted(p.stem for p in (CONF / "moe").glob("*.yaml"))
INITS = sorted(p.stem for p in (CONF / "moe" / "router_init").glob("*.yaml"))


def test_the_issue_options_exist():
    assert {"lora_moe", "lora_moe_router_only", "mixlora"} <= set(OPTIONS)
    assert {"default", "kshot_stats"} <= set(INITS)


def test_lora_moe_defaults_are_the_paper():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="moe/lora_moe")  # the group composes on its own
    spec = instantiate(cfg.moe, key="moe")
    assert (spec.num_experts, spec.top_k, spec.temperature, spec.lora_dropout) == (4, 2, 1.0, 0.05)
    assert (spec.aux_loss_coef, spec.z_loss_coef, spec.train_experts, spec.compute) == (0.0, 0.0, True, "auto")
    assert spec.expert_init == "bank" and isinstance(spec.router_init, DefaultRouterInit)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("option", OPTIONS)
def test_option_composes_and_instantiates(compose_cfg, option, init):
    cfg = compose_cfg("eval", [f"+moe={option}", f"moe/router_init={init}", "base_model=tiny"])
    spec = instantiate(cfg.moe, key="moe")
    assert isinstance(spec, LoRAMoESpec)
    assert isinstance(spec.router_init, {"default": DefaultRouterInit, "kshot_stats": KShotStatsRouterInit}[init])
    assert spec.train_experts == (option != "lora_moe_router_only")
    assert spec.expert_init == ("random" if option == "mixlora" else "bank")
    assert 1 <= spec.top_k <= spec.num_experts
    settings = spec.settings()
    assert LoRAMoESpec.from_settings(settings).settings()["top_k"] == settings["top_k"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("moe.top_k=5", "moe.top_k"),
        ("moe.top_k=0", "moe.top_k"),
        ("moe.compute=sparse", "moe.compute"),
        ("moe.temperature=0", "moe.temperature"),
        ("moe.expert_init=zeros", "moe.expert_init"),
        ("moe.router_init.ridge=-1", "ridge"),
    ],
)
def test_invalid_values_are_config_errors(compose_cfg, override, message):
    cfg = compose_cfg("eval", ["+moe=lora_moe", "moe/router_init=kshot_stats", override])
    with pytest.raises(ConfigError, match=message):
        instantiate(cfg.moe, key="moe")


def test_sweeping_num_experts_keeps_top_k_valid(compose_cfg):
    for n in (1, 2, 6, 8):
        cfg = compose_cfg("eval", ["+moe=lora_moe", f"moe.num_experts={n}", f"moe.top_k={min(2, n)}"])
        assert instantiate(cfg.moe, key="moe").num_experts == n
