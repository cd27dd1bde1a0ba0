"""The ``kx.dirname`` resolver that keeps every sweep job in one flat, valid dir."""

from omegaconf import OmegaConf

from kexpert.utils.resolvers import register_resolvers, safe_dirname


def test_plain_override_dirnames_are_unchanged():
    name = "data_seed=0,method=rocket,task=arc_e"
    assert safe_dirname(name) == name


def test_path_values_do_not_nest_dirs():
    out = safe_dirname("adapter=/root/banks/qasc,task=piqa")
    assert "/" not in out and out == "adapter=_root_banks_qasc,task=piqa"
    assert safe_dirname("..") == "_" and not safe_dirname("../x").startswith(".")
    assert safe_dirname("a\\b:c") == "a_b_c"


def test_long_names_are_cut_and_stay_distinct():
    a = "x=" + "a" * 300 + ",seed=0"
    b = "x=" + "a" * 300 + ",seed=1"
    ra, rb = safe_dirname(a), safe_dirname(b)
    assert len(ra.encode()) <= 200 and len(rb.encode()) <= 200
    assert ra != rb
    assert safe_dirname("é" * 150).encode().decode()  # cut on a character boundary, valid UTF-8


def test_resolver_is_registered_and_used_by_the_hydra_config():
    register_resolvers()
    register_resolvers()  # idempotent
    cfg = OmegaConf.create({"d": "adapter=/a/b", "sub": "${kx.dirname:${d}}"})
    assert cfg.sub == "adapter=_a_b"
