"""Bank manifest: round trip, lookups and malformed manifests."""

from __future__ import annotations

import json

import pytest

from kexpert.bank.manifest import Bank, BankEntry, read_manifest, write_manifest
from kexpert.utils.errors import ConfigError, DataError


def _entry(name: str, root, **kw) -> BankEntry:
    return BankEntry(
        name=name,
        path=root / "adapters" / name,
        base_model="base",
        rank=4,
        alpha=8.0,
        target_modules=["q_proj", "v_proj"],
        sha256="ab" * 32,
        **kw,
    )


def test_round_trip_keeps_every_field_and_relative_paths(tmp_path):
    e1 = _entry(
        "a",
        tmp_path,
        source={"dataset": "x", "rows": 3, "template": "t", "files": ["f"]},
        train_loss=1.5,
        meta={"expert_lora_for": "arc_e", "train_tokens": 10},
    )
    e2 = BankEntry(
        name="b",
        path=tmp_path / "elsewhere",
        base_model="base",
        rank=None,
        alpha=None,
        target_modules=["q_proj"],
        sha256="cd" * 32,
        meta={"ranks": {"m.q_proj": 2}},
    )
    bank = Bank(name="bk", root=tmp_path, entries=[e1, e2], meta={"k": 1})
    path = write_manifest(bank)
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == 1 and raw["entries"][0]["path"] == "adapters/a"
    back = read_manifest(tmp_path)
    assert back.names() == ["a", "b"] and len(back) == 2 and back.meta == {"k": 1}
    assert back["a"].path == tmp_path / "adapters" / "a"
    assert back["a"].source["rows"] == 3 and back["a"].train_loss == 1.5
    assert back["b"].rank is None and back["b"].meta["ranks"] == {"m.q_proj": 2}
    assert back.expert_lora_for("arc_e").name == "a"
    assert back.expert_lora_for("gsm8k") is None


def test_moved_bank_dir_still_resolves(tmp_path):
    bank = Bank(name="bk", root=tmp_path / "one", entries=[_entry("a", tmp_path / "one")])
    write_manifest(bank)
    (tmp_path / "one").rename(tmp_path / "two")
    assert read_manifest(tmp_path / "two" / "manifest.json")["a"].path == tmp_path / "two" / "adapters" / "a"


def test_unknown_entry_names_bank_and_entry(tmp_path):
    bank = Bank(name="bk", root=tmp_path, entries=[_entry("a", tmp_path)])
    with pytest.raises(ConfigError, match=r"bank bk .*no entry 'zzz'.*entries: a"):
        bank["zzz"]


def test_duplicate_names_rejected(tmp_path):
    with pytest.raises(ConfigError, match="duplicate entry name 'a'"):
        Bank(name="bk", root=tmp_path, entries=[_entry("a", tmp_path), _entry("a", tmp_path)])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m["entries"][0].pop("sha256"), r"entries\[0\] \(a\): missing key\(s\) sha256"),
        (lambda m: m["entries"][0].update(colour="red"), r"entries\[0\] \(a\): unknown key\(s\) colour"),
        (lambda m: m["entries"][0].update(target_modules="q_proj"), "target_modules must be a list"),
        (lambda m: m["entries"][0].update(rank="four"), "rank must be an integer"),
        (lambda m: m.update(schema_version=9), "schema_version 9 is not supported"),
        (lambda m: m.update(entries={}), "'entries' must be a list"),
    ],
)
def test_malformed_manifest_errors(tmp_path, mutate, message):
    write_manifest(Bank(name="bk", root=tmp_path, entries=[_entry("a", tmp_path)]))
    raw = json.loads((tmp_path / "manifest.json").read_text())
    mutate(raw)
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match=message):
        read_manifest(tmp_path)


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(DataError, match="bank manifest not found"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{\n  oops")
    with pytest.raises(DataError, match=r"manifest.json:2: invalid JSON"):
        read_manifest(tmp_path)
