"""Importing PEFT adapters into a bank: outputs identical to peft, and validation errors that name the entry."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from kexpert.bank.manifest import read_manifest
from kexpert.bank.spec import BankSpec, validate_bank
from kexpert.bank.testing import make_random_bank
from kexpert.bank.validate import entry_from_adapter
from kexpert.models.factory import BaseModelSpec
from kexpert.models.tiny import TINY_CONFIG
from kexpert.utils.errors import ConfigError, DataError

TINY = dict(TINY_CONFIG)


def _spec(**changes) -> BaseModelSpec:
    return BaseModelSpec(name="tiny", tiny={**TINY, **changes}, dtype="float32", device="cpu")


@pytest.fixture()
def bank_dir(tmp_path):
    make_random_bank(_spec(), tmp_path / "bank", n=3, rank=[2, 4, 8], seed=3)
    return tmp_path / "bank"


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_imported_adapters_reproduce_peft_outputs(tmp_path, tiny_tokenizer):
    from peft import LoraConfig, PeftModel, get_peft_model

    from kexpert.models.adapter import save_adapter

    spec = _spec()
    base, _ = spec.load()
    ids = torch.tensor([tiny_tokenizer("Question: why is the sky blue?").input_ids])
    ref = _logits(base, ids)
    torch.manual_seed(7)
    pm = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    pm.eval()
    expected = _logits(pm, ids)
    assert not torch.allclose(expected, ref)  # the adapter really changes the model
    save_adapter(pm, tmp_path / "adapters" / "mine", spec.identity)
    base = pm.unload()
    assert torch.equal(_logits(base, ids), ref)  # unload restores the base exactly

    bank = BankSpec(name="imp", adapters_dir=str(tmp_path / "adapters"), root=str(tmp_path / "bank")).load(spec)
    entry = bank["mine"]
    assert entry.rank == 4 and entry.alpha == 8.0 and entry.target_modules == ["q_proj", "v_proj"]
    assert entry.base_model == spec.identity and len(entry.sha256) == 64
    reread = read_manifest(tmp_path / "bank")  # the import wrote a manifest
    loaded = PeftModel.from_pretrained(base, str(reread["mine"].path))
    loaded.eval()
    assert torch.equal(_logits(loaded, ids), expected)


def test_pickled_bin_adapter_is_refused_never_unpickled(bank_dir, tmp_path):
    from safetensors.torch import load_file

    src = bank_dir / "adapters" / "lora_1"
    dst = tmp_path / "bin_adapters" / "lora_1"
    dst.mkdir(parents=True)
    shutil.copy(src / "adapter_config.json", dst)
    torch.save(load_file(str(src / "adapter_model.safetensors")), dst / "adapter_model.bin")
    with pytest.raises(DataError, match=r"bank entry 'bin'.*adapter_model.bin: pickle-only .*safe_serialization=True"):
        entry_from_adapter("bin", dst)
    with pytest.raises(DataError, match=r"bank entry 'lora_1'.*pickle-only adapter weights are refused"):
        BankSpec(name="bk", adapters_dir=str(tmp_path / "bin_adapters")).load(_spec())


def test_ranks_and_targets_may_differ(tmp_path):
    spec = _spec()
    model, _ = spec.load()
    make_random_bank(spec, tmp_path / "a", n=1, rank=2, target_modules=("q_proj",), model=model)
    make_random_bank(spec, tmp_path / "b", n=1, rank=8, target_modules=("q_proj", "v_proj", "o_proj"), model=model)
    (tmp_path / "mixed").mkdir()
    shutil.copytree(tmp_path / "a" / "adapters" / "lora_0", tmp_path / "mixed" / "small")
    shutil.copytree(tmp_path / "b" / "adapters" / "lora_0", tmp_path / "mixed" / "big")
    bank = BankSpec(name="mixed", adapters_dir=str(tmp_path / "mixed")).load(spec)
    assert bank.names() == ["big", "small"]
    assert bank["small"].rank == 2 and bank["small"].target_modules == ["q_proj"]
    assert bank["big"].rank == 8 and bank["big"].target_modules == ["o_proj", "q_proj", "v_proj"]


def test_rank_pattern_is_recorded_per_module(tmp_path):
    from peft import LoraConfig, get_peft_model

    from kexpert.models.adapter import save_adapter

    spec = _spec()
    model, _ = spec.load()
    pm = get_peft_model(
        model,
        LoraConfig(
            r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2}, init_lora_weights=False
        ),
    )
    save_adapter(pm, tmp_path / "ad" / "pat", spec.identity)
    entry = entry_from_adapter("pat", tmp_path / "ad" / "pat")
    assert entry.rank is None
    assert entry.meta["ranks"]["model.layers.0.self_attn.v_proj"] == 2
    assert entry.meta["ranks"]["model.layers.0.self_attn.q_proj"] == 4


def test_wrong_base_model_fails_or_warns(bank_dir, caplog):
    other = BaseModelSpec(name="other", tiny={**TINY, "seed": 1}, dtype="float32", device="cpu")
    spec = BankSpec(name="bk", manifest=str(bank_dir))
    with pytest.raises(ConfigError, match=r"bank entry 'lora_0'.*trained on base model .*allow_base_mismatch"):
        spec.load(other)
    spec.allow_base_mismatch = True
    with caplog.at_level("WARNING"):
        assert len(spec.load(other)) == 3
    assert "allow_base_mismatch" in caplog.text


def test_wrong_shape_names_entry_and_module(bank_dir):
    wide = _spec(hidden_size=64, intermediate_size=128)
    with pytest.raises(DataError, match=r"bank entry 'lora_0'.*model.layers.0.self_attn.q_proj is \(64 x 64\)"):
        validate_bank(read_manifest(bank_dir), wide, allow_base_mismatch=True)


def test_missing_target_module_names_entry(bank_dir):
    shallow = _spec(num_hidden_layers=1)
    with pytest.raises(DataError, match=r"bank entry 'lora_0'.*model.layers.1.self_attn.q_proj does not exist"):
        validate_bank(read_manifest(bank_dir), shallow, allow_base_mismatch=True)


def test_unknown_target_kind_and_changed_file(bank_dir):
    from safetensors.torch import load_file, save_file

    path = bank_dir / "adapters" / "lora_2" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    save_file({k.replace("v_proj", "x_proj"): v for k, v in tensors.items()}, str(path))
    bank = read_manifest(bank_dir)
    with pytest.raises(DataError, match=r"bank entry 'lora_2'.*sha256 .* differs"):
        validate_bank(bank, _spec())
    bank["lora_2"].sha256 = entry_from_adapter("lora_2", bank["lora_2"].path).sha256
    with pytest.raises(DataError, match=r"bank entry 'lora_2'.*x_proj does not exist.*no such layer kind"):
        validate_bank(bank, _spec())


def test_import_errors(tmp_path, bank_dir):
    with pytest.raises(ConfigError, match="exactly one of manifest, adapters_dir, hub_ids"):
        BankSpec(name="bk")
    with pytest.raises(DataError, match="is not a directory"):
        BankSpec(name="bk", adapters_dir=str(tmp_path / "nope")).load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no PEFT adapter dirs"):
        BankSpec(name="bk", adapters_dir=str(tmp_path / "empty")).load()
    cfg = bank_dir / "adapters" / "lora_0" / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "peft_type": "IA3"}))
    with pytest.raises(DataError, match=r"bank entry 'lora_0'.*peft_type 'IA3' is not LORA"):
        BankSpec(name="bk", adapters_dir=str(bank_dir / "adapters")).load()


def test_hub_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = BankSpec(name="hub", hub_ids=["someone/not-cached-lora"], cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"hub adapter 'someone/not-cached-lora' could not be fetched .*unreachable"):
        spec.load()


def test_unknown_entry_lookup_and_include(bank_dir):
    bank = BankSpec(name="bk", manifest=str(bank_dir), include=["lora_2", "lora_0"]).load()
    assert bank.names() == ["lora_2", "lora_0"]
    with pytest.raises(ConfigError, match="no entry 'lora_9'"):
        BankSpec(name="bk", manifest=str(bank_dir), include=["lora_9"]).load()
