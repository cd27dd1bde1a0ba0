"""Every ``conf/bank`` option composes with ``conf/bank.yaml`` and instantiates to a spec with ``.load``."""

from __future__ import annotations

from pathlib import Path

import pytest

from kexpert.bank.build import BankBuildSpec
from kexpert.bank.spec import BankSpec
from kexpert.utils.instantiate import instantiate

CONF = Path(__file__).resolve().parents[2] / "conf" / "bank"
OPTIONS = sorted(p.stem for p in CONF.glob("*.yaml"))
REQUIRED = {
    "manifest": ["bank.manifest=/tmp/some_bank"],
    "adapters_dir": ["bank.adapters_dir=/tmp/adapters"],
    "hub": ["bank.hub_ids=[someone/lora]"],
}


def test_there_are_build_and_import_options():
    assert {"smollm2_cpu", "paper_7b", "fixture_2", "manifest", "adapters_dir", "hub"} <= set(OPTIONS)


@pytest.mark.parametrize("option", OPTIONS)
def test_bank_option_composes_and_instantiates(compose_cfg, option):
    cfg = compose_cfg("bank", [f"bank={option}", "base_model=tiny", *REQUIRED.get(option, [])])
    spec = instantiate(cfg.bank, key="bank")
    assert hasattr(spec, "load") and spec.name
    assert isinstance(spec, (BankBuildSpec, BankSpec))
    if isinstance(spec, BankBuildSpec):
        assert str(spec.root_path).endswith(f"{spec.name}/tiny")
        assert len({d.name for d in spec.datasets}) == len(spec.datasets)
    assert set(cfg.tasks) == {"arc_c", "arc_e", "boolq", "gsm8k", "mbpp", "piqa"}


def test_cpu_bank_meets_the_issue(compose_cfg):
    spec = instantiate(compose_cfg("bank", ["bank=smollm2_cpu"]).bank, key="bank")
    pools = [d for d in spec.datasets if d.files]
    experts = {d.task for d in spec.datasets if d.task}
    assert len(pools) >= 12 and experts == {"arc_c", "arc_e", "gsm8k", "mbpp"}
    assert spec.lora.r == 16 and spec.exclude_eval_overlap


def test_paper_bank_uses_paper_defaults(compose_cfg):
    spec = instantiate(compose_cfg("bank", ["bank=paper_7b", "base_model=llama2_7b"]).bank, key="bank")
    assert (spec.lora.r, spec.lora.alpha, spec.lora.dropout) == (16, 16, 0.05)
    assert (spec.train.lr, spec.train.epochs, spec.train.cutoff_len) == (5e-5, 3, 1024)
    assert spec.all_rows and str(spec.root_path).endswith("paper_7b/llama2_7b")


def test_missing_required_key_is_reported(compose_cfg):
    from kexpert.utils.errors import ConfigError

    cfg = compose_cfg("bank", ["bank=manifest"])
    with pytest.raises(ConfigError, match="bank"):
        instantiate(cfg.bank, key="bank")
