"""Bank building on the tiny model: entries do not leak into each other, an interrupted build resumes."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from kexpert.bank import build as build_mod
from kexpert.bank.build import BankBuildSpec, DatasetSpec, entry_seed
from kexpert.data.decontam import EvalIndex
from kexpert.data.records import Example, Instruction
from kexpert.models.factory import BaseModelSpec
from kexpert.models.tiny import TINY_CONFIG
from kexpert.utils.errors import ConfigError, DataError

TINY = dict(TINY_CONFIG)
TRAINER = {
    "_target_": "lightning.pytorch.Trainer",
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
}


def _spec() -> BaseModelSpec:
    return BaseModelSpec(name="tiny", tiny=dict(TINY), dtype="float32", device="cpu")


def _items(tag: str, n: int = 4) -> list[Instruction]:
    return [Instruction(instruction=f"{tag} question {i}: say {tag}", output=f"{tag} answer {i}") for i in range(n)]


class _FakeTask:
    """Only what the builder needs from a Task: eval questions and nothing else."""

    name = "fake"

    def __init__(self, questions: list[str]) -> None:
        self.questions = questions

    def eval_examples(self):
        return [Example(id=str(i), task="fake", question=q, gold="x") for i, q in enumerate(self.questions)]

    kshot_pool_source = "train"


def _bank(tmp_path, names=("alpha", "beta"), **kw) -> BankBuildSpec:
    return BankBuildSpec(
        name="t",
        root=str(tmp_path / "bank"),
        datasets=[{"name": n, "files": [f"{n}.jsonl"]} for n in names],
        lora={"r": 2, "alpha": 4, "dropout": 0.1},
        train={"epochs": 1, "batch_size": 2, "cutoff_len": 48, "lr": 1e-2},
        data_dir=str(tmp_path),
        **kw,
    )


@pytest.fixture()
def patched_items(monkeypatch):
    """Datasets named ``<tag>`` yield :func:`_items` of that tag (no pool files needed)."""

    def fake_load(self, ds, tasks, index):
        return _items(ds.name), {"dataset": ds.name, "rows": 4, "files": []}

    monkeypatch.setattr(BankBuildSpec, "load_items", fake_load)


def _opt():
    return lambda params, lr: torch.optim.AdamW(params, lr=lr)


def _weights(bank, name):
    return load_file(str(bank[name].path / "adapter_model.safetensors"))


def test_entry_alone_equals_entry_inside_build_and_model_is_unwrapped(tmp_path, patched_items):
    spec = _spec()
    model, tok = spec.load()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    both = _bank(tmp_path / "both").build(spec, {}, _opt(), None, TRAINER, model=model, tokenizer=tok)
    after = model.state_dict()
    assert before.keys() == after.keys()  # no lora_ parameters left behind after the build
    assert all(torch.equal(before[k], after[k]) for k in before)
    alone = _bank(tmp_path / "alone", names=("beta",)).build(spec, {}, _opt(), None, TRAINER)
    a, b = _weights(both, "beta"), _weights(alone, "beta")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the two entries of the build really differ (different data and seeds)
    first = next(iter(a))
    assert not torch.equal(_weights(both, "alpha")[first], a[first])
    assert both["beta"].train_loss is not None and both["beta"].meta["train_tokens"] > 0
    assert entry_seed(0, "beta") == both["beta"].meta["seed"]
    assert both["beta"].meta["recipe"]["lr"] == 1e-2


def test_interrupted_build_resumes_without_retraining(tmp_path, patched_items, monkeypatch):
    spec = _spec()
    calls: list[str] = []
    real = build_mod.train_entry

    def crash_on_second(*args, **kwargs):
        name = args[3]
        calls.append(name)
        if calls == ["alpha", "beta"]:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(build_mod, "train_entry", crash_on_second)
    bank_spec = _bank(tmp_path, names=("alpha", "beta", "gamma"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        bank_spec.build(spec, {}, _opt(), None, TRAINER)
    assert bank_spec.existing().names() == ["alpha"]  # only the complete adapter entered the manifest
    assert bank_spec.missing() == ["beta", "gamma"]
    assert not (tmp_path / "bank" / "adapters" / "beta").exists()
    with pytest.raises(ConfigError, match=r"bank t lacks 2 entries .*build it with: python bank.py bank=t"):
        bank_spec.load(spec)
    sha_alpha = bank_spec.existing()["alpha"].sha256
    calls.clear()
    bank = bank_spec.build(spec, {}, _opt(), None, TRAINER)
    assert calls == ["beta", "gamma"]  # alpha was not retrained
    assert bank.names() == ["alpha", "beta", "gamma"] and bank["alpha"].sha256 == sha_alpha
    assert bank_spec.load(spec).names() == ["alpha", "beta", "gamma"]
    calls.clear()
    bank_spec.build(spec, {}, _opt(), None, TRAINER)
    assert calls == []


def test_unbuilt_bank_says_how_to_build(tmp_path):
    with pytest.raises(
        ConfigError, match=r"bank t is not built at .*build it with: python bank.py bank=t base_model=tiny"
    ):
        _bank(tmp_path).load(_spec())


def test_contaminated_items_are_dropped_or_fail(tmp_path):
    question = "Which planet in our solar system is known as the red planet and has two moons?"
    pool = tmp_path / "alpha.jsonl"
    rows = [{"instruction": f"Tell me fact {i}.", "input": "", "output": f"Fact {i}."} for i in range(5)]
    rows.append({"instruction": f"Quiz: {question}", "input": "", "output": "Mars"})
    pool.write_text("\n".join(__import__("json").dumps(r) for r in rows) + "\n")
    index = EvalIndex(13, 6)
    task = _FakeTask([question, "short one"])
    index.add_examples(task.eval_examples())
    spec = _bank(tmp_path, names=("alpha",))
    items, source = spec.load_items(spec.datasets[0], {}, index)
    assert len(items) == 5 and source["eval_overlap_dropped"] == 1
    spec.exclude_eval_overlap = False
    with pytest.raises(DataError, match=r"bank entry 'alpha': 1 training items contain eval questions.*fake/0"):
        spec.load_items(spec.datasets[0], {}, index)


def test_dataset_spec_errors(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of 'files' or 'task'"):
        DatasetSpec(name="x")
    with pytest.raises(ConfigError, match="duplicate dataset name"):
        _bank(tmp_path, names=("a", "a"))
    spec = _bank(tmp_path, names=("a",))
    with pytest.raises(ConfigError, match="task 'nope' is not configured"):
        spec.load_items(DatasetSpec(name="x", task="nope"), {}, None)


def test_task_entry_renders_train_split_through_the_task(compose_cfg):
    from kexpert.pipeline.stages.bank import instantiate_tasks

    tasks = instantiate_tasks(compose_cfg("bank", ["bank=fixture_2", "base_model=tiny"]).tasks, "tasks")
    spec = BankBuildSpec(name="t", root="/nonexistent", datasets=[{"name": "arc_e_train", "task": "arc_e"}])
    others = EvalIndex(13, 6)  # the fixture's ARC splits share one question template; index gsm8k only
    others.add_examples(tasks["gsm8k"].eval_examples())
    items, source = spec.load_items(spec.datasets[0], tasks, others)
    train = tasks["arc_e"].kshot_pool()
    assert source["dataset"] == "task:arc_e:train" and source["rows"] == len(items) == len(train)
    expected = tasks["arc_e"].to_instruction(train[0])
    assert items[0].instruction == expected.instruction and items[0].output == expected.output
    assert items[0].output == train[0].gold_text
    # the fixture's arc_e train split repeats every Dev question: with arc_e's eval split indexed, all are dropped
    full = EvalIndex(13, 6)
    for task in tasks.values():
        full.add_examples(task.eval_examples())
    with pytest.raises(DataError, match="bank entry 'arc_e_train': no training items"):
        spec.load_items(spec.datasets[0], tasks, full)
    with pytest.raises(DataError, match="task boolq has no train split"):
        spec.load_items(DatasetSpec(name="b", task="boolq"), tasks, others)


def test_rank_above_zero_trains_along_and_reads_rank_zeros_entry(tmp_path, patched_items, monkeypatch):
    from kexpert.utils.io import exclusive_lock

    spec = _spec()
    bank_spec = _bank(tmp_path, names=("alpha",))
    published = []
    real = build_mod.train_entry

    def rank_zero_publishes(*args, **kwargs):  # stands in for rank zero, which saves and publishes after the fit
        out = real(*args, **kwargs)
        if os.environ.get("LOCAL_RANK") == "1":
            monkeypatch.delenv("LOCAL_RANK")
            published.append(_bank(tmp_path / "zero", names=("alpha",)).build(spec, {}, _opt(), None, TRAINER))
            bank_spec._commit(published[0]["alpha"], spec)
            monkeypatch.setenv("LOCAL_RANK", "1")
        return out

    monkeypatch.setattr(build_mod, "train_entry", rank_zero_publishes)
    monkeypatch.setenv("LOCAL_RANK", "1")  # what Lightning's launcher sets in the process it starts for rank 1
    (tmp_path / "bank").mkdir(parents=True)
    with exclusive_lock(tmp_path / "bank" / ".build.alpha.lock"):  # rank zero holds it while it trains
        bank = bank_spec.build(spec, {}, _opt(), None, TRAINER)
    assert bank.names() == ["alpha"] and bank["alpha"].sha256 == published[0]["alpha"].sha256
    assert not list((tmp_path / "bank").glob("adapters/*"))  # rank 1 wrote no adapter of its own
