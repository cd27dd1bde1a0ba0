"""Measure the peak memory of LoRA-MoE training steps on CPU, for test_plan_memory.py (one process per measurement).

Usage: python plan_measure_script.py ARCH LAYERS MICRO_BATCH SEQ_LEN STEPS CHECKPOINTING OUT_JSON [k=v overrides]

The model is ``ARCH``'s real config (kexpert.models.tiny.ARCHITECTURES) with ``LAYERS`` decoder layers and random
weights (fp32), the paper's LoRA-MoE (N=4, k=2, rank-16 experts on q_proj/v_proj, dropout 0.05, fp32 experts
and routers), AdamW over the experts and routers, and ``STEPS`` optimizer steps on a full ``MICRO_BATCH x SEQ_LEN``
batch (every token has a label, as a batch cut at the cutoff). The second step is the steady state the planner
estimates: weights, gradients and AdamW moments all live while the activations are saved.

How the peak is measured: the peak resident set size of this process (``getrusage().ru_maxrss``) minus its RSS
just before the model is built, after a warm-up step on a miniature of the same architecture has loaded every
module and kernel. The caller sets ``MALLOC_MMAP_THRESHOLD_=65536``, so glibc serves every buffer of
64 KiB or more by its own ``mmap`` and returns it to the system on ``free`` (torch's CPU allocator does not cache):
RSS then follows the bytes of live tensors, as ``torch.cuda.max_memory_allocated`` does on a GPU, plus a few MB
of small objects.
"""

import json
import resource
import sys
import time

import torch

from kexpert.models.inject import LoRAMoESpec, inject_lora_moe, mark_only_moe_trainable
from kexpert.models.tiny import build_random_model


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def build(arch: str, layers: int, ckpt: bool, **overrides):
    model = build_random_model(arch, num_hidden_layers=layers, **overrides)
    spec = LoRAMoESpec(num_experts=4, top_k=2, lora_dropout=0.05, expert_init="random", random_rank=16)
    inject_lora_moe(model, spec, None, ["q_proj", "v_proj"])
    counts = mark_only_moe_trainable(model)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=1e-4)
    return model, opt, counts


def train(model, opt, ids, steps: int) -> float:
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def main() -> None:
    arch, layers, b, s, steps, ckpt, out = sys.argv[1:8]
    overrides = {k: int(v) for k, v in (a.split("=", 1) for a in sys.argv[8:])}
    layers, b, s, steps, ckpt = int(layers), int(b), int(s), int(steps), ckpt in ("1", "true", "True")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    mini = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}
    train(*build(arch, 1, ckpt, vocab_size=512, **mini)[:2], torch.randint(3, 259, (2, 16)), 2)
    base = rss_bytes()
    model, opt, counts = build(arch, layers, ckpt, **overrides)
    built = rss_bytes()
    loss = train(model, opt, torch.randint(3, 259, (b, s)), steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "arch": arch,
        "layers": layers,
        "micro_batch": b,
        "seq_len": s,
        "steps": steps,
        "checkpointing": ckpt,
        "overrides": overrides,
        "params": counts,
        "rss_before_model": base,
        "model_bytes_measured": built - base,
        "peak_bytes": peak - base,
        "loss": loss,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
