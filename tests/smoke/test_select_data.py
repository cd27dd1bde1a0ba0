"""select_data end to end on the fixture data with the hashing encoder (no model download), and its CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

from kexpert.pipeline.select_data import run
from kexpert.selection.data.encoders import HashingEncoder
from kexpert.utils.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
BASE = [
    "task=arc_c",
    "pool=fixture",
    "encoder=hashing",
    "k_shot=5",
    "data_selection.budget=10",
    "embedding.progress=false",
]


def _planted_pool(tmp_path: Path) -> Path:
    # one row copies an arc_c eval question verbatim (8 words: matched whole), one is clean
    rows = [
        {"instruction": "Which item number 0 is most like a glacier? Explain.", "input": "", "output": "glacier"},
        {"instruction": "Name a tool for cutting wood.", "input": "", "output": "A saw."},
    ]
    path = tmp_path / "planted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_selection_writes_outputs_and_reuses_embeddings(compose_cfg, tmp_path, monkeypatch):
    cfg = compose_cfg("select_data", BASE)
    with open_dict(cfg):
        cfg.pool.sources.append({"path": str(_planted_pool(tmp_path)), "fmt": "alpaca", "source": "planted"})
    res = run(cfg)
    out = Path(cfg.paths.output_dir)
    for name in ("selected.jsonl", "stats.json", "similarity_hist.png", "decontaminated.jsonl", "dedup_removed.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "similarity_hist.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    stats = json.loads((out / "stats.json").read_text())
    assert len(rows) == 5 + stats["kept_after_dedup"] == len(res.items)
    assert [r["meta"]["selection"]["role"] for r in rows[:5]] == ["kshot"] * 5
    assert all(r["source"] == "kshot:arc_c" for r in rows[:5])
    sel_rows = rows[5:]
    assert [r["meta"]["selection"]["rank"] for r in sel_rows] == list(range(len(sel_rows)))
    scores = [r["meta"]["selection"]["score"] for r in sel_rows]
    assert scores == sorted(scores, reverse=True) and all(r["source"] for r in sel_rows)
    assert stats["pool_size"] == 26 and stats["decontamination"]["dropped_ngram"] == 1
    assert stats["pool_after_decontamination"] == 25 and stats["candidates"] == 10
    dropped = [json.loads(line) for line in (out / "decontaminated.jsonl").read_text().splitlines()]
    assert [d["source"] for d in dropped] == ["planted"]
    assert not any("most like a glacier? Explain" in r["instruction"] for r in sel_rows)

    # second run: every embedding comes from the cache, the encoder is never called
    def boom(self, texts):
        raise AssertionError("encoder called on a cached run")

    monkeypatch.setattr(HashingEncoder, "encode", boom)
    res2 = run(cfg)
    assert [it.to_dict() for it in res2.items] == [it.to_dict() for it in res.items]


def test_empty_pool_and_budget_errors(compose_cfg, tmp_path):
    cfg = compose_cfg("select_data", [*BASE, "data_selection.budget=1000"])
    with pytest.raises(
        ConfigError, match=r"data_selection.budget=1000 is larger than the pool \(24 items in pool fixture"
    ):
        run(cfg)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = compose_cfg("select_data", BASE)
    with open_dict(cfg):
        cfg.pool.sources = [{"path": str(empty), "fmt": "alpaca"}]
    with pytest.raises(DataError, match="pool fixture: no items in its sources"):
        run(cfg)


def test_cli_budget_error_is_one_line(tmp_path, fixture_data_dir):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "KEXPERT_CACHE_DIR": str(tmp_path / "cache"),
        "KEXPERT_DATA_DIR": str(fixture_data_dir),
    }
    cmd = [sys.executable, "select_data.py", *BASE, "data_selection.budget=500", f"hydra.run.dir={tmp_path / 'run'}"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "error: data_selection.budget=500 is larger than the pool" in r.stderr
    assert "Traceback" not in r.stderr
