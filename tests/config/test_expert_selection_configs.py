"""Every option of the expert_selection config group composes and instantiates."""

from pathlib import Path

import pytest

from kexpert.selection.experts.diversity import DiversityConfig
from kexpert.selection.experts.signals import SignalConfig
from kexpert.utils.instantiate import instantiate

OPTIONS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "expert_selection").glob("*.yaml"))


def test_all_strategies_present():
    assert set(OPTIONS) == {
        "random",
        "fixed",
        "accuracy",
        "ppl",
        "reasoning_ppl",
        "accuracy_reasoning_ppl",
        "rocket",
        "oracle",
    }


@pytest.mark.parametrize("option", OPTIONS)
def test_option_instantiates(compose_cfg, option):
    extra = ["expert_selection.names=[a,b,c,d]"] if option == "fixed" else []
    cfg = compose_cfg("select_experts", [f"expert_selection={option}", "base_model=tiny", *extra])
    sel = instantiate(cfg.expert_selection, key="expert_selection")
    assert sel.name == option and sel.num_experts == 4  # N defaults to 4 without a MoE config
    assert isinstance(sel.signals, SignalConfig) and isinstance(sel.diversity, DiversityConfig)
    assert cfg.k_shot == 50 and cfg.data_seed == 0


def test_rocket_defaults_follow_the_paper(compose_cfg):
    sel = instantiate(compose_cfg("select_experts", ["base_model=tiny"]).expert_selection)
    assert (sel.num_candidates, sel.num_experts, sel.diversity_weight) == (8, 4, 1.0)
    assert sel.weights == {"reasoning_ppl": 1.0, "accuracy": 1.0}
    assert sel.signals.accuracy_mode == "generate" and sel.diversity.quantity == "delta_w"


def test_num_experts_follows_moe_and_official_diversity(compose_cfg):
    cfg = compose_cfg(
        "select_experts", ["base_model=tiny", "+moe.num_experts=6", "expert_selection/diversity=official"]
    )
    sel = instantiate(cfg.expert_selection)
    assert sel.num_experts == 6
    assert (sel.diversity.quantity, sel.diversity.absolute) == ("ab", True)


@pytest.mark.parametrize("config_name", ["select_experts", "train"])
def test_random_group_follows_the_kshot_draw(compose_cfg, config_name):
    """A sweep over data_seed=0,1,2 averages three random groups (the paper's Random row), unless seed is fixed."""
    seeds = [
        instantiate(
            compose_cfg(config_name, ["expert_selection=random", "base_model=tiny", f"data_seed={d}"]).expert_selection
        ).seed
        for d in (0, 1, 2)
    ]
    assert seeds == [0, 1, 2]
    fixed = compose_cfg(config_name, ["expert_selection=random", "expert_selection.seed=7", "data_seed=2"])
    assert instantiate(fixed.expert_selection).seed == 7
