"""Benchmark of expert selection (issue 4, item 5). Two parts:

``scoring``: K-shot signals (accuracy by generation + reasoning perplexity) of every bank LoRA, ours vs the
official-style loop. Ours = kexpert.selection.experts.signals.BankScorer: base model loaded once, every adapter
loaded once into one PeftModel, K-shot batched, perplexities in mixed-adapter batches, no grad. Official style =
for each candidate: load the base model and the adapter, then batch size 1 (generation one item at a time;
perplexity as Rocket's compute_ppl.py: prompt and output tokenised separately, EOS appended, labels -100 on the
prompt, exp(loss) of a plain forward without torch.no_grad). Rationales are prepared once before timing (both
sides need them). Prints both wall times and the ratio.

``diversity``: choosing the most diverse N-subset of M LoRAs from the cached M x M matrix (vectorised over all
C(M, N) groups) vs recomputing each pair's similarity inside every group, as Rocket's group_diversity.py does.

    python experiments/selection/bench_selection.py diversity --m 38 --n 4
    python experiments/selection/bench_selection.py scoring --bank ~/.cache/kexpert/banks/smollm2_cpu/smollm2_135m \\
        --task arc_c --k 50
    python experiments/selection/bench_selection.py scoring --random-bank 4 --task arc_c --k 8   # no real bank yet
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------------- diversity
def synthetic_smollm2_adapters(m: int, rank: int = 16, seed: int = 0):
    """M random LoRAs with SmolLM2-135M shapes (30 layers, q_proj 576x576, v_proj 192x576)."""
    from kexpert.models.adapter import LoRAAdapter, LoRAModule

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(m):
        mods = {}
        for layer in range(30):
            for proj, d_out in (("q_proj", 576), ("v_proj", 192)):
                a = torch.randn(rank, 576, generator=g) / 24
                b = torch.randn(d_out, rank, generator=g) / 24
                mods[f"model.layers.{layer}.self_attn.{proj}"] = LoRAModule(
                    A=a, B=b, rank=rank, alpha=rank, scaling=1.0
                )
        out.append(LoRAAdapter(path=Path("."), modules=mods))
    return out


def bench_diversity(args) -> dict:
    from kexpert.selection.experts.diversity import (
        all_groups,
        brute_force_most_diverse,
        group_mean_similarity,
        similarity_matrix,
    )

    torch.set_num_threads(2)
    adapters = synthetic_smollm2_adapters(args.m, seed=args.seed)
    t0 = time.perf_counter()
    sim = similarity_matrix(adapters, "delta_w")
    t_matrix = time.perf_counter() - t0
    t0 = time.perf_counter()
    groups = all_groups(args.m, args.n)
    means = group_mean_similarity(sim, groups)
    best = tuple(int(x) for x in groups[int(np.argmin(means))])
    t_search = time.perf_counter() - t0
    # official style: every pair of every group recomputed from the tensors (no disk reloads counted, which
    # Rocket also does: 2 loads per pair); timed on a sample of groups and extrapolated
    n_groups = len(groups)
    sample = groups[
        np.random.default_rng(0).choice(n_groups, size=min(args.recompute_groups, n_groups), replace=False)
    ]
    t0 = time.perf_counter()
    for g in sample:
        total = 0.0
        for i, j in itertools.combinations(g, 2):
            total += float(similarity_matrix([adapters[i], adapters[j]], "delta_w")[0, 1])
    t_recompute = (time.perf_counter() - t0) / len(sample) * n_groups
    assert best == brute_force_most_diverse(sim, args.n) if args.m <= 16 else True
    res = {
        "part": "diversity",
        "M": args.m,
        "N": args.n,
        "groups": n_groups,
        "matrix_s": t_matrix,
        "search_from_cached_matrix_s": t_search,
        "recompute_per_group_s_extrapolated": t_recompute,
        "recompute_sampled_groups": len(sample),
        "ratio": t_recompute / t_search,
        "ratio_including_matrix": t_recompute / (t_matrix + t_search),
        "note": "synthetic random LoRAs of SmolLM2-135M shapes (rank 16, q/v in 30 layers)",
    }
    print(
        f"diversity M={args.m} N={args.n}: {n_groups} groups; matrix once {t_matrix:.2f} s; search from the cached "
        f"matrix {t_search:.3f} s; recomputing similarities per group ~{t_recompute:.0f} s (extrapolated from "
        f"{len(sample)} groups) -> {t_recompute / t_search:.0f}x ({t_recompute / (t_matrix + t_search):.0f}x with "
        "the matrix computation counted)"
    )
    return res


# ------------------------------------------------------------------------------------------------ scoring
def _load_config(task: str, base_model: str, data_dir: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "select_experts",
            overrides=[
                f"task={task}",
                f"base_model={base_model}",
                "bank=manifest",
                "bank.manifest=unused",
                f"paths.data_dir={data_dir}",
            ],
        )
    return cfg


def official_style(task, kshot, bank, spec, rationales, signals) -> dict:
    """Per candidate: fresh base + adapter; batch size 1; perplexity as Rocket's compute_ppl.py."""
    from peft import PeftModel

    from kexpert.eval.evaluator import evaluate

    out = {}
    for entry in bank.entries:
        model, tok = spec.load()
        model = PeftModel.from_pretrained(model, str(entry.path))
        res = {}
        if "accuracy" in signals:
            ev = evaluate(
                task, model, tok, spec.prompt_format, examples=kshot, mode="generate", batch_size=1, progress=False
            )
            res["accuracy"] = ev.metrics["acc"]
        if "reasoning_ppl" in signals:
            ppls = []
            for ex, r in zip(kshot, rationales):
                prompt = spec.prompt_format.render(task.prompt(ex, fewshot=False), tok)
                output = spec.prompt_format.response(task.rationale_response(ex, r["rationale"]))
                p_ids = tok(prompt).input_ids
                o_ids = tok(output, add_special_tokens=False).input_ids + [tok.eos_token_id]
                ids = torch.tensor([p_ids + o_ids])
                labels = torch.tensor([[-100] * len(p_ids) + o_ids])
                loss = model(input_ids=ids, labels=labels).loss  # no torch.no_grad(), as compute_ppl.py
                ppls.append(math.exp(float(loss)))
            res["reasoning_ppl"] = float(np.mean(ppls))
        out[entry.name] = res
        del model
    return out


