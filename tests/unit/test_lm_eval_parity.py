"""Parity with lm-eval (experiments/eval/lm_eval_parity.py) on the tiny model and the fixture data.

The same model dir, the same items: lm-eval's HFLM and kexpert's scorer must pick the same option on every item
(``acc`` and ``acc_norm``, which is lm-eval's definition) with log-likelihoods within 1e-4, and generate the same
text in generate mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from kexpert.bank.testing import make_random_bank  # noqa: E402
from kexpert.models.factory import tiny_spec  # noqa: E402
from kexpert.models.inject import LoRAMoESpec, inject_lora_moe  # noqa: E402
from kexpert.models.moe_checkpoint import save_moe  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
SCRIPTS = Path(__file__).resolve().parents[2] / "experiments" / "eval"


@pytest.fixture(scope="module")
def parity():
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(SCRIPTS))
    import lm_eval_parity

    yield lm_eval_parity
    mp.undo()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny model saved as a HF dir, as lm-eval's HF loader reads it (both engines load this dir)."""
    out = tmp_path_factory.mktemp("tiny_model")
    model, tok = tiny_spec().load()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run(parity, model_dir, data_dir, out, *args) -> dict:
    argv = ["--base-model", "tiny", "--model-dir", str(model_dir), "--data-dir", str(data_dir), "--out", str(out)]
    parity.main([*argv, *args])
    return json.loads(next(out.glob("*.json")).read_text())


@pytest.mark.parametrize("task", ["arc_e", "piqa", "boolq"])
def test_loglikelihood_parity_per_item(parity, model_dir, fixture_data_dir, tmp_path, task):
    res = run(parity, model_dir, fixture_data_dir, tmp_path, "--task", task)
    s = res["summary"]
    assert s["n"] >= 9 and len(res["items"]) == s["n"]
    assert s["choice_agreement"] == 1.0 and s["acc_norm_choice_agreement"] == 1.0
    assert s["max_abs_loglik_diff"] <= parity.TOL and s["options_within_tol"] == s["options"]
    assert s["kexpert_acc"] == s["lm_eval_acc"] and s["kexpert_acc_norm"] == s["lm_eval_acc_norm"]
    for item in res["items"]:
        assert item["picks"][0] == item["picks"][1]
        assert item["kexpert"] == pytest.approx(item["lm_eval"], abs=parity.TOL)
    yaml_text = (tmp_path / "tasks" / f"kexpert_parity_{task}_loglikelihood.yaml").read_text()
    assert "target_delimiter: ' '" in yaml_text and "doc_to_choice: choices" in yaml_text


def test_generate_parity(parity, model_dir, fixture_data_dir, tmp_path):
    res = run(parity, model_dir, fixture_data_dir, tmp_path, "--task", "arc_e", "--mode", "generate", "--limit", "4")
    s = res["summary"]
    assert s["n"] == 4 and s["generation_agreement"] == 1.0 and s["answer_agreement"] == 1.0
    assert all(i["kexpert"].strip() for i in res["items"])  # something was generated


def test_parity_of_a_trained_expert_through_the_integration(parity, model_dir, fixture_data_dir, tmp_path):
    spec = tiny_spec()
    bank = make_random_bank(spec, tmp_path / "bank", n=2, rank=4)
    model, _ = spec.load()
    moe = LoRAMoESpec(num_experts=2, top_k=1, lora_dropout=0.0)
    injection = inject_lora_moe(model, moe, bank.entries)
    ckpt = save_moe(model, tmp_path / "moe", base_spec=spec, spec=moe, injection=injection)
    out = tmp_path / "out"
    res = run(parity, model_dir, fixture_data_dir, out, "--task", "boolq", "--expert", str(ckpt))
    s = res["summary"]
    assert s["expert"] == str(ckpt) and s["model_dir"] is None
    assert s["choice_agreement"] == 1.0 and s["acc_norm_choice_agreement"] == 1.0
    assert s["max_abs_loglik_diff"] <= parity.TOL


def test_table_renders_each_result(parity, tmp_path):
    summary = {"task": "arc_e", "mode": "loglikelihood", "n": 2, "choice_agreement": 1.0}
    summary |= {"acc_norm_choice_agreement": 1.0, "max_abs_loglik_diff": 3e-6, "options_within_tol": 8, "options": 8}
    summary |= {k: 0.5 for k in ("kexpert_acc", "lm_eval_acc", "kexpert_acc_norm", "lm_eval_acc_norm", "old_acc_norm")}
    (tmp_path / "a.json").write_text(json.dumps({"summary": summary}))
    table = parity.table([tmp_path / "a.json"])
    assert "| arc_e | loglikelihood | 2 | 100.0% (acc_norm 100.0%) | 3.0e-06 | 8/8 | 50.0 / 50.0 |" in table


def test_prompt_format_becomes_jinja(parity):
    assert parity.jinja_of("{prompt}") == "{{prompt}}"
    assert parity.jinja_of("[INST] {prompt} [/INST]") == "[INST] {{prompt}} [/INST]"
    assert parity.jinja_of("{{x}} {prompt}") == "{% raw %}{x} {% endraw %}{{prompt}}"
    assert parity.jinja_of("{prompt} 100%") == "{{prompt}}{% raw %} 100%{% endraw %}"
