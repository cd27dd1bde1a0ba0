"""lm-eval runs a kexpert artifact: the registered ``kexpert`` model scores what kexpert's own scorer scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import kexpert  # noqa: E402
from kexpert.bank.testing import make_random_bank  # noqa: E402
from kexpert.data.prompts import PromptFormat  # noqa: E402
from kexpert.eval.evaluator import evaluate, option_logliks  # noqa: E402
from kexpert.integrations.lm_eval import KexpertLM, artifact_kind, load_artifact  # noqa: E402
from kexpert.models.factory import tiny_spec  # noqa: E402
from kexpert.models.inject import LoRAMoESpec, inject_lora_moe  # noqa: E402
from kexpert.models.moe_checkpoint import export_to_lora, save_moe  # noqa: E402
from kexpert.utils.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
PF = PromptFormat()
CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A bank LoRA, a LoRA-MoE checkpoint of two bank experts (random routers), its plain-LoRA export, the base dir."""
    root = tmp_path_factory.mktemp("lm_eval_artifacts")
    spec = tiny_spec()
    bank = make_random_bank(spec, root / "bank", n=2, rank=4)
    model, tok = spec.load()
    moe = LoRAMoESpec(num_experts=2, top_k=1, lora_dropout=0.0)
    inj = inject_lora_moe(model, moe, list(bank.entries))
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in inj.layers.values():
            layer.router.gate.weight.normal_()
    model.eval()
    ckpt = save_moe(model, root / "moe", base_spec=spec, spec=moe, injection=inj)
    export_to_lora(model, tok, ["Question: why is the sky blue?\nAnswer: light"] * 4, root / "export", rank=4,
                   progress=False)  # fmt: skip
    base, _ = spec.load()
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return {"lora": bank.entries[0].path, "moe": ckpt, "export": root / "export", "base_dir": root / "base"}


@pytest.fixture(scope="module")
def items(tmp_path_factory, fixture_data_dir):
    """ARC-E fixture items and the (context, continuation) pairs kexpert scores for them."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=["task=arc_e", f"paths.data_dir={fixture_data_dir}"])
    task = instantiate(cfg.task)
    examples = task.eval_examples()[:6]
    tok = tiny_spec().load_tokenizer()
    pairs = [(PF.render(task.prompt(ex), tok), c) for ex in examples for c in task.continuations(ex)]
    return task, examples, pairs


def lm_eval_logliks(lm, pairs) -> list[float]:
    reqs = [Instance("loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    return [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]


def kexpert_logliks(model, tok, task, examples) -> list[float]:
    return [ll for opts in option_logliks(task, model, tok, PF, examples) for _, ll in opts]


def test_registered_as_kexpert():
    assert get_model("kexpert") is KexpertLM


def test_lora_moe_checkpoint_scores_as_kexperts_scorer(artifacts, items):
    task, examples, pairs = items
    lm = KexpertLM(expert=str(artifacts["moe"]), batch_size=4, device="cpu")
    assert lm.expert_kind == "lora_moe"
    got = lm_eval_logliks(lm, pairs)
    model, tok = kexpert.load_expert(artifacts["moe"])
    want = kexpert_logliks(model, tok, task, examples)
    assert got == pytest.approx(want, abs=1e-4)
    base = kexpert_logliks(*tiny_spec().load(), task, examples)
    assert max(abs(a - b) for a, b in zip(want, base)) > 1e-3  # the experts are loaded, not the bare base


def test_bank_lora_needs_its_base_named_and_then_matches_peft(artifacts, items):
    task, examples, pairs = items
    assert artifact_kind(artifacts["lora"]) == "lora"
    model, tok, kind = load_artifact(artifacts["lora"])  # the bank entry records tiny's identity: found in conf
    assert kind == "lora"
    lm = KexpertLM(expert=str(artifacts["lora"]), base="tiny", batch_size=4)
    assert lm_eval_logliks(lm, pairs) == pytest.approx(kexpert_logliks(model, tok, task, examples), abs=1e-4)


def test_exported_lora_through_stock_hf_model_equals_the_integration(artifacts, items):
    _, _, pairs = items
    stock = HFLM(pretrained=str(artifacts["base_dir"]), peft=str(artifacts["export"]), device="cpu",
                 dtype="float32", batch_size=4)  # fmt: skip
    ours = KexpertLM(expert=str(artifacts["export"]), base=str(artifacts["base_dir"]), batch_size=4)
    assert lm_eval_logliks(stock, pairs) == pytest.approx(lm_eval_logliks(ours, pairs), abs=1e-5)


def test_simple_evaluate_by_name_gives_kexperts_acc_and_acc_norm(artifacts, items, tmp_path):
    task, examples, _ = items
    rows = [
        {"prompt": task.prompt(ex), "choices": [c.lstrip() for c in task.continuations(ex)], "gold": ex.gold_index}
        for ex in examples
    ]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "task": "kexpert_items",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(tmp_path / "items.jsonl")}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{prompt}}",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    (tmp_path / "items.yaml").write_text(yaml.safe_dump(cfg))
    out = simple_evaluate(
        model="kexpert",
        model_args={"expert": str(artifacts["moe"]), "batch_size": 4},
        tasks=["kexpert_items"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = sorted(out["samples"]["kexpert_items"], key=lambda s: s["doc_id"])
    model, tok = kexpert.load_expert(artifacts["moe"])
    preds = evaluate(task, model, tok, PF, examples=examples, progress=False).predictions
    assert [s["acc"] for s in samples] == [float(p["correct"]) for p in preds]
    assert [s["acc_norm"] for s in samples] == [float(p["correct_norm"]) for p in preds]


def test_unknown_artifact_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="expected a train.py run dir"):
        artifact_kind(tmp_path)
    with pytest.raises(ConfigError, match="expected a train.py run dir"):
        artifact_kind("no_such_base_model")
    assert artifact_kind("tiny") == "base"