def bench_scoring(args) -> dict:
    from kexpert.bank.manifest import read_manifest
    from kexpert.bank.testing import make_random_bank
    from kexpert.data.kshot import sample_kshot
    from kexpert.selection.experts.signals import BankScorer, SignalConfig
    from kexpert.utils.instantiate import instantiate

    torch.set_num_threads(2)
    cfg = _load_config(args.task, args.base_model, args.data_dir)
    task = instantiate(cfg.task, key="task")
    if args.max_new_tokens:
        task.max_new_tokens = args.max_new_tokens
    spec = instantiate(cfg.base_model, key="base_model")
    tmp = Path(tempfile.mkdtemp(prefix="bench_selection_"))
    if args.random_bank:
        bank = make_random_bank(spec, tmp / "bank", n=args.random_bank, rank=16)
        bank_desc = f"{args.random_bank} random rank-16 LoRAs (q,v) on {spec.name}"
    else:
        bank = read_manifest(Path(args.bank).expanduser())
        if args.max_adapters:
            bank = bank.subset(bank.names()[: args.max_adapters])
        bank_desc = f"bank {bank.name} ({len(bank)} LoRAs)"
    kshot = sample_kshot(task.kshot_pool(), args.k, args.data_seed)
    signals = args.signals.split(",")
    sig_cfg = SignalConfig(
        batch_size=args.batch_size, score_base=False, cache=False, progress=False, accuracy_mode="generate"
    )
    scorer = BankScorer(
        task,
        kshot,
        bank,
        spec.load,
        spec.prompt_format,
        spec.identity,
        sig_cfg,
        cache_dir=Path(args.cache_dir).expanduser(),
        data_dir=args.data_dir,
    )
    rationales = scorer.rationales() if "reasoning_ppl" in signals else []  # prepared once, outside both timings
    scorer._model = scorer._tok = None  # ours starts from nothing loaded, like the official loop
    t0 = time.perf_counter()
    ours = {s: scorer.compute(s, bank.names()) for s in signals}
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = official_style(task, kshot, bank, spec, rationales, signals)
    t_theirs = time.perf_counter() - t0
    agree = {}
    if "accuracy" in signals:
        agree["accuracy_equal"] = all(abs(ours["accuracy"][n]["value"] - theirs[n]["accuracy"]) < 1e-9 for n in theirs)
    if "reasoning_ppl" in signals:  # the official target has an extra EOS token, so values differ slightly
        a = [ours["reasoning_ppl"][n]["value"] for n in theirs]
        b = [theirs[n]["reasoning_ppl"] for n in theirs]
        from scipy.stats import spearmanr

        agree["reasoning_ppl_spearman"] = float(spearmanr(a, b).statistic) if len(a) > 2 else None
    res = {
        "part": "scoring",
        "task": args.task,
        "k_shot": args.k,
        "bank": bank_desc,
        "signals": signals,
        "batch_size": args.batch_size,
        "max_new_tokens": task.max_new_tokens,
        "ours_s": t_ours,
        "official_style_s": t_theirs,
        "ratio": t_theirs / t_ours,
        "agreement": agree,
        "threads": torch.get_num_threads(),
        "load_avg": os.getloadavg(),
    }
    print(
        f"scoring {bank_desc}, {args.task}, K={args.k}, signals {signals}: ours {t_ours:.1f} s, official-style "
        f"{t_theirs:.1f} s -> {t_theirs / t_ours:.2f}x  {agree}"
    )
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["diversity", "scoring"])
    p.add_argument("--m", type=int, default=38)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recompute-groups", type=int, default=50, help="groups timed for the per-group recompute")
    p.add_argument("--bank", default="~/.cache/kexpert/banks/smollm2_cpu/smollm2_135m")
    p.add_argument("--random-bank", type=int, default=0, help="use N random LoRAs instead of --bank")
    p.add_argument("--max-adapters", type=int, default=0)
    p.add_argument("--task", default="arc_c")
    p.add_argument("--base-model", default="smollm2_135m")
    p.add_argument("--data-dir", default=os.environ.get("KEXPERT_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--cache-dir", default="~/.cache/kexpert")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=0, help="override the task's generation budget")
    p.add_argument("--signals", default="accuracy,reasoning_ppl")
    p.add_argument("--out", default=str(ROOT / "experiments" / "selection" / "results"))
    args = p.parse_args()
    res = bench_diversity(args) if args.part == "diversity" else bench_scoring(args)
    res["command"] = "python experiments/selection/bench_selection.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{args.part}_{args.task if args.part == 'scoring' else f'm{args.m}_n{args.n}'}.json"
    (out / name).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
