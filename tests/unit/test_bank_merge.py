"""Compositions of LoRA adapters (uniform merge, LoRAHub): parity with peft and with LoRAHub's state-dict sum."""

from __future__ import annotations

import pytest
import torch

from kexpert.bank.merge import WeightPatcher, delta_weights, merged_modules, save_merged_adapter
from kexpert.bank.testing import make_random_bank
from kexpert.models.adapter import read_peft_adapter
from kexpert.models.factory import BaseModelSpec
from kexpert.models.tiny import TINY_CONFIG
from kexpert.utils.errors import ConfigError

SPEC = BaseModelSpec(name="tiny", tiny=dict(TINY_CONFIG), dtype="float32", device="cpu")
WEIGHTS = [0.7, -0.4, 1.2]


@pytest.fixture()
def same_rank_bank(tmp_path):
    return make_random_bank(SPEC, tmp_path / "bank", n=3, rank=4, seed=11)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _ids(tiny_tokenizer):
    return torch.tensor([tiny_tokenizer("Question: which gas do plants take in?").input_ids])


@pytest.mark.parametrize("composition", ["sum", "elementwise"])
def test_saved_adapter_loads_in_peft_and_matches_the_patched_weights(
    same_rank_bank, tmp_path, tiny_tokenizer, composition
):
    from peft import PeftModel

    adapters = [read_peft_adapter(e.path) for e in same_rank_bank.entries]
    ids = _ids(tiny_tokenizer)
    base, _ = SPEC.load()
    ref = _logits(base, ids)
    patcher = WeightPatcher(base)
    patcher.apply(delta_weights(adapters, WEIGHTS, composition))
    patched = _logits(base, ids)
    patcher.restore()
    assert torch.equal(_logits(base, ids), ref)  # restore is exact
    assert not torch.allclose(patched, ref)

    out = save_merged_adapter(adapters, WEIGHTS, tmp_path / "merged", SPEC.identity, composition)
    loaded = PeftModel.from_pretrained(base, str(out)).eval()
    torch.testing.assert_close(_logits(loaded, ids), patched, rtol=1e-4, atol=1e-5)


def test_elementwise_is_lorahubs_state_dict_sum(same_rank_bank, tmp_path, tiny_tokenizer):
    """LoRAHub's ``get_final_weights``: every lora_A / lora_B tensor summed with the weights, loaded into one peft
    adapter of the same config. The bank's adapters share rank and alpha, so the two must agree."""
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    paths = [e.path for e in same_rank_bank.entries]
    ids = _ids(tiny_tokenizer)
    states = [load_file(str(p / "adapter_model.safetensors")) for p in paths]
    summed = {k: sum(w * s[k] for w, s in zip(WEIGHTS, states)) for k in states[0]}
    base, _ = SPEC.load()
    lorahub = PeftModel.from_pretrained(base, str(paths[0])).eval()
    set_peft_model_state_dict(lorahub, summed)
    want = _logits(lorahub, ids)
    base = lorahub.unload()

    adapters = [read_peft_adapter(p) for p in paths]
    ours = PeftModel.from_pretrained(base, str(save_merged_adapter(adapters, WEIGHTS, tmp_path / "m", SPEC.identity,
                                                                   "elementwise"))).eval()  # fmt: skip
    torch.testing.assert_close(_logits(ours, ids), want, rtol=1e-4, atol=1e-5)


def test_the_two_compositions_differ_except_for_a_single_adapter(same_rank_bank):
    adapters = [read_peft_adapter(e.path) for e in same_rank_bank.entries]
    el, su = delta_weights(adapters, WEIGHTS, "elementwise"), delta_weights(adapters, WEIGHTS, "sum")
    assert el.keys() == su.keys()
    assert all(not torch.allclose(el[k], su[k]) for k in el)
    one = [0.0, 1.0, 0.0]
    el1, su1 = delta_weights(adapters, one, "elementwise"), delta_weights(adapters, one, "sum")
    for k, mod in adapters[1].modules.items():
        torch.testing.assert_close(el1[k], mod.delta_weight())
        torch.testing.assert_close(su1[k], mod.delta_weight())
    a, b = merged_modules(adapters, WEIGHTS, "elementwise")[next(iter(adapters[0].modules))]
    assert a.shape[0] == b.shape[1] == 4  # the common rank, not the sum of ranks


def test_elementwise_needs_one_rank_and_one_set_of_modules(tmp_path):
    mixed = make_random_bank(SPEC, tmp_path / "mixed", n=2, rank=[2, 4], seed=1)
    adapters = [read_peft_adapter(e.path) for e in mixed.entries]
    with pytest.raises(ConfigError, match=r"has rank 4 .* but 2 .*composition=sum"):
        merged_modules(adapters, [0.5, 0.5], "elementwise")
    assert merged_modules(adapters, [0.5, 0.5], "sum")  # the sum composition takes any ranks
    q_only = make_random_bank(SPEC, tmp_path / "q", n=1, rank=2, seed=5, target_modules=("q_proj",))
    with pytest.raises(ConfigError, match="adapts other modules"):
        merged_modules([adapters[0], read_peft_adapter(q_only.entries[0].path)], [0.5, 0.5], "elementwise")
    with pytest.raises(ConfigError, match="composition must be one of"):
        merged_modules(adapters, [0.5, 0.5], "average")
