import json

import pytest
from hydra.utils import instantiate

from kexpert.data.formats import tasks as N
from kexpert.data.kshot import sample_kshot
from kexpert.tasks import Task
from kexpert.utils.errors import ConfigError, DataError

TASKS = ["arc_c", "arc_e", "piqa", "boolq", "gsm8k", "mbpp"]


def load_task(compose_cfg, name, **over):
    cfg = compose_cfg("eval", [f"task={name}"] + [f"task.{k}={v}" for k, v in over.items()])
    return instantiate(cfg.task)


@pytest.mark.parametrize("name", TASKS)
def test_every_task_loads_fixture_data(compose_cfg, name):
    task = load_task(compose_cfg, name)
    ev = task.eval_examples()
    pool = task.kshot_pool()
    assert ev and pool
    assert not {e.id for e in ev} & {e.id for e in pool}, "K-shot pool overlaps the eval split"
    ex = ev[0]
    prompt = task.prompt(ex)
    assert isinstance(prompt, str) and prompt
    inst = task.to_instruction(pool[0])
    assert inst.output and inst.instruction
    info = task.info()
    assert info["source"] == "local"


def test_arc_num_choices_filter(compose_cfg):
    task = load_task(compose_cfg, "arc_c")
    ids = [e.id for e in task.eval_examples()]
    assert "FIX_3" not in ids  # the 3-option item is dropped, as OpenCompass does
    assert len(ids) == 9


def test_holdout_pool_is_excluded_and_fixed(compose_cfg):
    task = load_task(compose_cfg, "piqa", kshot_holdout=5)
    pool = task.kshot_pool()
    ev = task.eval_examples()
    assert len(pool) == 5 and len(ev) == 24 - 5
    assert task.kshot_pool_source == "holdout:5"
    again = load_task(compose_cfg, "piqa", kshot_holdout=5)
    assert [e.id for e in again.kshot_pool()] == [e.id for e in pool]


def test_eval_limit_is_deterministic_subset(compose_cfg):
    task = load_task(compose_cfg, "boolq")
    a = task.eval_examples(limit=5, seed=1)
    b = task.eval_examples(limit=5, seed=1)
    c = task.eval_examples(limit=5, seed=2)
    assert [e.id for e in a] == [e.id for e in b]
    assert [e.id for e in a] != [e.id for e in c]
    full = [e.id for e in task.eval_examples()]
    assert [full.index(e.id) for e in a] == sorted(full.index(e.id) for e in a)


def test_kshot_sampler_deterministic_prefix_and_errors(compose_cfg):
    pool = load_task(compose_cfg, "gsm8k").kshot_pool()
    k5 = sample_kshot(pool, 5, data_seed=0)
    assert [e.id for e in k5] == [e.id for e in sample_kshot(list(reversed(pool)), 5, data_seed=0)]
    k8 = sample_kshot(pool, 8, data_seed=0)
    assert [e.id for e in k8[:5]] == [e.id for e in k5]
    assert [e.id for e in sample_kshot(pool, 5, data_seed=1)] != [e.id for e in k5]
    with pytest.raises(ConfigError, match="larger than the K-shot pool"):
        sample_kshot(pool, len(pool) + 1, 0)
    with pytest.raises(ConfigError):
        sample_kshot(pool, 0, 0)


def test_malformed_jsonl_names_file_and_line(compose_cfg, tmp_path):
    d = tmp_path / "data" / "eval" / "gsm8k"
    d.mkdir(parents=True)
    (d / "test.jsonl").write_text('{"question": "q", "answer": "a\\n#### 1"}\n{not json}\n')
    task = load_task(compose_cfg, "gsm8k", data_dir=str(tmp_path / "data"))
    with pytest.raises(DataError, match=r"test.jsonl:2: malformed JSON"):
        task.eval_examples()


