"""kexpert.report on synthetic multirun trees: numbers checked by hand, Table 5 counts, plots, errors."""

import csv
import json
import math
import os
import statistics
from pathlib import Path

import pytest

from kexpert.report import build_report
from kexpert.report.__main__ import main
from kexpert.report.factors import varying_factors
from kexpert.report.runs import collect_runs
from kexpert.utils.errors import DataError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = {"base": "Base Model", "random": "Random", "rocket": "ROCKET", "source_best": "Source Best (oracle)"}


def write_run(
    root: Path,
    job: str,
    *,
    task: str,
    method: str = "rocket",
    data_seed: int = 0,
    seed: int = 0,
    score: float = 0.5,
    k_shot: int = 50,
    num_experts: int = 4,
    top_k: int = 2,
    metric: str = "acc",
    overrides: list[str] | None = None,
    predictions: list[dict] | None = None,
    **extra,
) -> Path:
    """One job dir as kexpert.pipeline.train writes it (metrics.json, predictions.jsonl, .hydra/overrides.yaml)."""
    d = root / job
    d.mkdir(parents=True)
    m = {
        "method": method,
        "label": LABELS.get(method, method),
        "task": task,
        "k_shot": k_shot,
        "data_seed": data_seed,
        "seed": seed,
        "oracle": method == "source_best",
        "num_experts": num_experts,
        "top_k": top_k,
        "expert_selection": "rocket",
        "data_selection": "sim_div",
        "encoder": "minilm",
        "pool": task,
        "moe": "lora_moe",
        "base_model": "smollm2_135m",
        "bank": "smollm2_cpu",
        "budget": 1000,
        "sweep_name": "unit",
        "stages_run": ["kshot", "experts", "data", "train", "eval", "report"],
        "eval": {
            metric: score,
            f"{metric}_ci95": [max(0.0, score - 0.1), min(1.0, score + 0.1)],
            "n": 100,
            "mode": "loglikelihood",
            "task": task,
            "primary_metric": metric,
        },
        "score": score,
        "stage_wall_s": {"kshot": 0.1, "train": 2.0, "eval": 1.0},
        "stage_cache": {"kshot": {"key": f"k{data_seed}", "reused": False, "built_wall_s": 0.1, "path": "x"}},
    }
    m.update(extra)
    if m["stages_run"][-1] != "report":  # stopped before eval: no score
        del m["eval"], m["score"]
    (d / "metrics.json").write_text(json.dumps(m))
    if predictions is not None:
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in predictions))
    (d / ".hydra").mkdir()
    ovr = overrides or [f"task={task}", f"method={method}", f"data_seed={data_seed}"]
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in ovr))
    return d


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# per (method, task): the primary metric of draws data_seed = 0, 1, 2
SCORES = {
    ("base", "arc_c"): [0.30, 0.30, 0.30],
    ("base", "piqa"): [0.50, 0.52, 0.54],
    ("random", "arc_c"): [0.35, 0.45, 0.40],
    ("random", "piqa"): [0.55, 0.50, 0.60],
    ("source_best", "arc_c"): [0.80, 0.80, 0.80],
    ("source_best", "piqa"): [0.70, 0.70, 0.70],
    ("rocket", "arc_c"): [0.50, 0.60, 0.70],
    ("rocket", "piqa"): [0.40, 0.40, 0.55],
}


@pytest.fixture()
def method_sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    job = 0
    for (method, task), scores in SCORES.items():
        for draw, s in enumerate(scores):
            write_run(root, f"{job}_m={method},t={task},d={draw}", task=task, method=method, data_seed=draw, score=s)
            job += 1
    return root


