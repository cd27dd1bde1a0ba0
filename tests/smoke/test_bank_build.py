"""``python bank.py bank=fixture_2 base_model=tiny``: a 2-entry bank built on the fixture pools, then reused."""

from __future__ import annotations

import pytest
from omegaconf import open_dict

from kexpert.bank.manifest import read_manifest
from kexpert.pipeline.build_bank import run


def test_build_two_entry_bank_then_nothing_to_do(compose_cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KEXPERT_BANK_DIR", raising=False)
    cfg = compose_cfg("bank", ["bank=fixture_2", "base_model=tiny", "+trainer.enable_progress_bar=false"])
    with open_dict(cfg):
        cfg.paths.bank_dir = str(tmp_path / "banks")
    bank = run(cfg)
    assert bank.names() == ["alpaca_demo", "commonsense_qa"]
    root = tmp_path / "banks" / "fixture_2" / "tiny"
    manifest = read_manifest(root)
    assert manifest.names() == bank.names()
    for e in manifest.entries:
        assert (e.path / "adapter_model.safetensors").exists() and (e.path / "adapter_config.json").exists()
        assert e.rank == 4 and e.alpha == 8.0 and e.target_modules == ["q_proj", "v_proj"]
        assert e.source["rows"] == 8 and e.source["files"] and e.train_loss is not None
        assert e.meta["train_tokens"] > 0 and e.meta["steps"] == 2
    assert not list(root.glob("adapters/.*"))  # no temp dirs left behind
    out = capsys.readouterr().out
    assert "bank fixture_2: 2 entries" in out
    sha = {e.name: e.sha256 for e in manifest.entries}
    again = run(cfg)  # the same command with the bank present builds nothing
    assert {e.name: e.sha256 for e in again.entries} == sha


def test_missing_bank_error_names_build_command(compose_cfg, tmp_path):
    from kexpert.utils.errors import ConfigError
    from kexpert.utils.instantiate import instantiate

    cfg = compose_cfg("bank", ["bank=fixture_2", "base_model=tiny"])
    with open_dict(cfg):
        cfg.paths.bank_dir = str(tmp_path / "nobanks")
    with pytest.raises(ConfigError, match="build it with: python bank.py bank=fixture_2 base_model=tiny"):
        instantiate(cfg.bank, key="bank").load(instantiate(cfg.base_model, key="base_model"))
