"""K-shot signals: perplexity parity with a plain forward, no BOS in responses, mixed batches, cache, rationales."""

import copy
import json
import math

import pytest
import torch

from kexpert.bank.testing import make_random_bank
from kexpert.data.kshot import sample_kshot
from kexpert.models.factory import BaseModelSpec
from kexpert.selection.experts.rationales import RationaleConfig, kshot_rationales, read_cot_file, uses_base_model
from kexpert.selection.experts.signals import BASE, BankScorer, SignalConfig, adapter_name
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.instantiate import instantiate

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, seed=0
)


@pytest.fixture()
def spec():
    return BaseModelSpec(name="tiny", dtype="float32", device="cpu", tiny=dict(TINY))


@pytest.fixture()
def bank(spec, tmp_path):
    return make_random_bank(spec, tmp_path / "bank", n=3, rank=[2, 4, 4])


def _task(compose_cfg, name="arc_c"):
    return instantiate(compose_cfg("select_experts", [f"task={name}", "base_model=tiny"]).task, key="task")


def _scorer(task, bank, spec, tmp_path, k=3, loader=None, **cfg):
    kshot = sample_kshot(task.kshot_pool(), k, 0)
    config = SignalConfig(progress=False, batch_size=cfg.pop("batch_size", 4), **cfg)
    return BankScorer(
        task,
        kshot,
        bank,
        model_loader=loader or spec.load,
        prompt_format=spec.prompt_format,
        base_identity=spec.identity,
        config=config,
        cache_dir=tmp_path / "cache",
    )


def test_perplexity_equals_exp_of_mean_response_loss(compose_cfg, bank, spec, tmp_path):
    task = _task(compose_cfg)
    scorer = _scorer(task, bank, spec, tmp_path, cache=False)
    values = scorer.compute("ppl", bank.names() + [BASE])
    model, tok = scorer.peft_model(), scorer.base()[1]
    for name in bank.names() + [BASE]:
        for (ctx, resp), ppl in zip(scorer.pairs("ppl"), values[name]["per_example"]):
            c = tok(ctx, add_special_tokens=True).input_ids
            r = tok(resp, add_special_tokens=False).input_ids
            ids = torch.tensor([c + r])
            labels = torch.tensor([[-100] * len(c) + r])
            with torch.no_grad():
                if name == BASE:
                    with model.disable_adapter():
                        loss = model(input_ids=ids, labels=labels).loss
                else:
                    model.set_adapter(adapter_name(name))
                    loss = model(input_ids=ids, labels=labels).loss
            assert ppl == pytest.approx(math.exp(float(loss)), rel=1e-4)
    assert values[bank.names()[0]]["value"] == pytest.approx(sum(values[bank.names()[0]]["per_example"]) / 3)
    assert len({round(values[n]["value"], 6) for n in bank.names()}) == 3  # the adapters really differ


def test_no_bos_inside_scored_responses(compose_cfg, bank, spec, tmp_path, tiny_tokenizer):
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tiny_tokenizer)  # make it add BOS like LLaMA/Mistral tokenizers do
    tok._tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    assert tok("x").input_ids[0] == tok.bos_token_id
    task = _task(compose_cfg)

    def loader():
        model, _ = spec.load()
        return model, tok

    scorer = _scorer(task, bank, spec, tmp_path, loader=loader, cache=False)
    seen = []
    model = scorer.peft_model()
    scorer.rationales()  # generated first (the chat template has its own special tokens): only scoring is hooked
    hook = model.get_base_model().register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone())),
        with_kwargs=True,
    )
    try:
        scorer.compute("reasoning_ppl", bank.names())
    finally:
        hook.remove()
    assert seen
    for ids, mask in seen:
        for row, m in zip(ids, mask):
            real = row[m.bool()]
            assert real[0] == tok.bos_token_id  # the prompt's own BOS
            assert int((real == tok.bos_token_id).sum()) == 1  # and none inside the response
    for _, resp in scorer.pairs("reasoning_ppl"):
        assert not resp.startswith(tok.bos_token)


def test_mixed_adapter_batches_equal_one_pass_per_adapter(compose_cfg, bank, spec, tmp_path):
    task = _task(compose_cfg)
    names = bank.names() + [BASE]
    mixed = _scorer(task, bank, spec, tmp_path, cache=False, mixed_batches=True).compute("ppl", names)
    single = _scorer(task, bank, spec, tmp_path, cache=False, mixed_batches=False).compute("ppl", names)
    for n in names:
        assert mixed[n]["per_example"] == pytest.approx(single[n]["per_example"], rel=1e-5)


