import pytest
from hydra.utils import instantiate

from kexpert.data.prompts import PromptFormat
from kexpert.eval import evaluator as ev_mod
from kexpert.eval.evaluator import evaluate
from kexpert.eval.metrics import norm_length, pick_options, wilson_interval
from kexpert.utils.errors import ConfigError


def task(compose_cfg, name):
    return instantiate(compose_cfg("eval", [f"task={name}"]).task)


def test_loglikelihood_mode_metrics(compose_cfg, tiny_model, tiny_tokenizer):
    t = task(compose_cfg, "arc_e")
    res = evaluate(t, tiny_model, tiny_tokenizer, PromptFormat(), limit=6, progress=False)
    m = res.metrics
    assert m["n"] == 6 and m["mode"] == "loglikelihood"
    assert 0 <= m["acc"] <= 1 and 0 <= m["acc_norm"] <= 1
    lo, hi = m["acc_ci95"]
    assert lo <= m["acc"] <= hi
    assert len(res.predictions) == 6
    assert all(len(p["loglik"]) == 4 for p in res.predictions)
    assert sum(p["correct"] for p in res.predictions) == round(m["acc"] * 6)
    assert sum(p["correct_norm"] for p in res.predictions) == round(m["acc_norm"] * 6)
    assert m["primary_metric"] == "acc" and m["acc_norm_length"] == "chars"
    for ex, p in zip(t.eval_examples(limit=6), res.predictions):  # acc_norm: loglik / characters without the space
        conts = t.continuations(ex)
        best = max(range(len(conts)), key=lambda j: p["loglik"][j] / len(conts[j].lstrip()))
        assert p["pred_norm"] == ex.choice_labels[best]


def test_acc_norm_is_lm_evals_definition():
    # lm-eval (api/task.py, multiple_choice): loglik / len(choice), the choice without the target delimiter " ".
    assert norm_length(" yes") == 3 and norm_length(" no") == 2
    assert norm_length(" café") == 4  # characters, not UTF-8 bytes
    assert norm_length(" ") == 1  # never zero
    # BoolQ-like: the old kexpert rule (bytes with the space: -2.4/4 < -1.7/3) picked " no"; lm-eval's picks " yes"
    assert pick_options([-2.4, -1.7], [" yes", " no"]) == (1, 0)
    assert pick_options([-1.0, -1.0], [" a", " b"]) == (0, 0)  # ties: the first option, as numpy.argmax
    with pytest.raises(ValueError):
        pick_options([-1.0], [" a", " b"])


def test_chat_template_changes_the_prompt(compose_cfg, tiny_model, tiny_tokenizer):
    t = task(compose_cfg, "boolq")
    pf = PromptFormat(chat_template=True)
    rendered = pf.render(t.prompt(t.eval_examples()[0]), tiny_tokenizer)
    assert rendered.startswith("<|im_start|>user\n") and rendered.endswith("<|im_start|>assistant\n")
    res = evaluate(t, tiny_model, tiny_tokenizer, pf, limit=4, progress=False)
    assert res.metrics["n"] == 4


def test_generate_mode_with_known_generations(compose_cfg, tiny_model, tiny_tokenizer, monkeypatch):
    t = task(compose_cfg, "gsm8k")
    exs = t.eval_examples()[:4]
    fake = [f"He adds them.\nThe answer is {e.gold}." for e in exs[:3]] + ["I do not know"]
    monkeypatch.setattr(ev_mod, "generate_greedy", lambda *a, **k: fake)
    res = evaluate(t, tiny_model, tiny_tokenizer, PromptFormat(), examples=exs, progress=False)
    assert res.metrics["acc"] == pytest.approx(0.75)
    assert res.metrics["parsed_fraction"] == pytest.approx(0.75)


def test_mbpp_pass_at_1_runs_code_in_sandbox(compose_cfg, tiny_model, tiny_tokenizer, monkeypatch):
    t = task(compose_cfg, "mbpp")
    exs = t.eval_examples()[:2]
    fake = [f"[BEGIN]\n{exs[0].gold}\n[DONE]", "[BEGIN]\ndef wrong(x):\n    return None\n[DONE]"]
    monkeypatch.setattr(ev_mod, "generate_greedy", lambda *a, **k: fake)
    res = evaluate(t, tiny_model, tiny_tokenizer, PromptFormat(), examples=exs, progress=False, sandbox_timeout_s=5)
    assert res.metrics["pass@1"] == pytest.approx(0.5)
    assert [p["correct"] for p in res.predictions] == [True, False]


def test_generate_mode_on_real_tiny_model_runs(compose_cfg, tiny_model, tiny_tokenizer):
    t = task(compose_cfg, "arc_c")
    res = evaluate(t, tiny_model, tiny_tokenizer, PromptFormat(), limit=3, mode="generate", progress=False)
    assert res.metrics["mode"] == "generate" and res.metrics["n"] == 3


def test_bad_mode(compose_cfg, tiny_model, tiny_tokenizer):
    with pytest.raises(ConfigError):
        evaluate(task(compose_cfg, "gsm8k"), tiny_model, tiny_tokenizer, PromptFormat(), limit=2, mode="loglikelihood")


def test_wilson_interval():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.2 < hi < 0.35


@pytest.mark.parametrize(("gen_bs", "want"), [(5, 5), (None, 2)])
def test_generate_batch_size_reaches_the_decoder(compose_cfg, tiny_model, tiny_tokenizer, monkeypatch, gen_bs, want):
    t = task(compose_cfg, "gsm8k")
    seen = {}

    def fake(model, tok, prompts, **kw):
        seen.update(kw)
        return [""] * len(prompts)

    monkeypatch.setattr(ev_mod, "generate_greedy", fake)
    evaluate(t, tiny_model, tiny_tokenizer, PromptFormat(), limit=2, batch_size=2, generate_batch_size=gen_bs,
             progress=False)  # fmt: skip
    assert seen["batch_size"] == want


@pytest.mark.parametrize("name", ["arc_e", "boolq"])
def test_share_prefix_switch_reaches_the_scorer_and_keeps_every_pick(
    compose_cfg, tiny_model, tiny_tokenizer, name, monkeypatch
):
    import kexpert.eval.evaluator as evaluator_mod

    seen, real = [], evaluator_mod.score_continuations
    monkeypatch.setattr(
        evaluator_mod, "score_continuations", lambda *a, **kw: seen.append(kw["share_prefix"]) or real(*a, **kw)
    )
    t = task(compose_cfg, name)
    shared = evaluate(t, tiny_model, tiny_tokenizer, PromptFormat(), limit=4, progress=False, share_prefix=True)
    whole = evaluate(t, tiny_model, tiny_tokenizer, PromptFormat(), limit=4, progress=False, share_prefix=False)
    assert seen == [True, False]
    assert [p["pred"] for p in shared.predictions] == [p["pred"] for p in whole.predictions]
    for a, b in zip(shared.predictions, whole.predictions):
        assert a["loglik"] == pytest.approx(b["loglik"], abs=1e-4)
