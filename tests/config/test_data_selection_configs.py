"""select_data configs: every pool / encoder / data_selection option composes and instantiates; per-task pools."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kexpert.data.pools import load_pool
from kexpert.selection.data.decontamination import Decontaminator
from kexpert.selection.data.dedup import SemDeDup
from kexpert.selection.data.encoders import Encoder
from kexpert.selection.data.selectors import Selector
from kexpert.utils.instantiate import instantiate

CONF = Path(__file__).resolve().parents[2] / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_none_option_selects_nothing(compose_cfg):
    from kexpert.selection.data.none import NoDataSelection
    from kexpert.utils.errors import ConfigError

    sel = instantiate(compose_cfg("select_data", ["data_selection=none"]).data_selection, key="data_selection")
    assert isinstance(sel, NoDataSelection) and sel.budget == 0
    with pytest.raises(ConfigError, match="selects no data"):
        sel.select(None, None)


@pytest.mark.parametrize("option", [o for o in _options("data_selection") if o != "none"])
def test_every_selector_instantiates(compose_cfg, option):
    cfg = compose_cfg("select_data", [f"data_selection={option}"])
    sel = instantiate(cfg.data_selection, key="data_selection")
    assert isinstance(sel, Selector) and sel.budget == 1000 and sel.scoring == "max"
    if option in ("sim_div", "kde", "convex_hull"):
        assert isinstance(sel.dedup, SemDeDup) and sel.dedup.tau == 0.9  # paper defaults C=1K, tau=0.9
    else:
        assert sel.dedup is None


@pytest.mark.parametrize("option", _options("encoder"))
def test_every_encoder_instantiates_without_loading_a_model(compose_cfg, option):
    cfg = compose_cfg("select_data", [f"encoder={option}"])
    enc = instantiate(cfg.encoder, key="encoder")
    assert isinstance(enc, Encoder) and enc.identity
    assert getattr(enc, "_model", None) is None and getattr(enc, "_loaded", None) is None  # lazy


def test_bge_m3_has_the_paper_prefix(compose_cfg):
    cfg = compose_cfg("select_data", ["encoder=bge_m3"])
    assert cfg.encoder.model == "BAAI/bge-m3"
    assert cfg.encoder.prefix == "Represent the following sentence for similar task retrieval: "


def test_decontamination_and_index_instantiate(compose_cfg):
    cfg = compose_cfg("select_data", [])
    dec = instantiate(cfg.decontamination, key="decontamination")
    assert isinstance(dec, Decontaminator) and dec.index.kind == "auto"
    assert cfg.k_shot == 50 and cfg.data_seed == 0


@pytest.mark.parametrize(
    ("task", "pool"),
    [
        ("arc_c", "commonsense"),
        ("arc_e", "commonsense"),
        ("boolq", "commonsense"),
        ("piqa", "commonsense"),
        ("gsm8k", "math"),
        ("mbpp", "code"),
    ],
)
def test_pool_follows_the_task_and_can_be_overridden(compose_cfg, task, pool):
    assert compose_cfg("select_data", [f"task={task}"]).pool.name == pool
    assert compose_cfg("select_data", [f"task={task}", "pool=fixture"]).pool.name == "fixture"


def test_fixture_pool_loads(compose_cfg, fixture_data_dir):
    cfg = compose_cfg("select_data", ["pool=fixture"])
    items = load_pool(OmegaConf.to_container(cfg.pool, resolve=True), fixture_data_dir)
    assert len(items) == 24


@pytest.mark.parametrize("option", [o for o in _options("pool") if o != "fixture"])
def test_real_pool_files_exist(compose_cfg, real_data_dir, option):
    cfg = compose_cfg("select_data", [f"pool={option}"])
    for src in cfg.pool.sources:
        if "hub" in src:
            assert src.hub.path and src.fmt, f"pool={option}: hub sources need a path and a fmt"
            continue
        assert (real_data_dir / src.path).exists(), f"pool={option}: {src.path} missing in {real_data_dir}"