def test_cache_is_keyed_by_adapter_and_kshot(compose_cfg, bank, spec, tmp_path):
    task = _task(compose_cfg)
    first = _scorer(task, bank, spec, tmp_path)
    a = first.compute("ppl", bank.names())
    assert "ppl" in first.timings
    again = _scorer(task, bank, spec, tmp_path)
    b = again.compute("ppl", bank.names())
    assert "ppl" not in again.timings and again._model is None  # served from disk, no model loaded
    assert [a[n]["value"] for n in a] == [b[n]["value"] for n in b]
    other = _scorer(task, bank, spec, tmp_path, k=4)
    other.compute("ppl", bank.names()[:1])
    assert "ppl" in other.timings  # another K-shot is another key


def test_accuracy_generate_and_loglikelihood(compose_cfg, bank, spec, tmp_path):
    task = _task(compose_cfg)
    task.max_new_tokens = 4
    for mode in ("generate", "loglikelihood"):
        scorer = _scorer(task, bank, spec, tmp_path, k=2, cache=False, accuracy_mode=mode)
        res = scorer.compute("accuracy", bank.names() + [BASE])
        for _n, v in res.items():
            assert v["mode"] == mode and len(v["per_example"]) == 2
            assert v["value"] == pytest.approx(sum(v["per_example"]) / 2)


def test_rationale_sources_record_cot_file_and_generated(compose_cfg, spec, tmp_path):
    gsm = _task(compose_cfg, "gsm8k")
    kshot = sample_kshot(gsm.kshot_pool(), 3, 0)
    rows = kshot_rationales(
        RationaleConfig(), gsm, kshot, tmp_path, None, lambda: pytest.fail("no generation"), "tiny"
    )
    assert [r["source"] for r in rows] == ["record"] * 3 and rows[0]["rationale"] == kshot[0].rationale

    arc = _task(compose_cfg)
    kshot = sample_kshot(arc.kshot_pool(), 3, 0)
    cot = tmp_path / "data" / "rocket" / "arc-c_cot_50shot.jsonl"
    cot.parent.mkdir(parents=True)
    ex = kshot[0]
    opts = "\n".join(f"{lbl}. {t}" for lbl, t in zip(ex.choice_labels, ex.choices))
    cot.write_text(
        json.dumps(
            {
                "instruction": f"Question: {ex.question}  {opts}\nAnswer:",
                "input": "",
                "output": f"{ex.gold}. {ex.gold_text}\n\nBecause it is. Really.",
            }
        )
        + "\n"
    )
    assert read_cot_file(cot)
    model, tok = spec.load()
    calls = []

    def loader():
        calls.append(1)
        return model, tok, spec.prompt_format, "tiny"

    cfg = RationaleConfig(max_new_tokens=6, batch_size=2)
    rows = kshot_rationales(cfg, arc, kshot, tmp_path / "cache", str(tmp_path / "data"), loader, "tiny")
    assert rows[0]["source"].startswith("cot_file") and rows[0]["rationale"] == "Because it is. Really."
    assert [r["source"] for r in rows[1:]] == ["generated", "generated"] and calls == [1]
    cached = list((tmp_path / "cache" / "rationales" / "arc_c").glob("*.jsonl"))
    assert len(cached) == 1 and len(cached[0].read_text().splitlines()) == 2
    again = kshot_rationales(cfg, arc, kshot, tmp_path / "cache", str(tmp_path / "data"), loader, "tiny")
    assert calls == [1] and [r["rationale"] for r in again] == [r["rationale"] for r in rows]
    # another rationale model (here: another base model writing its own) never reuses these rationales
    kshot_rationales(cfg, arc, kshot, tmp_path / "cache", str(tmp_path / "data"), loader, "other-base")
    assert calls == [1, 1] and len(list((tmp_path / "cache" / "rationales" / "arc_c").glob("*.jsonl"))) == 2
    with pytest.raises(DataError, match="no rationale"):
        kshot_rationales(RationaleConfig(sources=["record"]), arc, kshot, tmp_path, None, loader, "tiny")


def test_uses_base_model():
    assert uses_base_model(None) and uses_base_model({"name": "base"})
    assert not uses_base_model({"_target_": "kexpert.models.factory.BaseModelSpec", "name": "base"})
    assert not uses_base_model({"name": "qwen2_5_14b_instruct", "hf_id": "Qwen/Qwen2.5-14B-Instruct"})


def test_signal_config_validation():
    with pytest.raises(ConfigError, match="accuracy_mode"):
        SignalConfig(accuracy_mode="sample")
    with pytest.raises(ConfigError, match="extra"):
        SignalConfig(extra=["bleu"])
    with pytest.raises(ConfigError, match="sources"):
        RationaleConfig(sources=["web"])
