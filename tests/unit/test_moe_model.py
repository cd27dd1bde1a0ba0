"""The LoRA-MoE inside a (tiny) HF causal LM: peft parity, strict loading, training flags, router init,
save/load, export to a plain LoRA, routing statistics and generation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from kexpert.models.components.router_init import KShotStatsRouterInit
from kexpert.models.factory import tiny_spec
from kexpert.models.inject import (
    LoRAMoESpec,
    inject_lora_moe,
    mark_only_moe_trainable,
    moe_layers,
    moe_state_dict,
)
from kexpert.models.moe_checkpoint import export_to_lora, load_expert, read_moe_config, save_moe
from kexpert.models.routing_stats import collect_routing_stats, write_routing_report
from kexpert.utils.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("single_thread")


TEXTS = [
    "Question: What is the capital of France?\nAnswer: Paris",
    "The cat sat on the mat.",
    "2 + 3 = 5",
    "Photosynthesis turns light into chemical energy.",
    "def f(x):\n    return x * 2",
]


def save_adapter(base, out: Path, rank: int, seed: int, alpha: float = 8.0, targets=("q_proj", "v_proj")) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False, lora_dropout=0.0)
    pm = get_peft_model(base, cfg)
    pm.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory, tiny_tokenizer):
    """Four peft adapters on the tiny model: ranks 4, 4, 6, 2 and alphas that make alpha != r."""
    from kexpert.models.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("bank")
    entries = []
    for i, rank in enumerate([4, 4, 6, 2]):
        path = save_adapter(build_tiny_llama(len(tiny_tokenizer)), root / f"lora{i}", rank, seed=10 + i)
        entries.append((f"lora{i}", str(path)))
    return entries


def logits(model, tok, texts=TEXTS[:2]):
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def test_single_expert_top1_equals_peft_lora(tiny_model, tiny_tokenizer, tiny_bank):
    from peft import PeftModel

    from kexpert.models.tiny import build_tiny_llama

    name, path = tiny_bank[2]  # rank 6, alpha 8: the scaling 8/6 must be applied
    ref = PeftModel.from_pretrained(build_tiny_llama(len(tiny_tokenizer)), path).eval()
    inject_lora_moe(tiny_model, LoRAMoESpec(num_experts=1, top_k=1), [(name, path)])
    tiny_model.eval()
    torch.testing.assert_close(logits(tiny_model, tiny_tokenizer), logits(ref, tiny_tokenizer), rtol=0, atol=1e-5)


def test_zero_b_model_gives_base_logits(tiny_model, tiny_tokenizer, tiny_bank):
    base = logits(tiny_model, tiny_tokenizer)
    inject_lora_moe(tiny_model, LoRAMoESpec(num_experts=4, top_k=2, lora_dropout=0.0), tiny_bank)
    with torch.no_grad():
        for layer in moe_layers(tiny_model).values():
            layer.experts.lora_B.zero_()
    torch.testing.assert_close(logits(tiny_model, tiny_tokenizer), base, rtol=0, atol=0)


def test_only_router_and_experts_train_and_base_is_unchanged(tiny_model, tiny_tokenizer, tiny_bank):
    inject_lora_moe(tiny_model, LoRAMoESpec(num_experts=4, top_k=2), tiny_bank)
    counts = mark_only_moe_trainable(tiny_model, train_experts=True)
    names = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert names and all(n.endswith(("router.gate.weight", "experts.lora_A", "experts.lora_B")) for n in names)
    assert counts["trainable"] == sum(p.numel() for n, p in tiny_model.named_parameters() if n in names)
    frozen_before = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if not p.requires_grad}
    train_before = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in tiny_model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    tiny_model.train()
    enc = tiny_tokenizer(TEXTS[:3], return_tensors="pt", padding=True)
    tiny_model(**enc, labels=enc["input_ids"]).loss.backward()
    opt.step()
    for n, p in tiny_model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
        else:
            assert not torch.equal(p, train_before[n]), n
    mark_only_moe_trainable(tiny_model, train_experts=False)
    assert {n for n, p in tiny_model.named_parameters() if p.requires_grad} == {
        n for n in names if n.endswith("router.gate.weight")
    }


def test_strict_loading_catches_a_renamed_key(tiny_model, tiny_bank, tmp_path):
    from safetensors.torch import load_file, save_file

    name, src = tiny_bank[1]
    bad = tmp_path / "renamed"
    shutil.copytree(src, bad)
    tensors = load_file(str(bad / "adapter_model.safetensors"))
    key = next(k for k in tensors if "layers.1.self_attn.v_proj.lora_B" in k)
    tensors[key.replace("v_proj", "v_prj")] = tensors.pop(key)
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    experts = [tiny_bank[0], ("renamed_expert", str(bad)), tiny_bank[2], tiny_bank[3]]
    with pytest.raises(
        DataError,
        match=r"'renamed_expert'.*missing key base_model\.model\.model\.layers\.1\.self_attn"
        r"\.v_proj\.lora_B\.weight; unexpected key .*v_prj\.lora_B\.weight",
    ):
        inject_lora_moe(tiny_model, LoRAMoESpec(num_experts=4, top_k=2), experts)


def test_strict_loading_catches_extra_and_malformed_keys(tiny_model, tiny_bank, tmp_path):
    from kexpert.models.tiny import build_tiny_llama

    extra = save_adapter(
        build_tiny_llama(tiny_model.config.vocab_size),
        tmp_path / "qkv",
        4,
        seed=3,
        targets=("q_proj", "k_proj", "v_proj"),
    )
    spec = LoRAMoESpec(num_experts=2, top_k=1, target_modules=["q_proj", "v_proj"])
    with pytest.raises(
        DataError,
        match=r"'qkv_expert'.*unexpected key base_model\.model\.model\.layers\.0\.self_attn"
        r"\.k_proj\.lora_A\.weight",
    ):
        inject_lora_moe(tiny_model, spec, [tiny_bank[0], ("qkv_expert", str(extra))])
    with pytest.raises(ConfigError, match="num_experts=4 but 2"):
        inject_lora_moe(tiny_model, LoRAMoESpec(num_experts=4, top_k=2), tiny_bank[:2])
    with pytest.raises(DataError, match="'ghost'"):
        inject_lora_moe(tiny_model, LoRAMoESpec(num_experts=1, top_k=1), [("ghost", str(tmp_path / "nope"))])


def test_mixlora_random_experts(tiny_model, tiny_tokenizer):
    base = logits(tiny_model, tiny_tokenizer)
    spec = LoRAMoESpec(num_experts=3, top_k=2, expert_init="random", random_rank=8, random_alpha=16)
    inj = inject_lora_moe(tiny_model, spec, None, default_target_modules=["q_proj", "v_proj"])
    assert [e.name for e in inj.experts] == ["random:0", "random:1", "random:2"]
    layer = next(iter(inj.layers.values()))
    assert layer.experts.rank_list == [8, 8, 8] and float(layer.experts.scaling[0]) == 2.0
    assert abs(float(layer.experts.lora_A.detach().std()) - 0.01) < 0.002
    tiny_model.eval()
    torch.testing.assert_close(logits(tiny_model, tiny_tokenizer), base, rtol=0, atol=0)  # B = 0
    with pytest.raises(ConfigError, match="all-zero experts"):
        KShotStatsRouterInit(progress=False)(
            tiny_model, inj.layers, [tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)]
        )


def _router_agreement(model, tok, layers, center_experts: bool) -> float:
    """Share of K-shot tokens whose router top-1 is the expert with the largest (centred) log-response."""
    from kexpert.models.components.router_init import expert_log_responses, experts_disabled

    enc = tok(TEXTS, return_tensors="pt", padding=True)
    mask = enc["attention_mask"].bool()
    inputs = {}
    handles = [
        layer.register_forward_pre_hook(lambda m, a, p=p: inputs.__setitem__(p, a[0][mask]))
        for p, layer in layers.items()
    ]
    with torch.no_grad(), experts_disabled(layers):
        model(**enc)
    for h in handles:
        h.remove()
    hits = total = 0
    with torch.no_grad():
        for p, layer in layers.items():
            t = expert_log_responses(layer, inputs[p], 1e-6)  # (n, N)
            if center_experts:
                t = t - t.mean(dim=0, keepdim=True)
            hits += int((layer.router(inputs[p]).indices[:, 0] == t.argmax(-1)).sum())
            total += t.shape[0]
    return hits / total


@pytest.mark.parametrize("center_experts", [True, False])
def test_kshot_stats_router_init_routes_to_the_strongest_expert(tiny_model, tiny_tokenizer, tiny_bank, center_experts):
    inj = inject_lora_moe(tiny_model, LoRAMoESpec(num_experts=4, top_k=1), tiny_bank)
    tiny_model.eval()
    default_agreement = _router_agreement(tiny_model, tiny_tokenizer, inj.layers, center_experts)
    before = {p: layer.router.gate.weight.detach().clone() for p, layer in inj.layers.items()}
    batches = [tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)]
    init = KShotStatsRouterInit(ridge=0.01, center_experts=center_experts, progress=False)
    summary = init(tiny_model, inj.layers, batches)
    assert summary["router_init"] == "kshot_stats" and summary["tokens"] > 0
    assert 0.0 < summary["explained_min"] <= 1.0
    assert all(not torch.equal(before[p], layer.router.gate.weight) for p, layer in inj.layers.items())
    fitted_agreement = _router_agreement(tiny_model, tiny_tokenizer, inj.layers, center_experts)
    assert fitted_agreement > max(0.45, default_agreement + 0.2)  # chance is 0.25
    with pytest.raises(ConfigError, match="K-shot"):
        KShotStatsRouterInit(progress=False)(tiny_model, inj.layers, None)


def test_save_load_round_trip_is_exact(tiny_tokenizer, tiny_bank, tmp_path):
    spec_base = tiny_spec()
    model, tok = spec_base.load()
    spec = LoRAMoESpec(num_experts=4, top_k=2, temperature=0.5)
    inj = inject_lora_moe(model, spec, tiny_bank)
    with torch.no_grad():  # make the routers non-default so the test sees them restored
        for layer in inj.layers.values():
            layer.router.gate.weight.normal_()
    model.eval()
    out = save_moe(model, tmp_path / "moe", base_spec=spec_base, spec=spec, injection=inj, extra={"note": "t"})
    cfg = read_moe_config(out)
    assert cfg["base_model"]["identity"] == spec_base.identity
    assert [e["name"] for e in cfg["experts"]] == [n for n, _ in tiny_bank]
    assert all(e["adapter_sha256"] for e in cfg["experts"])
    assert cfg["moe"]["top_k"] == 2 and cfg["moe"]["temperature"] == 0.5
    assert cfg["moe"]["router_init"]["_target_"].endswith("DefaultRouterInit")
    loaded, tok2 = load_expert(out)
    assert not loaded.training
    ref_sd, new_sd = moe_state_dict(model), moe_state_dict(loaded)
    assert ref_sd.keys() == new_sd.keys() and all(torch.equal(ref_sd[k], new_sd[k]) for k in ref_sd)
    assert torch.equal(logits(model, tok), logits(loaded, tok2))


def test_load_rejects_a_tampered_checkpoint(tiny_bank, tmp_path):
    from safetensors.torch import load_file, save_file

    spec_base = tiny_spec()
    model, _ = spec_base.load()
    spec = LoRAMoESpec(num_experts=4, top_k=2)
    out = save_moe(
        model, tmp_path / "moe", base_spec=spec_base, spec=spec, injection=inject_lora_moe(model, spec, tiny_bank)
    )
    tensors = load_file(str(out / "moe_model.safetensors"))
    key = next(k for k in tensors if k.endswith("router.gate.weight"))
    tensors[key.replace("router", "ruoter")] = tensors.pop(key)
    save_file(tensors, str(out / "moe_model.safetensors"))
    with pytest.raises(DataError, match="ruoter"):
        load_expert(out)
    (out / "moe_config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="format"):
        load_expert(out)


def test_export_single_expert_reproduces_the_moe(tiny_model, tiny_tokenizer, tiny_bank, tmp_path):
    from peft import PeftModel

    from kexpert.models.tiny import build_tiny_llama

    inject_lora_moe(tiny_model, LoRAMoESpec(num_experts=1, top_k=1), tiny_bank[2:3])
    tiny_model.eval()
    for method in ("mean_gate", "least_squares"):
        rep = export_to_lora(
            tiny_model, tiny_tokenizer, TEXTS, tmp_path / method, rank=6, method=method, ridge=1e-9, progress=False
        )
        assert rep.rank == 6 and rep.mean_energy == pytest.approx(1.0)
        exported = PeftModel.from_pretrained(build_tiny_llama(len(tiny_tokenizer)), str(rep.out_dir)).eval()
        torch.testing.assert_close(
            logits(exported, tiny_tokenizer), logits(tiny_model, tiny_tokenizer), rtol=0, atol=1e-4
        )


def test_export_mean_gate_is_the_gate_weighted_sum(tiny_model, tiny_tokenizer, tiny_bank, tmp_path):
    from peft import PeftModel

    from kexpert.models.tiny import build_tiny_llama

    inj = inject_lora_moe(tiny_model, LoRAMoESpec(num_experts=4, top_k=2), tiny_bank)
    tiny_model.eval()
    full = export_to_lora(
        tiny_model, tiny_tokenizer, TEXTS, tmp_path / "full", rank=32, method="mean_gate", progress=False
    )
    exported = PeftModel.from_pretrained(build_tiny_llama(len(tiny_tokenizer)), str(full.out_dir))
    for path, layer in inj.layers.items():
        gates = full.layers[path]["gate_mean"]
        assert sum(gates) == pytest.approx(1.0, abs=1e-5)
        expected = sum(g * layer.experts.delta_weight(i) for i, g in enumerate(gates))
        peft_layer = exported.base_model.model.get_submodule(path)
        torch.testing.assert_close(peft_layer.get_delta_weight("default"), expected, rtol=1e-4, atol=1e-5)
    low = export_to_lora(tiny_model, tiny_tokenizer, TEXTS, tmp_path / "low", rank=2, progress=False)
    assert low.rank == 2 and 0.0 < low.mean_energy < 1.0
    assert json.loads((low.out_dir / "adapter_config.json").read_text())["r"] == 2


def test_routing_stats_report(tiny_model, tiny_tokenizer, tiny_bank, tmp_path):
    inject_lora_moe(tiny_model, LoRAMoESpec(num_experts=4, top_k=2), tiny_bank)
    stats = collect_routing_stats(
        tiny_model, tiny_tokenizer, TEXTS, expert_names=[n for n, _ in tiny_bank], batch_size=2, progress=False
    )
    n_tokens = sum(len(tiny_tokenizer(t).input_ids) for t in TEXTS)
    assert stats.tokens == n_tokens and len(stats.layers) == 4
    for fr, mw in zip(stats.fractions, stats.mean_weights):
        assert sum(fr) == pytest.approx(2.0) and all(0 <= f <= 1 for f in fr)
        assert sum(mw) == pytest.approx(1.0)
    paths = write_routing_report(stats, tmp_path / "routing")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| L0.q_proj |" in paths["md"].read_text()
    assert len(paths["csv"].read_text().strip().splitlines()) == 1 + 4 * 4


def test_generation_with_kv_cache_matches_no_cache(tiny_model, tiny_tokenizer, tiny_bank):
    inject_lora_moe(tiny_model, LoRAMoESpec(num_experts=4, top_k=2), tiny_bank)
    tiny_model.eval()
    enc = tiny_tokenizer(["Question: 2 + 3 =", "The cat"], return_tensors="pt", padding=True, padding_side="left")
    kw = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tiny_tokenizer.pad_token_id}
    with torch.no_grad():
        cached = tiny_model.generate(**enc, use_cache=True, **kw)
        uncached = tiny_model.generate(**enc, use_cache=False, **kw)
    assert cached.shape[1] == enc["input_ids"].shape[1] + 12
    assert torch.equal(cached, uncached)


def test_least_squares_export_fits_the_routed_update_better_than_mean_gate(
    tiny_model, tiny_tokenizer, tiny_bank, tmp_path
):
    from safetensors.torch import load_file

    inj = inject_lora_moe(tiny_model, LoRAMoESpec(num_experts=4, top_k=2), tiny_bank)
    tiny_model.eval()
    inputs = {}
    enc = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    mask = enc["attention_mask"].bool()
    handles = [
        layer.register_forward_pre_hook(lambda m, a, p=p: inputs.__setitem__(p, a[0][mask]))
        for p, layer in inj.layers.items()
    ]
    with torch.no_grad():
        tiny_model(**enc)
    for h in handles:
        h.remove()
    residual = {}
    for method in ("mean_gate", "least_squares"):
        rep = export_to_lora(
            tiny_model, tiny_tokenizer, TEXTS, tmp_path / method, rank=32, method=method, ridge=1e-8, progress=False
        )
        tensors = load_file(str(rep.out_dir / "adapter_model.safetensors"))
        total = 0.0
        for p, layer in inj.layers.items():
            dw = tensors[f"base_model.model.{p}.lora_B.weight"] @ tensors[f"base_model.model.{p}.lora_A.weight"]
            with torch.no_grad():
                target, _ = layer.delta(inputs[p])
            total += float(((inputs[p] @ dw.t() - target) ** 2).sum())
        residual[method] = total
    assert residual["least_squares"] < residual["mean_gate"]
