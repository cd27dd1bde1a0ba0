"""Every option of every config group composes, and the cheap ones instantiate."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, get_object, instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
# Groups whose options are selected through Hydra's own config (launchers) or only inside other groups.
HYDRA_GROUPS = {"hydra", "local"}


def group_options():
    out = []
    for d in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in HYDRA_GROUPS):
        for opt in sorted(d.glob("*.yaml")):
            out.append((d.name, opt.stem))
    return out


def primary_for(group: str) -> tuple[str, bool]:
    """A primary config that lists this group in its defaults (else eval with '+group=')."""
    for name in ["train", *PRIMARY]:
        text = (CONF / f"{name}.yaml").read_text()
        if f"- {group}:" in text or f"- optional {group}:" in text or f"- override /{group}:" in text:
            return name, True
    return "eval", False


def test_there_are_groups_and_primaries():
    groups = {g for g, _ in group_options()}
    assert {"task", "base_model", "paths", "logger", "trainer", "launcher", "eval", "optim"} <= groups
    assert "eval" in PRIMARY


@pytest.mark.parametrize(("group", "option"), group_options())
def test_option_composes(group, option, tmp_path, fixture_data_dir):
    primary, listed = primary_for(group)
    override = f"{group}={option}" if listed else f"+{group}={option}"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=primary, overrides=[override], return_hydra_config=True)
    assert cfg is not None
    is_global = (CONF / group / f"{option}.yaml").read_text().startswith("# @package _global_")
    node = cfg if is_global else cfg.get(group)
    assert node is not None
    # every _target_ anywhere in the option must be importable
    container = OmegaConf.to_container(node, resolve=False)

    def targets(obj):
        if isinstance(obj, dict):
            if "_target_" in obj:
                yield obj["_target_"]
            for v in obj.values():
                yield from targets(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from targets(v)

    for t in targets(container):
        assert get_object(t) is not None, t


CHEAP = {
    "task": None,
    "base_model": None,
    "trainer": {"cpu"},
    "logger": None,
    "optim": None,
}


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g, o in group_options() if g in CHEAP and (CHEAP[g] is None or o in CHEAP[g])]
)
def test_option_instantiates(group, option, compose_cfg, tmp_path):
    cfg = compose_cfg(
        "eval", [f"+{group}={option}"] if group in ("trainer", "logger", "optim") else [f"{group}={option}"]
    )
    node = cfg[group]
    if group == "logger":
        objs = [instantiate(sub) for sub in node.values()]
        assert objs
    elif group == "optim":
        import torch

        opt = instantiate(node.optimizer)(params=[torch.nn.Parameter(torch.zeros(2))])
        sched = instantiate(node.scheduler)(optimizer=opt, num_training_steps=10)
        assert sched.get_last_lr()
    else:
        obj = instantiate(node)
        assert obj is not None
        if group == "task":
            assert obj.eval_examples()


def test_fsdp_wrap_policy_resolves_to_classes(compose_cfg):
    cfg = compose_cfg("eval", ["+trainer=fsdp"])
    classes = instantiate(cfg.trainer.strategy.auto_wrap_policy)
    assert any(c.__name__ == "LlamaDecoderLayer" for c in classes)


def test_launchers_compose_with_hydra_plugins():
    for launcher, target in [("joblib", "JoblibLauncher"), ("submitit_slurm", "SlurmLauncher")]:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="eval", overrides=[f"+launcher={launcher}"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith(target)
        get_class(cfg.hydra.launcher._target_)


def test_global_package_files_start_with_the_directive():
    for sub in ("launcher", "sweep", "experiment"):
        for f in (CONF / sub).glob("*.yaml") if (CONF / sub).exists() else []:
            assert f.read_text().startswith("# @package _global_"), f
