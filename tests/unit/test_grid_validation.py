"""Grid expansion for sweep validation, and what ``skip_invalid`` skips."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from kexpert.pipeline.hydra_callbacks import grid_points
from kexpert.pipeline.validate import validate_config
from kexpert.utils.errors import ConfigError, InvalidGridPoint


def test_grid_points_is_the_cartesian_product_in_sweeper_order():
    jobs = grid_points(["task=arc_e,arc_c", "moe.top_k=1,2", "seed=0"])
    assert jobs == [
        ["task=arc_e", "moe.top_k=1", "seed=0"],
        ["task=arc_e", "moe.top_k=2", "seed=0"],
        ["task=arc_c", "moe.top_k=1", "seed=0"],
        ["task=arc_c", "moe.top_k=2", "seed=0"],
    ]


def test_grid_points_expands_ranges_and_keeps_prefixes():
    assert grid_points(["+x=range(0,3)", "~y"]) == [["+x=0", "~y"], ["+x=1", "~y"], ["+x=2", "~y"]]


@pytest.mark.parametrize(
    "cfg",
    [
        {"k_shot": 0},
        {"k_shot": 5, "moe": {"num_experts": 2, "top_k": 3}},
        {"k_shot": 5, "moe": {"num_experts": 3, "top_k": 2}, "expert_selection": {"num_experts": 4}},
    ],
)
def test_invalid_grid_points_raise_the_dedicated_error(cfg):
    with pytest.raises(InvalidGridPoint):
        validate_config(OmegaConf.create(cfg))


def test_invalid_grid_point_is_a_config_error_but_not_every_config_error_is_one():
    assert issubclass(InvalidGridPoint, ConfigError)
    assert not isinstance(ConfigError("x"), InvalidGridPoint)


def test_top_k_one_warns_that_the_router_cannot_learn(caplog):
    cfg = {"k_shot": 5, "moe": {"num_experts": 4, "top_k": 1}, "method": {"name": "rocket"}}
    with caplog.at_level("WARNING", logger="kexpert.pipeline.validate"):
        validate_config(OmegaConf.create(cfg))
        validate_config(OmegaConf.create({**cfg, "moe": {"num_experts": 4, "top_k": 2}}))
        validate_config(OmegaConf.create({**cfg, "method": {"name": "uniform_merge"}}))
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["moe.top_k=1"]
