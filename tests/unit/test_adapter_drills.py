"""The bad-adapter drills: every broken adapter is one clear error through the one loader, for ``eval.py adapter=``
(see tests/smoke/test_eval_cli.py), ``bank=adapters_dir`` and ``bank=manifest``; nothing is published, no pickle runs.
"""

from __future__ import annotations

import re
import shutil

import pytest

from kexpert.bank.manifest import Bank, BankEntry, write_manifest
from kexpert.bank.spec import BankSpec
from kexpert.bank.testing import make_bad_adapters
from kexpert.models.adapter import load_adapter
from kexpert.models.expert_sources import ExpertSource, adapter_keys, read_experts
from kexpert.models.factory import BaseModelSpec
from kexpert.models.tiny import TINY_CONFIG
from kexpert.utils.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("single_thread")

SPEC = BaseModelSpec(name="tiny", tiny=dict(TINY_CONFIG), dtype="float32", device="cpu")
BAD = ["wrong_shape", "pickle_only", "missing_config", "truncated", "nan_weights", "missing_targets", "other_base"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, make_bad_adapters(SPEC, root)


@pytest.fixture(scope="module")
def model():
    return SPEC.load()[0]


def _error(name):
    return ConfigError if name == "other_base" else DataError


def test_the_good_adapter_loads(corpus, model):
    root, _ = corpus
    adapter = load_adapter(root / "good", model, SPEC.identity)
    assert adapter.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("name", BAD)
def test_each_bad_adapter_is_one_line_naming_the_file(corpus, model, name):
    root, expected = corpus
    with pytest.raises(_error(name)) as err:
        load_adapter(root / name, model, SPEC.identity)
    msg = str(err.value)
    assert expected[name] in msg and str(root / name) in msg and "\n" not in msg
    assert not (root / "PWNED").exists()  # the pickle's payload never ran


def test_base_mismatch_override_warns(corpus, model, caplog):
    root, _ = corpus
    with caplog.at_level("WARNING"):
        load_adapter(root / "other_base", model, SPEC.identity, allow_base_mismatch=True)
    assert "using it anyway (allow_base_mismatch)" in caplog.text


@pytest.mark.parametrize("name", BAD)
def test_bank_import_from_a_dir_refuses_each_bad_adapter_and_publishes_nothing(corpus, tmp_path, name):
    root, expected = corpus
    adapters = tmp_path / "adapters"
    for n in ("good", name):
        shutil.copytree(root / n, adapters / n)
    with pytest.raises(_error(name), match=rf"bank entry '{name}'.*{re.escape(expected[name])}"):
        BankSpec(name="imp", adapters_dir=str(adapters), root=str(tmp_path / "bank")).load(SPEC)
    assert not (tmp_path / "bank").exists()
    assert not (root / "PWNED").exists()


@pytest.mark.parametrize("name", BAD)
def test_bank_manifest_refuses_each_bad_adapter(corpus, tmp_path, name):
    root, expected = corpus
    recorded = {"other_base": "someone/another-model"}  # what an import records from the adapter's config
    entries = [
        BankEntry(name=n, path=root / n, base_model=recorded.get(n, SPEC.identity), target_modules=["q_proj"])
        for n in ("good", name)
    ]
    write_manifest(Bank(name="m", root=tmp_path, entries=entries))
    with pytest.raises(_error(name), match=rf"bank entry '{name}'.*{re.escape(expected[name])}") as err:
        BankSpec(name="m", manifest=str(tmp_path)).load(SPEC)
    assert "\n" not in str(err.value)


def test_bank_import_lists_what_it_skipped(corpus, tmp_path, caplog):
    root, _ = corpus
    adapters = tmp_path / "adapters"
    shutil.copytree(root / "good", adapters / "good")
    (adapters / "notes").mkdir()
    (adapters / ".cache").mkdir()
    (adapters / "README.md").write_text("not a dir")
    with caplog.at_level("WARNING"):
        bank = BankSpec(name="imp", adapters_dir=str(adapters), root=str(tmp_path / "bank")).load(SPEC)
    assert bank.names() == ["good"]
    assert bank.meta["skipped"] == {".cache": "hidden", "notes": "no adapter_config.json"}
    assert "skipped 2 of 3 subdirectories" in caplog.text and "notes (no adapter_config.json)" in caplog.text
    shutil.rmtree(adapters / "good")
    with pytest.raises(DataError, match=r"holds no PEFT adapter dirs .*skipped: \.cache \(hidden\), notes"):
        BankSpec(name="imp", adapters_dir=str(adapters)).load(SPEC)


@pytest.mark.parametrize("name", ["pickle_only", "missing_config", "truncated", "nan_weights"])
def test_moe_experts_go_through_the_same_loader(corpus, name):
    """LoRA-MoE experts (methods) read their keys and tensors through the same checks."""
    root, expected = corpus
    src = ExpertSource(name, str(root / name))
    with pytest.raises(DataError, match=rf"expert '{name}': .*{re.escape(expected[name])}"):
        read_experts([src]) if name == "nan_weights" else adapter_keys(src)
    assert not (root / "PWNED").exists()