def test_method_table_means_stds_and_paper_order(method_sweep):
    report = build_report(method_sweep)
    assert [f.key for f in report.factors] == ["method"]
    rows = read_csv(method_sweep / "report" / "tables" / "table1_method.csv")
    assert [r["method"] for r in rows] == ["Base Model", "Random", "Source Best (oracle)", "ROCKET"]
    for r in rows:
        method = {v: k for k, v in LABELS.items()}[r["method"]]
        for task in ("arc_c", "piqa"):
            vals = [100 * s for s in SCORES[(method, task)]]
            assert float(r[f"{task}_mean"]) == pytest.approx(statistics.fmean(vals), abs=1e-4)
            assert float(r[f"{task}_std"]) == pytest.approx(statistics.stdev(vals), abs=1e-4)
            assert int(r[f"{task}_n"]) == 3
        assert r["oracle"] == str(method == "source_best")
    rocket = rows[-1]
    assert rocket["method_value"] == "rocket"
    # by hand: arc_c 50/60/70 -> 60 ± 10; piqa 40/40/55 -> 45 ± sqrt(75); Avg 52.5, per-draw 45/50/62.5
    assert float(rocket["arc_c_mean"]) == pytest.approx(60.0) and float(rocket["arc_c_std"]) == pytest.approx(10.0)
    assert float(rocket["piqa_std"]) == pytest.approx(math.sqrt(75), abs=1e-4)
    assert float(rocket["avg_mean"]) == pytest.approx(52.5)
    assert float(rocket["avg_std"]) == pytest.approx(math.sqrt(81.25), abs=1e-4)
    md = (method_sweep / "report" / "tables" / "table1_method.md").read_text()
    assert "| ARC-c | PiQA | Avg |" in md
    # bold = best non-oracle row per column (Source Best is higher everywhere but an oracle)
    assert "| ROCKET | **60.00 ± 10.00 (3)** | 45.00 ± 8.66 (3) | **52.50 ± 9.01 (3)** |" in md
    assert "| Random | 40.00 ± 5.00 (3) | **55.00 ± 5.00 (3)** | 47.50 ± 2.50 (3) |" in md
    assert "| Source Best (oracle) | 80.00 ± 0.00 (3) | 70.00 ± 0.00 (3) | 75.00 ± 0.00 (3) |" in md
    index = (method_sweep / "report" / "report.md").read_text()
    assert "tables/table1_method.md" in index and "tables/table1_method.csv" in index and "tables/runs.csv" in index
    assert "python -m kexpert.report" in index
    long = read_csv(method_sweep / "report" / "tables" / "runs.csv")
    assert len(long) == 24 and {r["status"] for r in long} == {"evaluated"}


def test_single_draw_has_no_std_and_missing_task_no_avg(tmp_path):
    root = tmp_path / "s"
    write_run(root, "0", task="arc_c", method="base", score=0.25)
    write_run(root, "1", task="piqa", method="base", score=0.5)
    write_run(root, "2", task="arc_c", method="rocket", score=0.75)
    build_report(root)
    rows = {r["method"]: r for r in read_csv(root / "report" / "tables" / "table1_method.csv")}
    assert rows["Base Model"]["arc_c_std"] == "" and rows["Base Model"]["avg_mean"] == "37.5"
    assert rows["ROCKET"]["piqa_n"] == "0" and rows["ROCKET"]["avg_mean"] == ""
    md = (root / "report" / "tables" / "table1_method.md").read_text()
    assert "| ROCKET | **75.00 (1)** | — | — |" in md


def test_table_notes_name_the_eval_split_and_n(tmp_path):
    root = tmp_path / "s"
    test_split = {"eval_split": "eval/arc_challenge/test.jsonl"}
    hub = {"eval_split": {"path": "ybisk/piqa", "name": None, "split": "validation"}}
    write_run(root, "0", task="arc_c", method="base", task_info=test_split)
    write_run(root, "1", task="arc_c", method="rocket", task_info=test_split)
    write_run(root, "2", task="piqa", method="base", task_info=hub)
    write_run(root, "3", task="piqa", method="rocket")  # an older run without task_info
    build_report(root)
    md = (root / "report" / "tables" / "table1_method.md").read_text()
    assert (
        "Evaluated on: ARC-c: `eval/arc_challenge/test.jsonl`, n = 100, "
        "PiQA: n = 100; `ybisk/piqa validation`, n = 100." in md
    )


def test_k_shot_sweep_table_and_curve(tmp_path):
    root = tmp_path / "ksweep"
    scores = {1: 0.3, 5: 0.5, 20: 0.6}
    for k in (20, 1, 5):
        for task in ("gsm8k", "arc_e"):
            for draw in range(3):
                write_run(
                    root,
                    f"k{k}_{task}_{draw}",
                    task=task,
                    k_shot=k,
                    data_seed=draw,
                    score=scores[k] + 0.01 * draw,
                    overrides=[f"k_shot={k}", f"task={task}"],
                )
    report = build_report(root)
    assert [f.key for f in report.factors] == ["k_shot"]
    rows = read_csv(root / "report" / "tables" / "table4_k_shot.csv")
    assert [r["k_shot"] for r in rows] == ["1", "5", "20"]
    assert list(rows[0])[:8] == [
        "k_shot",
        "oracle",
        "arc_e_mean",
        "arc_e_std",
        "arc_e_n",
        "gsm8k_mean",
        "gsm8k_std",
        "gsm8k_n",
    ]  # paper task order: ARC-e before GSM8K
    assert float(rows[1]["gsm8k_mean"]) == pytest.approx(51.0) and float(rows[1]["gsm8k_std"]) == pytest.approx(1.0)
    png = root / "report" / "plots" / "metric_vs_k_shot.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    index = (root / "report" / "report.md").read_text()
    assert "plots/metric_vs_k_shot.png" in index and "Table 4" in index
    assert "Fixed in every run:" in (root / "report" / "tables" / "table4_k_shot.md").read_text()


