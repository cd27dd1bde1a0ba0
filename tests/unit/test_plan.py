"""The paper-scale configs without a GPU: the rehearsal's config path, the shrunk models, the memory planner."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from kexpert.api import compose
from kexpert.models import tiny
from kexpert.pipeline import plan as P

# What experiment=rehearse_paper may change relative to experiment=paper_7b: the model, the bank it fits, the
# CPU trainer, the data and the caps (conf/experiment/rehearse_paper.yaml says why).
REHEARSAL_KEYS = (
    "base_model.",
    "bank.",
    "encoder.",
    "pool.",
    "rationale_generator.",
    "paths.data_dir",
    "trainer.accelerator",
    "trainer.precision",
    "trainer.max_steps",
    "trainer.enable_progress_bar",
    "k_shot",
    "data_selection.budget",
    "task.max_new_tokens",
    "eval.limit",
    "eval.progress",
    "expert_selection.signals.progress",
    "expert_selection.signals.rationale.max_new_tokens",
    "oracle_selection.signals.progress",
    "embedding.progress",
    "method.checkpoint_every_n_steps",
    "sweep_name",
    "tags",
)


def flat(cfg) -> dict:
    out = {}

    def walk(node, pre):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{pre}{k}.")
        else:
            out[pre[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def test_rehearsal_is_paper_7b_with_only_the_model_shrunk_and_the_run_capped():
    paper = flat(compose(["experiment=paper_7b", "task=arc_c"]))
    rehearsal = flat(compose(["experiment=rehearse_paper"]))
    changed = {k for k in paper.keys() | rehearsal.keys() if paper.get(k, "<absent>") != rehearsal.get(k, "<absent>")}
    assert changed, "the rehearsal must shrink the model"
    unexpected = sorted(k for k in changed if not k.startswith(REHEARSAL_KEYS))
    assert not unexpected, f"rehearse_paper.yaml changes more than the model and the caps: {unexpected}"
    same = ["sft.batch_size", "sft.cutoff_len", "trainer.accumulate_grad_batches", "optim.optimizer.lr"]
    same += ["moe.num_experts", "moe.top_k", "moe.lora_dropout", "expert_selection.num_candidates"]
    same += ["data_selection.dedup.tau", "trainer.gradient_clip_val", "task.eval_mode", "task.response_format"]
    same += ["pool.mc_format"]
    for key in same:
        assert rehearsal[key] == paper[key], key
    assert (rehearsal["sft.batch_size"], rehearsal["sft.cutoff_len"]) == (2, 1024)
    assert rehearsal["trainer.accumulate_grad_batches"] == 16


@pytest.mark.parametrize("arch", ["llama2_7b", "mistral_7b"])
def test_shrunk_architecture_keeps_the_real_shapes(arch):
    real = P.shape_of(tiny.arch_config(arch))
    two = P.shape_of(tiny.arch_config(arch, num_hidden_layers=2))
    assert real.layers == 32 and two.layers == 2
    assert (two.hidden, two.ffn, two.vocab, two.kv_dim, two.linears) == (
        real.hidden,
        real.ffn,
        real.vocab,
        real.kv_dim,
        real.linears,
    )
    expected = 6_738_415_616 if arch == "llama2_7b" else 7_241_732_096  # the published parameter counts
    assert real.params == expected
    assert real.params - two.params == 30 * (two.layer_params + 2 * two.hidden)  # 30 layers of linears + 2 norms


def test_shrunk_model_builds_with_real_embedding_and_a_32000_token_tokenizer():
    from kexpert.models.factory import BaseModelSpec

    narrow = {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2}
    spec = BaseModelSpec(
        name="x", dtype="float32", device="cpu", tiny={"arch": "mistral_7b", "num_hidden_layers": 1, **narrow}
    )
    model, tok = spec.load()
    assert len(tok) == 32000 == model.get_input_embeddings().weight.shape[0]
    assert type(model).__name__ == "MistralForCausalLM" and model.config.rope_parameters["rope_theta"] == 1e6
    ids = tok("Answer: B")["input_ids"]
    assert tok.decode(ids) == "Answer: B" and max(ids) < 259  # bytes only; the padding ids are never produced
    again, _ = spec.load()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))  # seeded


def test_plan_paper_7b_counts_and_fits_80gb():
    p = P.plan(compose(["experiment=paper_7b", "task=arc_c"]))
    assert p["shape"]["params"] == 6_738_415_616 and p["precision"]["weights"] == 2 and p["strategy"] == "single"
    train = next(s for s in p["stages"] if s["stage"] == "train")
    # N=4 rank-16 experts on q_proj and v_proj (4096 -> 4096) in 32 layers; one 4096 -> 4 router per adapted linear
    assert train["trainable"] == {"experts": 4 * 16 * (4096 + 4096) * 2 * 32, "routers": 4096 * 4 * 2 * 32}
    assert 20 < train["peak_gb"] < 40 and train["peak_ckpt_gb"] < train["peak_gb"]
    assert train["terms_gb"]["weights"] == pytest.approx(6.738e9 * 2 / 1e9 + 0.14, abs=0.05)
    assert all(P.fits(s["peak_gb"], 80) for s in p["stages"])
    text = P.format_plan(p, 80)
    for stage in ("bank", "experts", "data", "train", "eval:loglikelihood", "eval:generate"):
        assert f"\n{stage} " in text
    assert "ESTIMATED" in text


def test_plan_fsdp_shards_and_mistral():
    single = P.plan(compose(["experiment=paper_7b", "base_model=mistral_7b"]))
    sharded = P.plan(compose(["experiment=paper_7b", "base_model=mistral_7b", "trainer=fsdp"]), gpus=4)
    assert sharded["strategy"] == "fsdp" and sharded["gpus"] == 4 and single["shape"]["kv_dim"] == 1024
    one, four = (next(s for s in x["stages"] if s["stage"] == "train")["terms_gb"] for x in (single, sharded))
    assert four["weights"] == pytest.approx(one["weights"] / 4, rel=0.01)
    assert four["activations"] == one["activations"]


def test_plan_cli_prints_and_writes_json(capsys):
    from kexpert.plan import main

    assert main(["experiment=paper_7b", "trainer=ddp", "gpu_mem_gb=40", "num_gpus=2", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["strategy"] == "ddp" and p["gpus"] == 2 and p["gpu_mem_gb"] == 40.0
    assert main(["experiment=rehearse_paper", "gpu_mem_gb=24"]) == 0
    out = capsys.readouterr().out
    assert "llama2_7b_2layer" in out and "2 layers" in out
