"""Greedy-generation benchmark on GSM8K's 4-shot prompts: kexpert's decoder against ``transformers.generate``.

Both decode the same prompts greedily with the task's stop strings and budget; the reference is what
``kexpert.eval.generation`` did before (``model.generate`` on left-padded batches sorted by length, one batch
finishing when its last row does). kexpert's decoder prefills the shared 4-shot prefix once and retires rows as
they finish. The script prints wall time, the speed-up ratio, how many generations are identical, and the GSM8K
accuracy each gets, and writes them as JSON.

    KEXPERT_DATA_DIR=../shared/data python experiments/eval/bench_generation.py --items 24 --batch-size 8 \
        --out experiments/eval/results/bench_generation_cpu.json
    python experiments/eval/bench_generation.py --items 64 base_model.device=cuda     # on a GPU

Trailing arguments are Hydra overrides of ``conf/eval.yaml`` (the base model and task are composed as ``eval.py``
composes them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from kexpert.eval.generation import cut_at_stop, generate_greedy

ROOT = Path(__file__).resolve().parents[2]


@torch.no_grad()
def hf_generate(model, tokenizer, prompts, max_new_tokens, stop, batch_size):
    """The reference: ``model.generate`` per left-padded batch (prompts sorted by length), cut at the stop."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out = [""] * len(prompts)
    tokenizer.padding_side = "left"
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(model.device)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            stop_strings=list(stop),
            tokenizer=tokenizer,
        )
        for row, i in enumerate(idx):
            text = tokenizer.decode(gen[row, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out[i] = cut_at_stop(text, stop)
    return out


def main() -> None:
    """Time both decoders on the same prompts and print the ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=24, help="GSM8K test items (a deterministic subset)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--new-batch-sizes", type=int, nargs="*", default=[], help="extra batch sizes for kexpert only")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's (256 for GSM8K)")
    ap.add_argument("--skip-reference", action="store_true", help="time kexpert's decoder only")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/eval.yaml")
    args = ap.parse_args()

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=["task=gsm8k", *args.overrides])
    task = instantiate(cfg.task)
    spec = instantiate(cfg.base_model)
    model, tok = spec.load()
    model.eval()
    examples = task.eval_examples(limit=args.items, seed=0)
    prompts = [spec.prompt_format.render(task.prompt(ex, mode="generate"), tok) for ex in examples]
    budget = args.max_new_tokens or task.max_new_tokens
    lens = [len(tok(p).input_ids) for p in prompts]
    print(f"{len(prompts)} GSM8K prompts, {min(lens)}-{max(lens)} tokens, budget {budget}, batch {args.batch_size}")

    def acc(gens):
        return sum(task.is_correct(task.extract(g, ex), ex) for g, ex in zip(gens, examples)) / len(examples)

    def timed(fn):
        t0 = time.perf_counter()
        gens = fn()
        return gens, time.perf_counter() - t0

    result = {
        "device": str(model.device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "model": spec.identity,
        "items": len(prompts),
        "prompt_tokens": [min(lens), max(lens)],
        "max_new_tokens": budget,
        "batch_size": args.batch_size,
    }
    new, t_new = timed(
        lambda: generate_greedy(model, tok, prompts, budget, stop=task.stop, batch_size=args.batch_size)
    )
    gen_tokens = sum(len(tok(g, add_special_tokens=False).input_ids) for g in new)
    result["kexpert"] = {"wall_s": round(t_new, 2), "acc": acc(new), "generated_tokens": gen_tokens}
    print(f"kexpert  bs {args.batch_size}: {t_new:7.1f} s  acc {acc(new):.3f}  ({gen_tokens} tokens kept)")
    for bs in args.new_batch_sizes:
        other, t = timed(lambda bs=bs: generate_greedy(model, tok, prompts, budget, stop=task.stop, batch_size=bs))
        same = sum(a == b for a, b in zip(other, new))
        result[f"kexpert_bs{bs}"] = {"wall_s": round(t, 2), "acc": acc(other), "identical_to_bs": same}
        print(f"kexpert  bs {bs}: {t:7.1f} s  acc {acc(other):.3f}  identical to bs {args.batch_size}: {same}")
    if not args.skip_reference:
        ref, t_ref = timed(lambda: hf_generate(model, tok, prompts, budget, task.stop, args.batch_size))
        same = sum(a == b for a, b in zip(ref, new))
        result["transformers_generate"] = {"wall_s": round(t_ref, 2), "acc": acc(ref)}
        result["identical_generations"] = same
        result["speedup"] = round(t_ref / t_new, 2)
        print(f"generate bs {args.batch_size}: {t_ref:7.1f} s  acc {acc(ref):.3f}")
        print(f"speed-up {t_ref / t_new:.2f}x; identical generations {same}/{len(prompts)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
