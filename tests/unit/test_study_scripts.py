"""The study's analysis scripts in experiments/study_smollm2: paired, binary_auc, archive_runs, routing_init."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[2] / "experiments" / "study_smollm2"
SCRIPT = STUDY / "paired.py"


def _run_dir(root: Path, name: str, method: str, correct: list[bool], **extra) -> Path:
    d = root / name
    d.mkdir(parents=True)
    metrics = {"method": method, "label": method, "data_seed": 0, "score": sum(correct) / len(correct), **extra}
    (d / "metrics.json").write_text(json.dumps(metrics))
    rows = [{"id": f"q{i}", "correct": c} for i, c in enumerate(correct)]
    (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _paired(*args: str) -> str:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_sign_test_p_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(STUDY))
    from paired import sign_test_p

    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(3, 3) == 1.0
    assert sign_test_p(0, 6) == pytest.approx(2 / 64)
    assert sign_test_p(6, 0) == sign_test_p(0, 6)
    assert sign_test_p(1, 9) == pytest.approx(2 * 11 / 1024)


def test_nested_sweeps_are_found_and_paired_item_by_item(tmp_path: Path) -> None:
    base = [True, False, False, True, False, True]
    other = [True, True, True, False, False, True]  # 2 wins (q1, q2), 1 loss (q3)
    _run_dir(tmp_path, "0_base", "base", base)
    _run_dir(tmp_path / "more", "0_rocket", "rocket", other)
    text = _paired(str(tmp_path), str(tmp_path / "more"))  # the nested dir given twice is counted once
    rows = [line for line in text.splitlines() if line.startswith("| rocket")]
    assert rows == ["| rocket | 0 | 66.7 | 50.0 | 2 | 1 | 1.000 |"]


def test_non_default_moe_is_named(tmp_path: Path) -> None:
    _run_dir(tmp_path, "0_base", "base", [True, False])
    info = {"method_info": {"moe": {"expert_init": "bank"}}, "moe": "lora_moe_router_only", "top_k": 2}
    _run_dir(tmp_path, "1_rocket", "rocket", [True, True], **info)
    assert "moe=lora_moe_router_only" in _paired(str(tmp_path))


def test_bad_predictions_name_the_file_and_line(tmp_path: Path) -> None:
    d = _run_dir(tmp_path, "0_base", "base", [True])
    (d / "predictions.jsonl").write_text('{"id": "q0", "correct": true}\nnot json\n')
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "predictions.jsonl:2" in out.stderr


def test_roc_auc_matches_pairwise_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(STUDY))
    from binary_auc import roc_auc

    pos, neg = [0.3, 0.9, 0.5, 0.5], [0.1, 0.5, 0.7]
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg]
    assert roc_auc(pos, neg) == pytest.approx(sum(pairs) / len(pairs))
    assert roc_auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert roc_auc([0.0], [1.0]) == 0.0
    with pytest.raises(ValueError):
        roc_auc([], [1.0])


def test_binary_auc_table_separates_bias_from_discrimination(tmp_path: Path) -> None:
    d = tmp_path / "sweep" / "0_run"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"label": "always-no", "data_seed": 1, "score": 0.5}))
    # scores rank the two "A" items above the two "B" items, but every prediction is "B"
    rows = [("A", [-2.0, -1.0]), ("A", [-2.1, -1.0]), ("B", [-3.0, -1.0]), ("B", [-3.5, -1.0])]
    lines = [json.dumps({"id": i, "gold": g, "pred": "B", "loglik": ll}) for i, (g, ll) in enumerate(rows)]
    (d / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    out = subprocess.run([sys.executable, str(STUDY / "binary_auc.py"), str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| always-no | 1 | 50.0 | 0% | 50% | 1.000 |" in out.stdout


def test_an_override_that_differs_between_runs_is_named(tmp_path: Path) -> None:
    _run_dir(tmp_path, "0_base", "base", [True, False])
    for name, mode in (("1_rocket", None), ("2_rocket", "loglikelihood")):
        d = _run_dir(tmp_path, name, "rocket", [True, True])
        (d / ".hydra").mkdir()
        lines = ["- method=rocket", "- data_seed=0"] + (
            [f"- expert_selection.signals.accuracy_mode={mode}"] if mode else []
        )
        (d / ".hydra" / "overrides.yaml").write_text("\n".join(lines) + "\n")
    rows = [line for line in _paired(str(tmp_path)).splitlines() if line.startswith("| rocket")]
    assert len(rows) == 2
    assert sum("expert_selection.signals.accuracy_mode=loglikelihood" in r for r in rows) == 1
    assert not any("data_seed=" in r for r in rows)


def test_baseline_sweep_pairs_the_same_method_draw_by_draw(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for seed, bits in ((0, [True, False, False, False]), (1, [True, True, False, False])):
        _run_dir(old, f"{seed}_rocket", "rocket", bits, data_seed=seed)
    _run_dir(old / "router_only", "0_rocket", "rocket", [False] * 4, data_seed=0)  # a second draw-0 candidate
    _run_dir(new, "0_rocket", "rocket", [True, True, True, False], data_seed=0)
    _run_dir(new, "1_rocket", "rocket", [True, True, True, True], data_seed=1)
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(new), "--baseline", "rocket", "--baseline-dir", str(old)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| rocket")]
    # the new sweep's rocket runs are listed (not taken as baselines), each against its own draw's old run
    assert rows == ["| rocket | 0 | 75.0 | 25.0 | 2 | 0 | 0.500 |", "| rocket | 1 | 100.0 | 50.0 | 2 | 0 | 0.500 |"]
    assert "several baseline runs" in out.stderr and "router_only" in out.stderr


def _archive(src: Path, dst: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(STUDY / "archive_runs.py"), str(src), str(dst)], capture_output=True, text=True
    )


def test_archive_keeps_what_paired_reads_and_drops_the_text(tmp_path: Path) -> None:
    src = tmp_path / "sweep"
    base = _run_dir(src, "0_base", "base", [True, False, False, True])
    other = _run_dir(src / "nested", "1_rocket", "rocket", [True, True, True, False])
    (base / ".hydra").mkdir()
    (base / ".hydra" / "overrides.yaml").write_text("- method=base\n")
    rows = [{"id": f"q{i}", "correct": c, "pred": "A", "generation": "long text"} for i, c in enumerate([1, 1, 1, 0])]
    (other / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (other / "routing").mkdir()
    (other / "routing" / "routing.json").write_text('{"layers": [], "experts": [], "fractions": []}')
    (other / "routing" / "heatmap.png").write_bytes(b"png")
    dst = tmp_path / "archive"
    out = _archive(src, dst)
    assert out.returncode == 0, out.stderr
    assert "2 runs archived" in out.stdout
    kept = [json.loads(x) for x in (dst / "nested" / "1_rocket" / "predictions.jsonl").read_text().splitlines()]
    assert kept[0] == {"id": "q0", "correct": 1, "pred": "A"}
    assert (dst / "0_base" / ".hydra" / "overrides.yaml").read_text() == "- method=base\n"
    # the MoE run's routing.json is kept (the report's routing table reads it), its images are not
    assert json.loads((dst / "nested" / "1_rocket" / "routing" / "routing.json").read_text())["layers"] == []
    assert not (dst / "nested" / "1_rocket" / "routing" / "heatmap.png").exists()
    assert not (dst / "0_base" / "routing").exists()
    assert not [p for p in dst.rglob(".*") if p.is_file()]  # no temp file of atomic_write left behind
    assert _paired(str(dst)).replace(str(dst), str(src)) == _paired(str(src))  # the copy pairs like the original


def test_archive_names_a_bad_predictions_line(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "sweep", "0_base", "base", [True])
    (run / "predictions.jsonl").write_text('{"id": "q0", "correct": true}\n{"correct": false}\n')
    out = _archive(tmp_path / "sweep", tmp_path / "dst")
    assert out.returncode != 0
    assert "predictions.jsonl:2: expected a JSON object with 'id' and 'correct'" in out.stderr
    assert not (tmp_path / "dst" / "0_base" / "metrics.json").exists()


def test_archive_names_a_broken_routing_file(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "sweep", "0_rocket", "rocket", [True])
    (run / "routing").mkdir()
    (run / "routing" / "routing.json").write_text('{"layers": [')
    out = _archive(tmp_path / "sweep", tmp_path / "dst")
    assert out.returncode != 0
    assert "routing.json: not valid JSON" in out.stderr
    assert not (tmp_path / "dst" / "0_rocket" / "metrics.json").exists()


def _routing(layers: list[str], fractions: list[list[float]]) -> dict:
    return {"layers": layers, "experts": [f"e{i}" for i in range(len(fractions[0]))], "fractions": fractions}


def test_routing_compare_matches_layers_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(STUDY))
    from routing_init import compare

    a = _routing(["L0", "L1", "L2"], [[0.9, 0.8, 0.2, 0.1], [0.1, 0.9, 0.9, 0.1], [0.7, 0.5, 0.6, 0.2]])
    same = compare(a, _routing(a["layers"][::-1], a["fractions"][::-1]))  # other layer order, same routing
    assert same["r"] == pytest.approx(1.0) and same["mad"] == pytest.approx(0.0) and same["top2"] == 1.0
    swapped = _routing(a["layers"], [row[::-1] for row in a["fractions"]])  # slots reversed
    c = compare(a, swapped)
    assert c["r"] < 0.5 and c["mad"] > 0.2 and c["top2"] == pytest.approx(1 / 3)  # only L1 keeps its top-2 slots
    with pytest.raises(SystemExit, match="different layers"):
        compare(a, _routing(["L0", "L1", "L9"], a["fractions"]))


def test_routing_probe_needs_experts_or_routing_files(tmp_path: Path) -> None:
    f = tmp_path / "routing.json"
    f.write_text(json.dumps(_routing(["L0"], [[1.0, 1.0, 0.0, 0.0]])))
    script = str(STUDY / "routing_init.py")
    for extra in ([], ["--experts", "a", "--routing", str(f)]):
        out = subprocess.run([sys.executable, script, "--compare", str(f), *extra], capture_output=True, text=True)
        assert out.returncode != 0 and "either --experts" in out.stderr
    out = subprocess.run(
        [sys.executable, script, "--compare", str(f), "--routing", str(f)], capture_output=True, text=True
    )
    assert out.returncode == 0 and "| 1.000 | 0.000 | 100% |" in out.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    out = subprocess.run(
        [sys.executable, script, "--compare", str(bad), "--routing", str(f)], capture_output=True, text=True
    )
    assert out.returncode != 0 and "bad.json: expected a routing.json" in out.stderr
