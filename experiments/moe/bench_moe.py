"""LoRA-MoE speed and memory benchmark (issue 6): SmolLM2-135M, N=4 experts, top-2, rank 16, q_proj + v_proj.

Variants, each measured in its own subprocess so that peak RSS (``ru_maxrss``) is that variant's alone:

* ``lora``         a single peft LoRA of the same rank (the reference),
* ``moe_dense``    kexpert's LoRAMoELinear, dense batched path,
* ``moe_grouped``  kexpert's LoRAMoELinear, sorted/grouped path,
* ``moe_loop``     a per-expert Python loop written like the official ``MMOELoraLinear.forward`` (separate
                   ``nn.Linear`` per expert, one-hot masks, ``torch.where`` + ``.tolist()`` per expert, dropout
                   per expert call), for comparison only.

Each child does ``--warmup`` + ``--steps`` AdamW training steps on ``--batch x --seq`` tokens (fp32, response =
all tokens), then greedy generation with the KV cache (batch 1, 64 new tokens) and reports step times, peak RSS and
tokens/s. ``layer`` mode times one 7B-shaped layer (4096 x 4096, bf16 on a GPU).

    python experiments/moe/bench_moe.py all --rounds 2 --out experiments/moe/results/bench_cpu/bench_cpu.json
    python experiments/moe/bench_moe.py interleaved --rounds 4 --new-tokens 32 \
        --out experiments/moe/results/bench_cpu/bench_cpu_interleaved.json
    python experiments/moe/bench_moe.py gen --rounds 2 --new-tokens 32 --gen-repeats 2 \
        --out experiments/moe/results/gen_cpu.json
    python experiments/moe/bench_moe.py layer --device cuda --dtype bfloat16     # needs a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("lora", "moe_dense", "moe_grouped", "moe_loop")
PROMPT = "Question: Which of these is a renewable source of energy?\nA. coal\nB. wind\nC. oil\nD. natural gas\nAnswer:"


class OfficialLoopMoELinear(nn.Module):
    """The official MMOELoraLinear forward pattern (docs/method.md §4 [C]), re-written for timing only."""

    def __init__(self, moe_layer, lora_dropout: float = 0.05) -> None:
        super().__init__()
        e = moe_layer.experts
        self.base = moe_layer.base
        self.top_k = moe_layer.router.top_k
        self.n = e.num_experts
        self.gate = moe_layer.router.gate
        self.lora_A = nn.ModuleList(nn.Linear(e.in_features, r, bias=False) for r in e.rank_list)
        self.lora_B = nn.ModuleList(nn.Linear(r, e.out_features, bias=False) for r in e.rank_list)
        with torch.no_grad():
            for i, r in enumerate(e.rank_list):
                self.lora_A[i].weight.copy_(e.lora_A[i, :r])
                self.lora_B[i].weight.copy_(e.lora_B[i, :, :r])
        self.dropout = nn.Dropout(lora_dropout)

    def forward(self, x):
        result = self.base(x)
        b, t, d = x.shape
        h = x.view(-1, d)
        routing = torch.softmax(self.gate(h), dim=1, dtype=torch.float)
        routing, selected = torch.topk(routing, self.top_k, dim=-1)
        routing /= routing.sum(dim=-1, keepdim=True)
        routing = routing.to(h.dtype)
        final = torch.zeros((b * t, result.shape[-1]), dtype=h.dtype, device=h.device)
        mask = torch.nn.functional.one_hot(selected, num_classes=self.n).permute(2, 1, 0)
        for i in range(self.n):
            idx, top_x = torch.where(mask[i])
            if top_x.shape[0] == 0:
                continue
            top_x_list, idx_list = top_x.tolist(), idx.tolist()
            cur = h[None, top_x_list].reshape(-1, d)
            out = self.lora_B[i](self.lora_A[i](self.dropout(cur))) * routing[top_x_list, idx_list, None]
            final.index_add_(0, top_x, out.to(h.dtype))
        return result + final.view(b, t, -1)


def build(variant: str, rank: int, experts: int, top_k: int):
    """The SmolLM2 model with the variant's adapters, trainable flags set."""
    from kexpert.models.factory import BaseModelSpec
    from kexpert.models.inject import LoRAMoESpec, inject_lora_moe, mark_only_moe_trainable, moe_layers

    spec = BaseModelSpec(
        name="smollm2_135m",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        offline_fallback="smollm2_gguf",
        dtype="float32",
        device="cpu",
    )
    model, tok = spec.load()
    if variant == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
        )
        return model, tok
    compute = "grouped" if variant == "moe_grouped" else "dense"
    moe = LoRAMoESpec(
        num_experts=experts, top_k=top_k, compute=compute, expert_init="random", random_rank=rank, random_alpha=rank
    )
    inject_lora_moe(model, moe, None, default_target_modules=["q_proj", "v_proj"])
    with torch.no_grad():  # non-zero B so every path does real work
        for layer in moe_layers(model).values():
            layer.experts.lora_B.normal_(0, 0.01)
    if variant == "moe_loop":
        for path, layer in moe_layers(model).items():
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child, OfficialLoopMoELinear(layer))
        for p in model.parameters():
            p.requires_grad_(False)
        for m in model.modules():
            if isinstance(m, OfficialLoopMoELinear):
                for p in [*m.lora_A.parameters(), *m.lora_B.parameters(), m.gate.weight]:
                    p.requires_grad_(True)
        return model, tok
    mark_only_moe_trainable(model, train_experts=True)
    return model, tok