def test_skipped_and_incomplete_runs_are_listed(tmp_path):
    root = tmp_path / "s"
    write_run(root, "0_ok", task="arc_e", score=0.5)
    (root / "1_skip").mkdir()
    (root / "1_skip" / "metrics.json").write_text(
        json.dumps({"skipped": "moe.top_k=3 > moe.num_experts=2", "task": "arc_e", "method": "rocket", "top_k": 3})
    )
    write_run(root, "2_sel", task="arc_e", stages_run=["kshot", "experts"])
    report = build_report(root)
    assert len(report.collection.skipped) == 1 and len(report.collection.incomplete) == 1
    index = (root / "report" / "report.md").read_text()
    assert "## Skipped runs" in index and "moe.top_k=3 > moe.num_experts=2" in index and "`1_skip`" in index
    assert "## Incomplete runs" in index and "stages_run=['kshot', 'experts']" in index
    status = {r["run_dir"]: r["status"] for r in read_csv(root / "report" / "tables" / "runs.csv")}
    assert status == {"0_ok": "evaluated", "1_skip": "skipped", "2_sel": "incomplete"}


def test_only_skipped_runs_still_give_an_index(tmp_path):
    root = tmp_path / "s"
    (root / "0").mkdir(parents=True)
    (root / "0" / "metrics.json").write_text(json.dumps({"skipped": "invalid grid point"}))
    report = build_report(root)
    assert set(report.tables) == {"runs"} and "invalid grid point" in report.index.read_text()


IDS_1 = ["a", "b", "c", "d", "e", "f"]
PER_EXPERT_1 = {"e1": [1, 1, 0, 0, 1, 0], "e2": [1, 0, 0, 1, 1, 0], "e3": [1, 0, 0, 0, 0, 1]}
MOE_1 = [1, 1, 0, 1, 1, 0]
IDS_2 = ["g", "h"]
PER_EXPERT_2 = {"x1": [1, 0], "x2": [0, 0], "x3": [1, 0]}
MOE_2 = [0, 0]


def _per_expert_run(root, job, draw, ids, per_expert, moe):
    preds = [{"id": i, "gold": "A", "pred": "A" if c else "B", "correct": bool(c)} for i, c in zip(ids, moe)]
    preds.append({"id": "not-analysed", "gold": "A", "pred": "A", "correct": True})
    pe = {
        "experts": list(per_expert),
        "ids": ids,
        "correct": {k: [bool(v) for v in vs] for k, vs in per_expert.items()},
    }
    return write_run(root, job, task="arc_c", data_seed=draw, num_experts=3, predictions=preds, per_expert=pe)


def test_table5_counts_and_mixed_error_rates(tmp_path):
    root = tmp_path / "s"
    _per_expert_run(root, "0", 0, IDS_1, PER_EXPERT_1, MOE_1)
    build_report(root, tmp_path / "one")
    (row,) = read_csv(tmp_path / "one" / "tables" / "table5_expert_agreement.csv")
    # a: all right; c: all wrong; b, d, e, f: mixed. On mixed: e1 wrong on d,f; e2 on b,f; e3 on b,d,e; MoE on f
    assert (row["all_correct"], row["all_incorrect"], row["mixed"], row["items"]) == ("1", "1", "4", "6")
    assert [float(row[f"expert{i}_error_rate"]) for i in (1, 2, 3)] == [0.5, 0.5, 0.75]
    assert float(row["moe_error_rate"]) == 0.25
    # a second draw is pooled: g mixed (x2 wrong, MoE wrong), h all wrong
    _per_expert_run(root, "1", 1, IDS_2, PER_EXPERT_2, MOE_2)
    report = build_report(root, tmp_path / "two")
    (row,) = read_csv(tmp_path / "two" / "tables" / "table5_expert_agreement.csv")
    assert (row["all_correct"], row["all_incorrect"], row["mixed"], row["runs"]) == ("1", "2", "5", "2")
    assert [float(row[f"expert{i}_error_rate"]) for i in (1, 2, 3)] == [0.4, 0.6, 0.6]
    assert float(row["moe_error_rate"]) == 0.4
    md = (tmp_path / "two" / "tables" / "table5_expert_agreement.md").read_text()
    assert "| 40.0% (2/5) | 60.0% (3/5) | 60.0% (3/5) | 40.0% (2/5) |" in md
    assert report.plots["table5_expert_agreement"].read_bytes()[:8] == PNG_MAGIC