def test_invalid_row_names_file_and_line(compose_cfg, tmp_path):
    d = tmp_path / "data" / "eval" / "gsm8k"
    d.mkdir(parents=True)
    (d / "test.jsonl").write_text('{"question": "q", "answer": "a\\n#### 1"}\n{"question": "q2", "answer": "none"}\n')
    task = load_task(compose_cfg, "gsm8k", data_dir=str(tmp_path / "data"))
    with pytest.raises(DataError, match=r"test.jsonl:2: not a valid gsm8k row"):
        task.eval_examples()


def test_missing_data_dir_is_clear(compose_cfg, tmp_path):
    task = load_task(compose_cfg, "arc_e", data_dir=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="does not exist"):
        task.eval_examples()


def test_bad_task_config_is_clear():
    with pytest.raises(ConfigError, match="answer_kind"):
        Task(name="x", answer_kind="essay", eval_split=None, prompt="{question}", target="{text}")
    with pytest.raises(ConfigError, match="loglikelihood needs choices"):
        Task(name="x", answer_kind="number", eval_split=None, prompt="{question}", target="{answer}")


# ---- hub schemas: normalizers on fixture rows in the hub's schema give the same records as local files


def test_hub_and_local_sources_give_identical_records(compose_cfg, fixture_data_dir, monkeypatch):
    """ARC-E/PIQA/GSM8K/MBPP local files share the hub schema: load them through a fake `load_dataset`."""
    import datasets

    files = {
        ("allenai/ai2_arc", "validation"): "eval/arc_easy/validation.jsonl",
        ("ybisk/piqa", "validation"): "eval/piqa/test.jsonl",
        ("openai/gsm8k", "test"): "eval/gsm8k/test.jsonl",
        ("google-research-datasets/mbpp", "test"): "eval/mbpp/test.jsonl",
        ("google-research-datasets/mbpp", "prompt"): "eval/mbpp/prompt.jsonl",
        ("openai/gsm8k", "train"): "eval/gsm8k/train.jsonl",
    }

    def fake_load(path, name=None, split=None):
        rows = (fixture_data_dir / files[(path, split)]).read_text().splitlines()
        return [json.loads(r) for r in rows]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    for name in ["arc_e", "piqa", "gsm8k", "mbpp"]:
        local = load_task(compose_cfg, name, source="local")
        hub = load_task(compose_cfg, name, source="hub")
        loc = [e.to_dict() for e in local._load(local.eval_source, "eval")]
        hb = [e.to_dict() for e in hub._load(hub.eval_source, "eval")]
        assert loc == hb, name


def test_hub_boolq_schema_matches_superglue():
    sg = N.boolq_superglue({"question": "is it", "passage": "P.", "idx": 7, "label": "true"}, "boolq", 7)
    gb = N.boolq_google({"question": "is it", "passage": "P.", "answer": True}, "boolq", 7)
    assert sg == gb
    sg0 = N.boolq_superglue({"question": "is it", "passage": "P.", "idx": 7, "label": 0}, "boolq", 7)
    assert sg0.gold == "B" and sg0.gold_text == "no"