def timed_generate(model, tok, enc, new_tokens: int) -> float:
    """Seconds for one greedy generation of exactly ``new_tokens`` tokens (KV cache on)."""
    t = time.perf_counter()
    out = model.generate(
        **enc,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=tok.pad_token_id,
    )
    wall = time.perf_counter() - t
    assert out.shape[1] - enc["input_ids"].shape[1] == new_tokens
    return wall


def child(args) -> dict:
    """Train steps + generation for one variant (run in a fresh process)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_load = time.perf_counter()
    model, tok = build(args.variant, args.rank, args.experts, args.top_k)
    load_s = time.perf_counter() - t_load
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tok), (args.batch, args.seq), generator=g)
    model.train()
    times = []
    for step in range(args.warmup + args.steps):
        t = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    train_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    model.eval()
    enc = tok([PROMPT], return_tensors="pt")
    gen_times = []
    with torch.no_grad():
        for _ in range(args.gen_repeats):
            gen_times.append(timed_generate(model, tok, enc, args.new_tokens))
    return {
        "variant": args.variant,
        "trainable_params": sum(p.numel() for p in params),
        "load_s": round(load_s, 2),
        "step_s": [round(x, 3) for x in times],
        "step_s_median": round(statistics.median(times), 3),
        "step_s_min": round(min(times), 3),
        "train_tok_per_s": round(args.batch * args.seq / min(times), 1),
        "peak_rss_mib": round(train_rss, 1),
        "gen_tok_per_s": round(args.new_tokens / min(gen_times), 2),
        "gen_s": [round(x, 3) for x in gen_times],
        "loadavg_end": os.getloadavg(),
    }


def interleaved(args) -> None:
    """Every variant in one process, one training step (then one generation) each, round-robin: on a shared CPU
    whose load drifts, the variants see the same contention and the per-round ratios are paired."""
    torch.manual_seed(0)
    models = {v: build(v, args.rank, args.experts, args.top_k) for v in args.variants}
    tok = next(iter(models.values()))[1]
    opts = {
        v: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for v, (m, _) in models.items()
    }
    ids = torch.randint(3, len(tok), (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    enc = tok([PROMPT], return_tensors="pt")
    steps: dict[str, list[float]] = {v: [] for v in args.variants}
    gens: dict[str, dict[int, list[float]]] = {v: {1: [], 2: []} for v in args.variants}
    for rnd in range(args.warmup + args.rounds):
        for v, (model, _) in models.items():
            torch.set_num_threads(args.threads)
            model.train()
            t = time.perf_counter()
            model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
            opts[v].step()
            opts[v].zero_grad(set_to_none=True)
            if rnd >= args.warmup:
                steps[v].append(time.perf_counter() - t)
            model.eval()
            with torch.no_grad():
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    wall = timed_generate(model, tok, enc, args.new_tokens)
                    if rnd >= args.warmup:
                        gens[v][threads].append(args.new_tokens / wall)
        print(
            json.dumps(
                {
                    "round": rnd,
                    "loadavg": os.getloadavg(),
                    "step_s": {v: round(x[-1], 2) for v, x in steps.items() if x},
                }
            ),
            flush=True,
        )
    ref = "lora"
    summary = {}
    for v in args.variants:
        paired = [a / b for a, b in zip(steps[v], steps[ref])]
        summary[v] = {
            "step_s_median": round(statistics.median(steps[v]), 2),
            "step_s": [round(x, 2) for x in steps[v]],
            "time_vs_lora_paired_median": round(statistics.median(paired), 3),
            "time_vs_lora_paired": [round(x, 3) for x in paired],
            "gen_tok_per_s_t1_median": round(statistics.median(gens[v][1]), 2),
            "gen_tok_per_s_t2_median": round(statistics.median(gens[v][2]), 2),
            "gen_vs_lora_t1": round(statistics.median(gens[v][1]) / statistics.median(gens[ref][1]), 3),
            "gen_vs_lora_t2": round(statistics.median(gens[v][2]) / statistics.median(gens[ref][2]), 3),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "meta": {
                    "batch": args.batch,
                    "seq": args.seq,
                    "threads": args.threads,
                    "rounds": args.rounds,
                    "new_tokens": args.new_tokens,
                },
                "summary": summary,
            },
            indent=2,
        )
    )
    os.replace(tmp, out)
    print(json.dumps(summary, indent=2))


def gen_child(args) -> dict:
    """Greedy generation only (KV cache, batch 1) at 1 and 2 threads: decoding is op-overhead bound, and with 2
    threads on a busy shared CPU every small op can stall on the OpenMP barrier."""
    model, tok = build(args.variant, args.rank, args.experts, args.top_k)
    model.eval()
    enc = tok([PROMPT], return_tensors="pt")
    out = {"variant": args.variant}
    with torch.no_grad():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            best = 0.0
            for _ in range(args.gen_repeats):
                best = max(best, args.new_tokens / timed_generate(model, tok, enc, args.new_tokens))
            out[f"gen_tok_per_s_t{threads}"] = round(best, 2)
    out["loadavg_end"] = os.getloadavg()
    return out


def run_gen(args) -> None:
    """``gen`` mode: every variant's decoding speed, interleaved over ``--rounds``."""
    rows = []
    for rnd in range(args.rounds):
        for variant in args.variants:
            cmd = [sys.executable, __file__, "gen-child", "--variant", variant, *common_flags(args)]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if res.returncode != 0:
                raise SystemExit(f"{variant} failed:\n{res.stderr[-3000:]}")
            row = {**json.loads(res.stdout.strip().splitlines()[-1]), "round": rnd}
            print(json.dumps(row), flush=True)
            rows.append(row)
    best = {
        v: {k: max(r[k] for r in rows if r["variant"] == v) for k in ("gen_tok_per_s_t1", "gen_tok_per_s_t2")}
        for v in args.variants
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"best": best, "runs": rows}, indent=2))
    os.replace(tmp, out)
    print(json.dumps(best, indent=2))