def test_bad_per_expert_data_is_a_clear_error(tmp_path):
    root = tmp_path / "s"
    d = _per_expert_run(root, "0", 0, IDS_1, {**PER_EXPERT_1, "e2": [True]}, MOE_1)
    with pytest.raises(DataError, match=r"per_expert\.correct\['e2'\]: expected 6 booleans .* got 1"):
        build_report(root)
    (d / "metrics.json").unlink()
    (d / "predictions.jsonl").unlink()
    _per_expert_run(root, "1", 0, ["a", "zz", "c", "d", "e", "f"], PER_EXPERT_1, MOE_1)
    (root / "1" / "predictions.jsonl").write_text(json.dumps({"id": "a", "correct": True}) + "\n")
    with pytest.raises(DataError, match=r"per_expert\.ids\[1\] = 'zz' is not in .*predictions\.jsonl"):
        build_report(root)


def _routing(d: Path, experts: list[str], fractions: list[list[float]]) -> None:
    (d / "routing").mkdir()
    doc = {
        "tokens": 100,
        "top_k": 1,
        "experts": experts,
        "layers": ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"],
        "fractions": fractions,
        "mean_weights": fractions,
    }
    (d / "routing" / "routing.json").write_text(json.dumps(doc))


def test_routing_is_averaged_over_draws(tmp_path):
    root = tmp_path / "s"
    _routing(write_run(root, "0", task="piqa", data_seed=0), ["a", "b"], [[0.2, 0.8], [0.5, 0.5]])
    _routing(write_run(root, "1", task="piqa", data_seed=1), ["a", "c"], [[0.4, 0.6], [0.9, 0.1]])
    write_run(root, "2", task="piqa", method="base")  # no routing
    report = build_report(root)
    rows = read_csv(root / "report" / "tables" / "routing_mean.csv")
    got = {(r["layer"], r["expert"]): float(r["fraction"]) for r in rows if r["row"] == "ROCKET"}
    assert got == pytest.approx(
        {
            ("model.layers.0.self_attn.q_proj", "slot 1"): 0.3,
            ("model.layers.0.self_attn.q_proj", "slot 2"): 0.7,
            ("model.layers.1.self_attn.q_proj", "slot 1"): 0.7,
            ("model.layers.1.self_attn.q_proj", "slot 2"): 0.3,
        }
    )
    assert {r["runs"] for r in rows} == {"2"}
    assert "draws chose different experts: a, b | a, c" in (root / "report" / "tables" / "routing_mean.md").read_text()
    assert report.plots["routing_piqa_rocket"].read_bytes()[:8] == PNG_MAGIC


def test_routing_plots_of_look_alike_labels_do_not_overwrite_each_other(tmp_path):
    root = tmp_path / "s"
    labels = [("mixlora", "MixLoRA"), ("mixlora_data", "MixLoRA\u2020"), ("mix2", "MixLoRA.")]
    for job, (method, label) in enumerate(labels):
        run = write_run(root, str(job), task="piqa", method=method, label=label)
        _routing(run, ["a", "b"], [[0.1 * (job + 1), 1 - 0.1 * (job + 1)], [0.5, 0.5]])
    plots = {k: v for k, v in build_report(root).plots.items() if k.startswith("routing_")}
    assert set(plots) == {"routing_piqa_mixlora", "routing_piqa_mixlora_dagger", "routing_piqa_mixlora_2"}
    assert len({p.read_bytes() for p in plots.values()}) == 3  # three files, three different heatmaps


def test_notes_in_the_sweep_dir_survive_a_rebuild(tmp_path):
    root = tmp_path / "s"
    write_run(root, "0", task="piqa", method="rocket")
    (root / "NOTES.md").write_text("The ROCKET run used the paper's lr.\n")
    for _ in range(2):  # a rebuild rewrites report.md and still carries the notes
        text = build_report(root, tmp_path / "out").index.read_text()
        assert text.count("## Notes") == 1 and "The ROCKET run used the paper's lr." in text
        assert text.index("## Notes") < text.index("## Every run")
    (root / "NOTES.md").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match=r"NOTES\.md: expected UTF-8 markdown notes"):
        build_report(root, tmp_path / "out")
    assert "The ROCKET run used the paper's lr." in (tmp_path / "out" / "report.md").read_text()  # not half-written
    (root / "NOTES.md").unlink()
    assert "## Notes" not in build_report(root, tmp_path / "out").index.read_text()


