"""Every sweep file composes, every grid point is valid, and launchers compose with train.py."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kexpert.pipeline.validate import validate_config
from kexpert.utils.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"
SWEEPS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))


def grid(params: dict, cap: int = 1) -> list[list[str]]:
    """Cartesian product of the sweep params, keeping at most `cap` values of the larger axes (speed)."""
    combos: list[list[str]] = [[]]
    for key, values in params.items():
        vals = str(values).split(",")
        if len(vals) > cap and key in ("task", "data_seed", "seed"):
            vals = vals[:cap]
        combos = [c + [f"{key}={v}"] for c in combos for v in vals]
    return combos


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_file_header_and_grid(name):
    text = (CONF / "sweep" / f"{name}.yaml").read_text().splitlines()
    assert text[0] == "# @package _global_"
    assert text[1].startswith("# python train.py") and f"sweep={name}" in text[1]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"sweep={name}", "task=arc_e"], return_hydra_config=True)
        assert cfg.hydra.mode.name == "MULTIRUN" and cfg.sweep_name == name
        params = OmegaConf.to_container(cfg.hydra.sweeper.params)
        for point in grid(params):
            job = compose(config_name="train", overrides=[f"sweep={name}", "task=arc_e", *point])
            validate_config(job)


def test_invalid_point_is_rejected():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["moe.top_k=5"])
    with pytest.raises(ConfigError, match="moe.top_k=5 must be between 1 and moe.num_experts=4"):
        validate_config(cfg)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["expert_selection.num_candidates=2"])
    with pytest.raises(ConfigError, match="num_candidates"):
        validate_config(cfg)


@pytest.mark.parametrize("launcher", ["joblib", "submitit_slurm"])
def test_launchers_compose_with_train(launcher):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=[f"launcher={launcher}", "sweep=ablate_top_k"], return_hydra_config=True
        )
    assert "Launcher" in cfg.hydra.launcher._target_


def test_method_options_instantiate():
    from hydra.utils import instantiate

    for f in sorted((CONF / "method").glob("*.yaml")):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"method={f.stem}"])
        m = instantiate(cfg.method)
        assert m.name == f.stem and m.label


@pytest.mark.parametrize("option", ["lorahub", "lorahub_data"])
def test_lorahub_defaults_are_lorahubs_and_bad_values_are_named(option):
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"method={option}"])
    m = instantiate(cfg.method)
    assert (m.composition, m.l1_reduction, m.l1, m.budget, m.bounds) == ("elementwise", "mean", 0.05, 40, (-1.5, 1.5))
    for key, bad in (("composition", "concat"), ("l1_reduction", "max")):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"method={option}", f"method.{key}={bad}"])
        with pytest.raises(Exception, match=f"method.{key}"):
            instantiate(cfg.method)


def test_methods_declare_what_their_artifact_depends_on():
    """The bank and the seed enter a method's cache key exactly when its artifact depends on them."""
    from hydra.utils import instantiate

    depends = {}
    for f in sorted((CONF / "method").glob("*.yaml")):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            m = instantiate(compose(config_name="train", overrides=[f"method={f.stem}"]).method)
        depends[f.stem] = (m.uses_bank, m.uses_seed)
    assert depends["base"] == (False, False)
    assert depends["expert_lora"] == depends["source_best"] == (True, False)
    assert depends["random"] == depends["random_data"] == depends["source_best_sft"] == (True, True)
    assert depends["lorahub"] == depends["lorahub_data"] == (True, True)  # candidates drawn from the bank
    assert depends["rocket"] == (True, True) and depends["mixlora"] == (False, True)
    assert depends["uniform_merge"] == (True, False)


def test_only_moe_methods_route():
    """The moe config, routing stats and per-expert eval apply exactly to the LoRA-MoE methods."""
    from hydra.utils import instantiate

    routes = set()
    for f in sorted((CONF / "method").glob("*.yaml")):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            if instantiate(compose(config_name="train", overrides=[f"method={f.stem}"]).method).routes:
                routes.add(f.stem)
    assert routes == {"rocket", "mixlora", "mixlora_data"}
