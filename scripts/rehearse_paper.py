"""The 7B-shaped rehearsal of ``experiment=paper_7b`` (``make rehearse-paper``): every stage, end to end.

For each base model (default: LLaMA-2-7B's and Mistral-7B's real configs with 2 decoder layers and random
weights, ``conf/base_model/*_2layer.yaml``):

1. ``bank``: 8 random rank-16 q_proj/v_proj LoRAs of that model's shapes (``make_random_bank``), written where
   ``conf/experiment/rehearse_paper.yaml`` imports them from (``bank=adapters_dir``: import and validation);
2. ``train``: ``python train.py -m experiment=rehearse_paper base_model=<models> eval.mode=loglikelihood,generate``:
   K-shot, expert selection (Algorithm 1), data selection (Algorithm 2), LoRA-MoE injection and training with
   the paper's micro-batch 2 x accumulation 16 and cutoff 1024 (2 optimizer steps), evaluation of 4 ARC-C items
   in both eval modes (the generate job reuses every stage but eval), report stage (metrics.json, routing);
3. ``report``: ``python -m kexpert.report`` over the sweep (tables, plots).

It then checks every job's metrics.json and writes ``<out>/rehearsal.json``: wall time per step, peak RSS of the
training process, per-job stage times, parameter counts and scores (random weights: scores mean nothing).

Usage: python scripts/rehearse_paper.py [--out DIR] [--models a,b] [--device cpu|cuda] [-- extra overrides]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = "llama2_7b_2layer,mistral_7b_2layer"
STAGES = ["kshot", "experts", "data", "train", "eval", "report"]
BANK_SIZE, BANK_RANK = 8, 16


def make_bank(model: str, out_dir: Path, device: str) -> None:
    """Write the random rehearsal bank of ``model`` into ``out_dir`` (runs in its own process)."""
    from hydra import compose, initialize_config_dir

    from kexpert.bank.testing import make_random_bank
    from kexpert.utils.instantiate import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"base_model={model}", f"base_model.device={device}"])
    spec = instantiate(cfg.base_model, key="base_model")
    bank = make_random_bank(spec, out_dir, n=BANK_SIZE, rank=BANK_RANK, target_modules=spec.lora_target_modules)
    print(f"bank: {len(bank)} random rank-{BANK_RANK} LoRAs for {model} in {out_dir}")


def _run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("w") as f:
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"rehearsal step failed ({r.returncode}): {' '.join(cmd)}\n--- {log} (tail)\n{tail}")
    return round(wall, 1)


def _child_peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2)


def check_jobs(sweep: Path, models: list[str]) -> list[dict]:
    """Every (model, eval mode) job ran every stage and evaluated its items; returns a summary per job."""
    jobs = []
    for path in sorted(sweep.glob("*/metrics.json")):
        m = json.loads(path.read_text())
        missing = [s for s in STAGES if s not in m.get("stage_wall_s", {})]
        if missing or m.get("stages_run") != STAGES:
            raise SystemExit(f"{path}: stages {missing} did not run")
        if not m["eval"]["n"] or len(m.get("experts", [])) != int(m["num_experts"]):
            raise SystemExit(f"{path}: no eval items or wrong expert count")
        jobs.append(
            {
                "dir": str(path.parent),
                "base_model": m["base_model"],
                "eval_mode": m["eval"].get("mode"),
                "score": m["score"],
                "n": m["eval"]["n"],
                "experts": m["experts"],
                "selected_items": m.get("selected_items"),
                "train_steps": m["method_info"].get("global_step", m["method_info"].get("steps")),
                "params": m["params"],
                "stage_wall_s": m["stage_wall_s"],
                "reused": {k: v["reused"] for k, v in m["stage_cache"].items()},
            }
        )
    want = {(b, mode) for b in models for mode in ("loglikelihood", "generate")}
    got = {(j["base_model"], j["eval_mode"]) for j in jobs}
    if got != want:
        raise SystemExit(f"rehearsal jobs: expected {sorted(want)}, got {sorted(got)}")
    return jobs


def main(argv: list[str] | None = None) -> int:
    """Run the rehearsal; exit non-zero naming the step that failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="scripts/rehearse_paper.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", type=Path, default=ROOT / "outputs" / "rehearse_paper" / time.strftime("%Y-%m-%d_%H-%M-%S")
    )
    p.add_argument("--models", default=MODELS, help=f"comma-separated conf/base_model names (default {MODELS})")
    p.add_argument("--device", default="cpu", help="cpu (trainer=cpu, fp32) or cuda (trainer=gpu, bf16)")
    p.add_argument("--bank-only", metavar="MODEL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = args.out.resolve()
    if args.bank_only:
        make_bank(args.bank_only, out, args.device)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    models = [m for m in args.models.split(",") if m]
    cache = out / "cache"
    env = {
        **os.environ,
        "KEXPERT_CACHE_DIR": str(cache),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
    py = sys.executable
    report: dict = {"out": str(out), "models": models, "device": args.device, "wall_s": {}, "extra": extra}
    t0 = time.perf_counter()
    for model in models:
        bank_dir = cache / "rehearsal_bank" / model
        cmd = [py, __file__, "--bank-only", model, "--out", str(bank_dir), "--device", args.device]
        report["wall_s"][f"bank:{model}"] = _run(cmd, env, out / f"bank_{model}.log")
    overrides = ["experiment=rehearse_paper", f"base_model={','.join(models)}", "eval.mode=loglikelihood,generate"]
    if args.device != "cpu":
        overrides += ["trainer=gpu"]
    sweep = out / "sweep"
    cmd = [py, "train.py", "-m", *overrides, f"hydra.sweep.dir={sweep}", *extra]
    report["command"] = " ".join(cmd[1:])
    report["wall_s"]["train.py"] = _run(cmd, env, out / "train.log")
    report["peak_rss_gb"] = _child_peak_rss_gb()
    report["jobs"] = check_jobs(sweep, models)
    cmd = [py, "-m", "kexpert.report", str(sweep), "--no-progress"]
    report["wall_s"]["report"] = _run(cmd, env, out / "report.log")
    report["wall_s"]["total"] = round(time.perf_counter() - t0, 1)
    report["host"] = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    (out / "rehearsal.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"rehearsal passed in {report['wall_s']['total']:.0f} s (peak RSS {report['peak_rss_gb']} GB): {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
