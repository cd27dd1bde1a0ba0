"""A small real LoRA-MoE run on SmolLM2-135M (issue 6): does the K-shot router init help, and what does the
export to one plain LoRA cost?

Four experts from the CPU bank (``python bank.py bank=smollm2_cpu``) are mixed into a top-2 LoRA-MoE, fine-tuned on
a K-shot of the task (``train_moe``, conf/moe + conf/optim + conf/trainer/cpu), and scored with the evaluator on a
fixed subset of the task's eval split. Stages are cached as JSON under ``--out`` (small files, in the repo) and the
heavy artifacts (training checkpoints, MoE checkpoints, exported adapters) under ``--work`` (outside the repo), so
the script can be re-run after an interruption:

* ``base``: the base model;
* ``init_<router_init>``: the MoE right after router initialisation (no training), for ``default`` and
  ``kshot_stats``;
* ``trained_<router_init>``: after fine-tuning (same seed, data and steps);
* ``export_<method>_r<rank>``: the trained default-init MoE collapsed into one PEFT LoRA (calibration = the
  K-shot texts, never the eval set), loaded back with ``peft.PeftModel``;
* routing statistics (table + heatmap) of the trained MoE on the eval subset.

    python experiments/moe/real_run.py --experts commonsense_qa csqa2 social_i_qa qasc --task arc_e
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from kexpert.bank.manifest import read_manifest
from kexpert.data.kshot import sample_kshot
from kexpert.eval.evaluator import evaluate
from kexpert.models.inject import inject_lora_moe
from kexpert.models.moe_checkpoint import export_to_lora, load_expert
from kexpert.models.routing_stats import collect_routing_stats, eval_texts, write_routing_report
from kexpert.training.train_moe import kshot_batches, train_moe
from kexpert.utils.instantiate import instantiate
from kexpert.utils.io import write_json

ROOT = Path(__file__).resolve().parents[2]


def compose_cfg(args, init: str):
    os.environ.setdefault("KEXPERT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    overrides = [
        f"task={args.task}",
        "+moe=lora_moe",
        f"moe/router_init={init}",
        "+optim=adamw",
        "+trainer=cpu",
        f"moe.num_experts={len(args.experts)}",
        f"moe.top_k={args.top_k}",
        f"optim.optimizer.lr={args.lr}",
        f"trainer.max_epochs={args.epochs}",
        "+trainer.enable_progress_bar=false",
        "moe.router_init.progress=false" if init == "kshot_stats" else "moe.compute=auto",
        "paths.output_dir=" + str(args.out),
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="eval", overrides=overrides)


def score(name, args, task, model, tok, pf, examples) -> dict:
    path = args.out / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    t = time.perf_counter()
    res = evaluate(task, model, tok, pf, examples=examples, batch_size=8, progress=False)
    gold = [pred["loglik"][ex.gold_index] for pred, ex in zip(res.predictions, examples) if "loglik" in pred]
    row = {
        "name": name,
        **{k: res.metrics[k] for k in ("acc", "acc_norm", "n") if k in res.metrics},
        "acc_ci95": res.metrics.get("acc_ci95"),
        "eval_s": round(time.perf_counter() - t, 1),
        "gold_logprob_mean": sum(gold) / len(gold) if gold else None,
    }
    write_json(path, row)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bank", default=str(Path.home() / ".cache/kexpert/banks/smollm2_cpu/smollm2_135m"))
    p.add_argument("--experts", nargs="+", required=True)
    p.add_argument("--task", default="arc_e")
    p.add_argument("--k-shot", type=int, default=50)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--cutoff-len", type=int, default=192)
    p.add_argument("--eval-limit", type=int, default=200)
    p.add_argument("--export-rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "moe" / "results" / "real_arc_e")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "kexpert" / "moe_real_run" / "arc_e")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    bank = read_manifest(args.bank)
    experts = [bank[name] for name in args.experts]
    cfg = compose_cfg(args, "default")
    task = instantiate(cfg.task, key="task")
    base_spec = instantiate(cfg.base_model, key="base_model")
    kshot = sample_kshot(task.kshot_pool(), args.k_shot, args.data_seed)
    items = [task.to_instruction(ex) for ex in kshot]
    examples = task.eval_examples(limit=args.eval_limit, seed=0)
    pf = base_spec.prompt_format
    results = {"base": score("base", args, task, *base_spec.load(), pf, examples)}
    for init in ("default", "kshot_stats"):
        cfg = compose_cfg(args, init)
        if not (args.out / f"init_{init}.json").exists():
            torch.manual_seed(args.seed)
            model, tok = base_spec.load()
            inj = inject_lora_moe(model, instantiate(cfg.moe, key="moe"), experts)
            spec = instantiate(cfg.moe, key="moe")
            batches = (
                kshot_batches(items, tok, pf, args.cutoff_len, args.batch_size)
                if spec.router_init.needs_data
                else None
            )
            info = spec.router_init(model, inj.layers, batches)
            results[f"init_{init}"] = {**score(f"init_{init}", args, task, model.eval(), tok, pf, examples), **info}
            write_json(args.out / f"init_{init}.json", results[f"init_{init}"])
        results[f"init_{init}"] = json.loads((args.out / f"init_{init}.json").read_text())
        run_dir = args.work / f"run_{init}"
        if not (run_dir / "moe").exists():
            train_moe(
                cfg.moe,
                cfg.optim,
                cfg.trainer,
                base_spec,
                experts,
                items,
                run_dir,
                args.seed,
                kshot_items=items,
                batch_size=args.batch_size,
                cutoff_len=args.cutoff_len,
                checkpoint_every_n_steps=10,
                log_layer_load_every_n_steps=10,
            )
        model, tok = load_expert(run_dir / "moe")
        train_metrics = json.loads((run_dir / "metrics.json").read_text())
        write_json(args.out / f"train_{init}.json", {k: v for k, v in train_metrics.items() if k != "provenance"})
        csv_logs = sorted((run_dir / "logs").glob("version_*/metrics.csv"))
        if csv_logs:  # the per-step training curve (train/loss, router/entropy, router/load_*)
            (args.out / f"train_{init}_log").mkdir(exist_ok=True)
            shutil.copyfile(csv_logs[-1], args.out / f"train_{init}_log" / "metrics.csv")
        results[f"trained_{init}"] = {
            **score(f"trained_{init}", args, task, model, tok, pf, examples),
            "train_loss": train_metrics["train/loss"],
            "steps": train_metrics["global_step"],
            "train_wall_s": train_metrics["wall_s"],
        }
        routing_dir = args.out / f"routing_{init}"
        if not (routing_dir / "routing.json").exists():
            stats = collect_routing_stats(
                model, tok, eval_texts(task, examples, pf, tok), expert_names=args.experts, progress=False
            )
            write_routing_report(stats, routing_dir, title=f"{args.task}: tokens routed per expert ({init} init)")
        if init == "default":
            from peft import PeftModel

            calib = [pf.render(it.instruction, tok) + pf.response(" " + it.output) for it in items]
            for method in ("mean_gate", "least_squares"):
                name = f"export_{method}_r{args.export_rank}"
                if (args.out / f"{name}.json").exists():
                    results[name] = json.loads((args.out / f"{name}.json").read_text())
                    continue
                rep = export_to_lora(
                    model,
                    tok,
                    calib,
                    args.work / name,
                    rank=args.export_rank,
                    method=method,
                    base_model_name_or_path=base_spec.identity,
                    progress=False,
                )
                base, btok = base_spec.load()
                peft_model = PeftModel.from_pretrained(base, str(rep.out_dir)).eval()
                results[name] = {
                    **score(name, args, task, peft_model, btok, pf, examples),
                    "mean_energy": rep.mean_energy,
                }
                write_json(args.out / f"{name}.json", results[name])
    write_json(
        args.out / "summary.json",
        {
            "task": args.task,
            "experts": args.experts,
            "k_shot": args.k_shot,
            "epochs": args.epochs,
            "lr": args.lr,
            "eval_limit": args.eval_limit,
            "results": results,
        },
    )
    for name, row in results.items():
        print(f"{name:28s} acc {100 * row['acc']:.1f}  acc_norm {100 * row.get('acc_norm', float('nan')):.1f}")


if __name__ == "__main__":
    main()