def test_hub_arc_schema_matches_ai2():
    ai2 = {
        "id": "X1",
        "question": {"stem": "Q?", "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "B"}]},
        "answerKey": "B",
    }
    hf = {"id": "X1", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}
    assert N.arc_ai2(ai2, "arc_c", 0) == N.arc_hf(hf, "arc_c", 0)


def test_arc_llm_adapters_parsing():
    row = {
        "instruction": "Please choose the correct answer to the question: Which is hot?\n\nAnswer1: ice "
        "Answer2: fire Answer3: snow Answer4: water\n\nAnswer format: answer1/answer2/answer3/answer4",
        "input": "",
        "output": "the correct answer is answer2",
        "answer": "answer2",
    }
    ex = N.arc_llm_adapters(row, "arc_c", 0)
    assert ex.question == "Which is hot?"
    assert ex.choices == ("ice", "fire", "snow", "water")
    assert ex.gold == "B" and ex.gold_text == "fire"


def test_gsm8k_rationale_strips_calculator():
    ex = N.gsm8k({"question": "q", "answer": "48/2 = <<48/2=24>>24 clips.\n#### 24"}, "gsm8k", 0)
    assert ex.gold == "24" and ex.rationale == "48/2 = 24 clips."


def test_prompts_and_targets(compose_cfg):
    task = load_task(compose_cfg, "arc_c")
    ex = task.eval_examples()[0]
    assert task.prompt(ex) == f"Question: {ex.question}\nAnswer:"
    assert task.target(ex) == f" {ex.gold_text}"
    assert task.continuations(ex)[ex.gold_index] == task.target(ex)
    gen = task.prompt(ex, mode="generate")
    assert "A. " in gen and "D. " in gen
    mb = load_task(compose_cfg, "mbpp")
    p = mb.prompt(mb.eval_examples()[0])
    assert p.count("[BEGIN]") == 3  # three demonstrations
    assert "[BEGIN]" not in mb.to_instruction(mb.kshot_pool()[0]).instruction


# ---- eval.split: evaluate on another split of the same task without touching its K-shot pool


def test_with_eval_split_reads_another_split(compose_cfg):
    task = load_task(compose_cfg, "arc_c")
    test = task.with_eval_split({"local": "eval/arc_challenge/test.jsonl"})
    ids = [e.id for e in test.eval_examples()]
    assert len(ids) == 5 and "FIX_3" not in ids  # 6 test rows, the 3-option one dropped as on Dev
    assert len(task.eval_examples()) == 9  # the original task is unchanged
    assert test.info()["eval_split"] == "eval/arc_challenge/test.jsonl"
    assert [e.id for e in test.kshot_pool()] == [e.id for e in task.kshot_pool()]


def test_with_eval_split_merges_hub_arguments(compose_cfg):
    task = load_task(compose_cfg, "arc_c")
    test = task.with_eval_split({"hub": {"split": "test"}})
    assert test.eval_source.hub == {"path": "allenai/ai2_arc", "name": "ARC-Challenge", "split": "test"}
    assert test.eval_source.local == task.eval_source.local
    assert task.eval_source.hub["split"] == "validation"


def test_with_eval_split_keeps_the_holdout_of_the_original_split(compose_cfg):
    task = load_task(compose_cfg, "piqa", kshot_holdout=5)
    held = {e.id for e in task.kshot_pool()}
    same = task.with_eval_split({"local": "eval/piqa/test.jsonl"})
    assert [e.id for e in same.kshot_pool()] == [e.id for e in task.kshot_pool()]
    assert not held & {e.id for e in same.eval_examples()}
    assert len(same.eval_examples()) == 24 - 5


def test_with_eval_split_rejects_unknown_keys(compose_cfg):
    task = load_task(compose_cfg, "arc_c")
    with pytest.raises(ConfigError, match=r"eval\.split: unknown key\(s\) locl"):
        task.with_eval_split({"locl": "x.jsonl"})
    with pytest.raises(ConfigError, match="eval.split: expected a mapping"):
        task.with_eval_split("eval/arc_challenge/test.jsonl")  # type: ignore[arg-type]


def test_empty_split_and_a_limit_that_selects_nothing_are_errors(compose_cfg, tmp_path, fixture_data_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(fixture_data_dir, data)
    with pytest.raises(ConfigError, match=r"eval.limit=0 selects no items"):
        load_task(compose_cfg, "boolq").eval_examples(limit=0)
    with pytest.raises(ConfigError, match=r"eval.limit=-3 selects no items"):
        load_task(compose_cfg, "boolq").eval_examples(limit=-3)
    (data / "eval" / "gsm8k" / "test.jsonl").write_text("\n")
    task = load_task(compose_cfg, "gsm8k", data_dir=str(data))
    with pytest.raises(DataError, match=r"task gsm8k: split 'eval' \(eval/gsm8k/test.jsonl\) has no items"):
        task.eval_examples()
    with pytest.raises(DataError, match=r"task arc_c: split 'eval' .* has no items with 7 options"):
        arc = load_task(compose_cfg, "arc_c", data_dir=str(data))
        arc.num_choices = 7
        arc.eval_examples()
