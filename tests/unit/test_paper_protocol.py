"""scale=paper's protocol: the options response format, the paper's pools and the rationale generator."""

from __future__ import annotations

import pytest

from kexpert.api import compose
from kexpert.data.formats import pools as P
from kexpert.data.pools import load_pool, options_format
from kexpert.data.records import Example
from kexpert.tasks.task import Task
from kexpert.utils.errors import ConfigError
from kexpert.utils.instantiate import instantiate

EX = Example(
    id="q1",
    task="arc_c",
    question="Which is wet?",
    choices=("dry palms", "rain"),
    choice_labels=("A", "B"),
    gold="B",
    gold_index=1,
)


def _task(**kw) -> Task:
    return Task(
        name="arc_c",
        answer_kind="multiple_choice",
        eval_split={"local": "x.jsonl"},
        prompt="Question: {question}\nAnswer:",
        gen_prompt="Question: {question}\n{options}Answer:",
        target=" {text}",
        rationale_target=" {text}\n\n{rationale}",
        **kw,
    )


def test_text_format_is_unchanged_and_keys_stay_the_bare_templates():
    t = _task()
    item = t.to_instruction(EX)
    assert (item.instruction, item.output) == ("Question: Which is wet?\nAnswer:", "rain")
    assert t.response_prompt(EX) == "Question: Which is wet?\nAnswer:" and t.target(EX) == " rain"
    assert t.response_key() == " {text}" and t.response_key(rationale=True) == " {text}\n\n{rationale}"


def test_options_format_lists_the_options_and_answers_with_the_letter():
    t = _task(response_format="options")
    item = t.to_instruction(EX)
    assert item.instruction == "Question: Which is wet?\nA. dry palms\nB. rain\nAnswer:"
    assert item.output == "B. rain"
    assert t.rationale_response(EX, "Rain is water.") == " B. rain\n\nRain is water."
    assert t.response_key() != _task().response_key()
    assert t.response_key(rationale=True) != t.response_key()
    # log-likelihood scoring keeps scoring the option texts
    assert t.continuations(EX) == [" dry palms", " rain"]
    number = Example(id="n", task="gsm8k", question="1+1?", gold="2", rationale="1+1=2")
    g = Task(
        name="gsm8k",
        answer_kind="number",
        eval_split={"local": "x"},
        prompt="Q: {question}\nA:",
        target=" {rationale}",
        eval_mode="generate",
        response_format="options",
    )
    assert g.target(number) == " 1+1=2"  # no choices: the format does not apply
    with pytest.raises(ConfigError, match="response_format"):
        _task(response_format="letters")


def test_pool_items_in_options_format():
    (item,) = P.commonsense_qa(
        {
            "answerKey": "B",
            "question": {"stem": "Where?", "choices": [{"label": "A", "text": "here"}, {"label": "B", "text": "B"}]},
        }
    )
    opt = options_format(item)
    assert (opt.instruction, opt.output) == ("Question: Where?\nA. here\nB. B\nAnswer:", "B. B")
    (yes_no,) = P.csqa2({"question": "Is it?", "answer": "yes"})
    assert options_format(yes_no) == yes_no


def test_paper_pool_hub_normalizers():
    (csqa,) = P.commonsense_qa_hf(
        {"id": "x", "question": "Q?", "choices": {"label": ["A", "B", "C"], "text": ["a", "b", "c"]}, "answerKey": "C"}
    )
    assert csqa.output == "c" and csqa.meta["gold_index"] == 2
    (siqa,) = P.social_i_qa(
        {"context": "Kai ate.", "question": "Why?", "answerA": "hungry", "answerB": "bored", "answerC": "sad"}
        | {"label": "1"}
    )
    assert options_format(siqa).instruction == "Question: Kai ate. Why?\nA. hungry\nB. bored\nC. sad\nAnswer:"
    assert options_format(siqa).output == "A. hungry"


def test_load_pool_mc_format(fixture_data_dir):
    spec = {"sources": [{"path": "pool/commonsense_qa.jsonl"}]}
    text = load_pool(spec, fixture_data_dir)
    options = load_pool({**spec, "mc_format": "options"}, fixture_data_dir)
    assert len(text) == len(options) and all("\nA. " in it.instruction for it in options)
    assert all(it.output[:3] in {"A. ", "B. ", "C. ", "D. ", "E. "} for it in options)
    with pytest.raises(ConfigError, match="mc_format"):
        load_pool({**spec, "mc_format": "letters"}, fixture_data_dir)


@pytest.mark.parametrize(
    ("task", "pool"), [("arc_c", "paper_commonsense"), ("piqa", "paper_commonsense"), ("gsm8k", "wizardlm_hub")]
)
def test_scale_paper_composes_the_papers_protocol(task, pool):
    cfg = compose(["experiment=paper_7b", f"task={task}"])
    assert cfg.pool.name == pool and cfg.pool.mc_format == "options"
    assert cfg.task.eval_mode == "generate" and cfg.task.response_format == "options"
    assert cfg.expert_selection.signals.rationale.generator.hf_id == "Qwen/Qwen2.5-14B-Instruct"
    t = instantiate(cfg.task, key="task")
    assert t.response_format == "options" and t.eval_mode == "generate"


def test_scale_cpu_keeps_its_keys():
    cfg = compose([])
    assert "response_format" not in cfg.task and "mc_format" not in cfg.pool
    assert cfg.expert_selection.signals.rationale.generator is None
    paper_base = compose(["experiment=paper_7b", "rationale_generator=base"])
    assert paper_base.expert_selection.signals.rationale.generator == {"name": "base"}