def run_all(args) -> None:
    """Every variant, ``--rounds`` times, interleaved; a JSON with all runs and a markdown summary."""
    runs = []
    for rnd in range(args.rounds):
        for variant in args.variants:
            cmd = [sys.executable, __file__, "child", "--variant", variant, *common_flags(args)]
            t = time.perf_counter()
            load_before = os.getloadavg()
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if res.returncode != 0:
                raise SystemExit(f"{variant} failed:\n{res.stderr[-3000:]}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row.update(round=rnd, wall_s=round(time.perf_counter() - t, 1), loadavg_start=load_before)
            print(json.dumps(row), flush=True)
            runs.append(row)
    summary = summarise(runs, args.variants)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "shape": {
            "batch": args.batch,
            "seq": args.seq,
            "rank": args.rank,
            "experts": args.experts,
            "top_k": args.top_k,
        },
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2))
    os.replace(tmp, out)
    print(markdown(summary))


def summarise(runs: list[dict], variants) -> dict:
    best = {}
    for v in variants:
        rows = [r for r in runs if r["variant"] == v]
        best[v] = {
            "step_s": min(r["step_s_min"] for r in rows),
            "step_s_median": statistics.median(x for r in rows for x in r["step_s"]),
            "peak_rss_mib": min(r["peak_rss_mib"] for r in rows),
            "gen_tok_per_s": max(r["gen_tok_per_s"] for r in rows),
            "trainable_params": rows[0]["trainable_params"],
        }
    ref = best.get("lora")
    if ref:
        for v in best.values():
            v["time_vs_lora"] = round(v["step_s"] / ref["step_s"], 3)
            v["median_time_vs_lora"] = round(v["step_s_median"] / ref["step_s_median"], 3)
            v["mem_vs_lora"] = round(v["peak_rss_mib"] / ref["peak_rss_mib"], 3)
            v["gen_vs_lora"] = round(v["gen_tok_per_s"] / ref["gen_tok_per_s"], 3)
    return best