def test_stage_timing_counts_reuse(tmp_path):
    root = tmp_path / "s"
    for i, reused in enumerate([False, True, True]):
        cache = {"experts": {"key": "same", "reused": reused, "built_wall_s": 30.0, "path": "p"}}
        write_run(
            root,
            str(i),
            task="arc_e",
            seed=i,
            stage_cache=cache,
            stage_wall_s={"experts": 30.0 if not reused else 0.5, "eval": 1.0},
        )
    build_report(root)
    rows = {r["stage"]: r for r in read_csv(root / "report" / "tables" / "stage_timing.csv")}
    assert (rows["experts"]["reused"], rows["experts"]["built"], rows["experts"]["distinct_artifacts"]) == (
        "2",
        "1",
        "1",
    )
    assert float(rows["experts"]["mean_wall_s"]) == pytest.approx(31.0 / 3, abs=1e-3)
    assert float(rows["experts"]["mean_build_s"]) == 30.0
    assert rows["eval"]["cached"] == "False" and rows["eval"]["runs"] == "3"


def test_unrecorded_override_separates_rows_but_task_following_pool_does_not(tmp_path):
    root = tmp_path / "s"
    for lr in ("1e-4", "5e-5"):
        for task in ("arc_e", "boolq"):
            write_run(
                root,
                f"{lr}_{task}",
                task=task,
                score=0.6 if lr == "1e-4" else 0.4,
                overrides=[f"task={task}", f"optim.optimizer.lr={lr}", "eval.progress=false"],
            )
    runs = collect_runs(root).evaluated
    assert [f.key for f in varying_factors(runs)] == ["optim.optimizer.lr"]
    build_report(root)
    rows = read_csv(root / "report" / "tables" / "results_optim_optimizer_lr.csv")
    assert [(r["optim.optimizer.lr"], r["avg_mean"]) for r in rows] == [("5e-5", "40.0"), ("1e-4", "60.0")]


def test_repeated_configuration_keeps_the_newest(tmp_path):
    root = tmp_path / "sweeps"
    old = write_run(root / "2026-01-01", "0", task="arc_e", score=0.1)
    new = write_run(root / "2026-01-02", "0", task="arc_e", score=0.9)
    write_run(root / "2026-01-02", "1", task="arc_e", data_seed=1, score=0.7)
    os.utime(old / "metrics.json", (1_000_000, 1_000_000))
    report = build_report(root)
    assert [(o.run_dir, n.run_dir) for o, n in report.collection.superseded] == [(old, new)]
    (row,) = read_csv(root / "report" / "tables" / "results.csv")
    assert float(row["arc_e_mean"]) == pytest.approx(80.0) and row["arc_e_n"] == "2"
    assert "## Superseded runs" in report.index.read_text()


def test_empty_or_missing_dir_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty" / "0_job" / ".hydra").mkdir(parents=True)
    with pytest.raises(DataError, match="no metrics.json found under it"):
        build_report(tmp_path / "empty")
    with pytest.raises(DataError, match="not a directory"):
        build_report(tmp_path / "missing")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "empty")])
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_malformed_metrics_json_names_the_file(tmp_path):
    write_run(tmp_path / "s", "0", task="arc_e")
    (tmp_path / "s" / "0" / "metrics.json").write_text('{"task": ')
    with pytest.raises(DataError, match=r"0/metrics\.json:1: invalid JSON"):
        build_report(tmp_path / "s")


def test_cli_out_dir_and_wandb_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = tmp_path / "s"
    write_run(root, "0", task="arc_e", score=0.5)
    write_run(root, "1", task="arc_e", method="base", score=0.25)
    assert main([str(root), "--out", str(tmp_path / "rep"), "--wandb", "--no-progress"]) == 0
    assert "report: " in capsys.readouterr().out
    index = (tmp_path / "rep" / "report.md").read_text()
    assert f"python -m kexpert.report {root} --out {tmp_path / 'rep'} --wandb --no-progress" in index
    assert "Logged to W&B (offline, project kexpert, group unit)" in index
    runs = list((tmp_path / "rep" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
