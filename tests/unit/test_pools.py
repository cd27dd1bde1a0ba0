"""Pool normalizers: every schema of shared/data/pool into Instruction, errors naming file and line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from kexpert.data.formats import format_names
from kexpert.data.pools import default_source, detect_format, load_pool, load_pool_file
from kexpert.utils.errors import ConfigError, DataError


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


# One real-shaped row per schema (abridged from shared/data/pool) and the expected (instruction, input, output).
CASES = {
    "commonsense_qa.jsonl": (
        {
            "answerKey": "B",
            "id": "abc",
            "question": {
                "question_concept": "p",
                "stem": "Where might he go?",
                "choices": [{"label": "A", "text": "race track"}, {"label": "B", "text": "populated areas"}],
            },
        },
        ("Question: Where might he go?\nAnswer:", "", "populated areas"),
    ),
    "csqa2.jsonl": (
        {"id": "x1", "question": "a pupil can be part of an eye", "answer": "yes", "confidence": 0.9},
        ("Question: a pupil can be part of an eye\nAnswer:", "", "yes"),
    ),
    "qasc_mcq.jsonl": (
        {
            "context": "What is formed by clouds?",
            "choice0": "pearls",
            "choice1": "rain",
            "choice2": "shells",
            "label": 1,
        },
        ("Question: What is formed by clouds?\nAnswer:", "", "rain"),
    ),
    "openbookqa.jsonl": (
        {
            "instruction": "Please choose the correct answer to the question: The sun is responsible for\n\n"
            "Answer1: puppies Answer2: plants sprouting\n\nAnswer format: answer1/answer2",
            "input": "",
            "output": "the correct answer is answer2",
            "answer": "answer2",
        },
        ("Question: The sun is responsible for\nAnswer:", "", "plants sprouting"),
    ),
    "math_cot_llm_adapters.jsonl": (
        {
            "instruction": "Julia played with 16 kids.",
            "input": "",
            "output": "\nA: 16 - 12 = 4 kids. The answer is 4.",
            "answer": "4.0",
        },
        ("Question: Julia played with 16 kids.\nAnswer:", "", "16 - 12 = 4 kids.\nThe answer is 4."),
    ),
    "mawps.jsonl": (
        {"id": 7, "original_text": "A waiter had 22 customers .", "equation": "X=((22.0-14.0)/4.0)", "ans": 2.0},
        ("Question: A waiter had 22 customers .\nAnswer:", "", "((22-14)/4) = 2\nThe answer is 2."),
    ),
    "svamp.jsonl": (
        {
            "ID": "chal-1",
            "Body": "Each pack costs 76 dollars",
            "Question": "How much?",
            "Equation": "( 76.0 - 25.0 )",
            "Answer": 51.0,
            "Type": "Subtraction",
        },
        ("Question: Each pack costs 76 dollars. How much?\nAnswer:", "", "(76 - 25) = 51\nThe answer is 51."),
    ),
    "asdiv.jsonl": (
        {
            "ID": "nluds-0001",
            "Body": "Seven red apples.",
            "Question": "How many apples?",
            "Formula": "7+2=9",
            "Answer": "9 (apples)",
        },
        ("Question: Seven red apples. How many apples?\nAnswer:", "", "7+2=9\nThe answer is 9."),
    ),
    "aqua_rat_dev.jsonl": (
        {"question": "Speed?", "options": ["A)32400", "B)6000"], "rationale": "60 * 540 = 32400", "correct": "A"},
        ("Question: Speed?\nAnswer Choices: (A) 32400 (B) 6000\nAnswer:", "", "60 * 540 = 32400\nThe answer is A."),
    ),
    "code_alpaca_2k.jsonl": (
        {"instruction": "Distinct values?", "input": "[3, 3, 5]", "output": "3 and 5."},
        ("Distinct values?", "[3, 3, 5]", "3 and 5."),
    ),
    "gpteacher_codegen.jsonl": (
        {"instruction": "Write C++.", "input": "width: 5", "response": "int main() {}"},
        ("Write C++.", "width: 5", "int main() {}"),
    ),
    "self_instruct_seed_tasks.jsonl": (
        {
            "id": "seed_task_1",
            "name": "antonym",
            "instruction": "Relation?",
            "instances": [{"input": "Night : Day", "output": "Opposites."}],
            "is_classification": False,
        },
        ("Relation?", "Night : Day", "Opposites."),
    ),
    "t0_p3/social_i_qa.jsonl.gz": (
        {"prompt": 'Is "like attending" a valid answer?\n', "completion": "Yes<|endoftext|>", "template": "t"},
        ('Is "like attending" a valid answer?', "", "Yes"),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_schema_normalizes(tmp_path, name):
    row, expected = CASES[name]
    path = _write(tmp_path / "pool" / name, [row, row])
    items = load_pool_file(path)
    assert len(items) == 2
    it = items[0]
    assert (it.instruction, it.input, it.output) == expected
    assert it.source == default_source(path)
    assert it.meta["id"]
    assert detect_format(path) in format_names("pool")


def test_mc_pools_match_task_answer_style(tmp_path):
    # Same prompt and target shape as conf/task/arc_c.yaml: "Question: {question}\nAnswer:" -> " {text}".strip()
    row, _ = CASES["commonsense_qa.jsonl"]
    it = load_pool_file(_write(tmp_path / "commonsense_qa.jsonl", [row]))[0]
    assert it.instruction.startswith("Question: ") and it.instruction.endswith("\nAnswer:")
    assert it.output == it.meta["choices"][it.meta["gold_index"]]


def test_t0_source_name_and_eos_stripped(tmp_path):
    path = _write(tmp_path / "t0_p3" / "quartz.jsonl", [{"prompt": "p", "completion": "scarce<|endoftext|>"}])
    it = load_pool_file(path)[0]
    assert it.source == "t0_p3/quartz" and it.output == "scarce" and "<|endoftext|>" not in it.output


def test_empty_completions_are_skipped(tmp_path):
    path = _write(tmp_path / "t0_p3" / "trec.jsonl", [{"prompt": "p", "completion": "<|endoftext|>"}] * 3)
    assert load_pool_file(path) == []


def test_unknown_name_sniffs_keys_and_fmt_override(tmp_path):
    path = _write(tmp_path / "mystery.jsonl", [{"prompt": "a", "completion": "b"}])
    assert load_pool_file(path)[0].output == "b"
    path2 = _write(tmp_path / "other.jsonl", [{"instruction": "i", "response": "r"}])
    assert load_pool_file(path2, fmt="gpteacher", source="gt")[0].source == "gt"


def test_limit(tmp_path):
    row, _ = CASES["csqa2.jsonl"]
    assert len(load_pool_file(_write(tmp_path / "csqa2.jsonl", [row] * 10), limit=3)) == 3


def test_bad_row_names_file_and_line(tmp_path):
    good, _ = CASES["commonsense_qa.jsonl"]
    bad = dict(good, answerKey="Z")
    path = _write(tmp_path / "commonsense_qa.jsonl", [good, bad])
    with pytest.raises(DataError, match=r"commonsense_qa\.jsonl:2: .*answerKey 'Z'"):
        load_pool_file(path)


def test_missing_field_and_unknown_keys(tmp_path):
    path = _write(tmp_path / "svamp.jsonl", [{"Body": "b", "Question": "q"}])
    with pytest.raises(DataError, match=r"svamp\.jsonl:1: not a valid svamp row"):
        load_pool_file(path)
    path2 = _write(tmp_path / "weird.jsonl", [{"foo": 1}])
    with pytest.raises(DataError, match=r"weird\.jsonl:1: cannot tell the pool format"):
        load_pool_file(path2)
    with pytest.raises(ConfigError, match="unknown pool format 'nope'"):
        load_pool_file(path2, fmt="nope")
    with pytest.raises(DataError, match="pool file not found"):
        load_pool_file(tmp_path / "absent.jsonl")


def test_load_pool_spec_dirs_and_dedup(tmp_path):
    row, _ = CASES["csqa2.jsonl"]
    _write(tmp_path / "pool" / "csqa2.jsonl", [row, row, dict(row, question="other")])
    _write(tmp_path / "pool" / "t0_p3" / "a.jsonl", [{"prompt": "p1", "completion": "c<|endoftext|>"}])
    _write(tmp_path / "pool" / "t0_p3" / "b.jsonl.gz", [{"prompt": "p2", "completion": "d<|endoftext|>"}])
    spec = {"sources": ["pool/csqa2.jsonl", {"path": "pool/t0_p3", "limit": 5}]}
    items = load_pool(spec, tmp_path)
    assert [it.source for it in items] == ["csqa2", "csqa2", "t0_p3/a", "t0_p3/b"]  # exact duplicate dropped
    assert len(load_pool({"sources": ["pool/csqa2.jsonl"], "dedup_exact": False}, tmp_path)) == 3
    with pytest.raises(ConfigError, match=r"sources\[0\].*exactly one of 'path' or 'hub'"):
        load_pool({"sources": [{"fmt": "alpaca"}]}, tmp_path)
    with pytest.raises(DataError, match="no .jsonl"):
        (tmp_path / "empty").mkdir()
        load_pool(["empty"], tmp_path)


def test_fixture_pool_dir(fixture_data_dir):
    items = load_pool({"sources": ["pool"]}, fixture_data_dir)
    assert {it.source for it in items} >= {"alpaca_en_demo_1k", "commonsense_qa"}


@pytest.mark.realdata
def test_every_real_pool_file_loads(real_data_dir):
    pool = real_data_dir / "pool"
    files = sorted([*pool.glob("*.jsonl"), *(pool / "t0_p3").glob("*.jsonl*")])
    assert len(files) >= 50
    total = 0
    for f in files:
        assert detect_format(f) is not None, f
        items = load_pool_file(f)
        total += len(items)
        for it in items[:50]:
            assert it.instruction.strip() and it.output.strip(), (f, it)
            assert "<|endoftext|>" not in it.output
    assert total > 100_000


def test_hub_source_goes_through_the_same_normalizers(monkeypatch):
    import datasets

    calls = {}

    def fake_load_dataset(**kw):
        calls.update(kw)
        return [{"instruction": "Add 2 and 3.", "input": "", "output": "5"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = load_pool({"sources": [{"hub": {"path": "org/some_pool"}, "fmt": "alpaca"}]})
    assert calls == {"path": "org/some_pool", "split": "train"}
    assert items[0].source == "some_pool" and items[0].output == "5" and items[0].meta["id"] == "some_pool:1"

    def offline(**kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"hub:org/some_pool\[train\]: could not load the dataset"):
        load_pool({"sources": [{"hub": {"path": "org/some_pool"}, "fmt": "alpaca"}]})