def markdown(summary: dict) -> str:
    lines = [
        "| variant | trainable | step s (best) | step s (median) | x LoRA (best/median) | peak RSS MiB | x LoRA | "
        "gen tok/s | x LoRA |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, s in summary.items():
        lines.append(
            f"| {v} | {s['trainable_params']:,} | {s['step_s']:.2f} | {s['step_s_median']:.2f} | "
            f"{s.get('time_vs_lora', 1):.2f} / {s.get('median_time_vs_lora', 1):.2f} | "
            f"{s['peak_rss_mib']:.0f} | {s.get('mem_vs_lora', 1):.2f} | {s['gen_tok_per_s']:.1f} | "
            f"{s.get('gen_vs_lora', 1):.2f} |"
        )
    return "\n".join(lines)


def layer_bench(args) -> None:
    """One 7B-shaped layer (d=4096, N*r over 4 experts): forward+backward time and peak memory vs one LoRA."""
    from peft import LoraConfig, get_peft_model

    from kexpert.models.inject import LoRAMoESpec, inject_lora_moe, mark_only_moe_trainable

    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    results = {}
    for variant in ("lora", "moe_dense", "moe_grouped"):
        net = nn.Sequential()
        net.add_module("q_proj", nn.Linear(args.d, args.d, bias=False))
        net = net.to(dev, dtype)
        if variant == "lora":
            net = get_peft_model(net, LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=["q_proj"]))
        else:
            spec = LoRAMoESpec(
                num_experts=args.experts,
                top_k=args.top_k,
                expert_init="random",
                random_rank=args.rank,
                random_alpha=args.rank,
                compute="grouped" if variant == "moe_grouped" else "dense",
            )
            inject_lora_moe(net, spec, None, default_target_modules=["q_proj"])
            mark_only_moe_trainable(net)
        x = torch.randn(args.batch, args.seq, args.d, device=dev, dtype=dtype)
        times = []
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for i in range(args.warmup + args.steps):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
                net(x).float().pow(2).mean().backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
        results[variant] = {"ms": round(1000 * min(times), 3), "peak_mib": peak}
    for v in results.values():
        v["time_vs_lora"] = round(v["ms"] / results["lora"]["ms"], 3)
        if v["peak_mib"] is not None:
            v["mem_vs_lora"] = round(v["peak_mib"] / results["lora"]["peak_mib"], 3)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor()
    print(
        json.dumps(
            {
                "device": name,
                "dtype": args.dtype,
                "d": args.d,
                "batch": args.batch,
                "seq": args.seq,
                "results": results,
            },
            indent=2,
        )
    )


def common_flags(args) -> list[str]:
    return [
        "--rank",
        str(args.rank),
        "--experts",
        str(args.experts),
        "--top-k",
        str(args.top_k),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--new-tokens",
        str(args.new_tokens),
        "--gen-repeats",
        str(args.gen_repeats),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["all", "child", "interleaved", "gen", "gen-child", "layer"])
    p.add_argument("--variant", choices=VARIANTS)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--gen-repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "experiments" / "moe" / "results" / "bench_cpu" / "bench_cpu.json"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--d", type=int, default=4096)
    args = p.parse_args()
    if args.mode == "child":
        print(json.dumps(child(args)))
    elif args.mode == "interleaved":
        interleaved(args)
    elif args.mode == "gen-child":
        print(json.dumps(gen_child(args)))
    elif args.mode == "gen":
        run_gen(args)
    elif args.mode == "all":
        run_all(args)
    else:
        layer_bench(args)


if __name__ == "__main__":
    main()
