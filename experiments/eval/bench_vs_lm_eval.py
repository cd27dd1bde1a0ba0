"""Log-likelihood scorers side by side: kexpert's ``score_continuations`` against lm-eval's ``HFLM.loglikelihood``.

One process, one model object, the same ``(context, continuation)`` strings (built as ``kexpert.eval.evaluator``
builds them for multiple choice). The items are cut into chunks of about ``--chunk`` requests (whole items: the
options of an item stay together) and the engines alternate chunk by chunk, A-B-B-A, so a change in machine load
hits both alike. Per task it prints the requests, seconds per engine, the time ratio kexpert/lm-eval, per-item
choice agreement, the largest |delta log-likelihood| and the load average at start and end, and writes a Markdown
table and JSON.

    KEXPERT_DATA_DIR=../shared/data python experiments/eval/bench_vs_lm_eval.py --items 200 --threads 1
    python experiments/eval/bench_vs_lm_eval.py --tasks boolq --items 40 --unshared   # also the unshared path

Engines: ``kexpert`` (shared-prefix scoring, the default: packed options), ``kexpert-kv`` (``share_prefix=kv``,
the KV-cache scorer; with ``--kv``), ``kexpert-unshared`` (``share_prefix=False``, the scorer before; with
``--unshared``) and ``lm-eval``. Trailing arguments are Hydra overrides of ``conf/eval.yaml``.
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

from kexpert.eval.scoring import score_continuations

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def build_items(task, spec, tok, n_items: int, seed: int) -> list[list[tuple[str, str]]]:
    """Per item, its ``(context, continuation)`` pairs, as the evaluator builds them."""
    pf = spec.prompt_format
    items = []
    for ex in task.eval_examples(limit=n_items, seed=seed):
        ctx = pf.render(task.prompt(ex, mode="loglikelihood"), tok)
        items.append([(ctx, pf.response(c)) for c in task.continuations(ex)])
    return items


def chunk_items(items: list, chunk: int) -> list[list]:
    """Consecutive whole items, about ``chunk`` requests per chunk."""
    chunks, cur, n = [], [], 0
    for it in items:
        cur.append(it)
        n += len(it)
        if n >= chunk:
            chunks.append(cur)
            cur, n = [], 0
    return chunks + ([cur] if cur else [])


def make_engines(model, tok, batch_size: int, unshared: bool, kv: bool = False) -> dict:
    """Name -> function(list of pairs) -> list of log-likelihoods."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    hflm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device=str(model.device))

    def lm_eval_fn(pairs):
        reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
        return [r[0] for r in hflm.loglikelihood(reqs, disable_tqdm=True)]

    def kexpert_fn(share: bool | str):
        def fn(pairs):
            scores = score_continuations(model, tok, pairs, batch_size=batch_size, share_prefix=share)
            return [s.logprob for s in scores]

        return fn

    engines = {"kexpert": kexpert_fn(True), "lm-eval": lm_eval_fn}
    if unshared:
        engines["kexpert-unshared"] = kexpert_fn(False)
    if kv:
        engines["kexpert-kv"] = kexpert_fn("kv")
    return engines


class StageClock:
    """Where an engine's time goes: forward hooks time the decoder stack and the LM head, and count the
    (padded) tokens and the forwards; the rest of an engine's time is tokenization, softmax and bookkeeping."""

    def __init__(self, model) -> None:
        self.engine = ""
        self.stats: dict[str, dict[str, float]] = {}
        self._t0: dict[str, float] = {}
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        for stage, module in (("decoder", decoder), ("lm_head", model.get_output_embeddings())):
            module.register_forward_pre_hook(self._pre(stage), with_kwargs=True)
            module.register_forward_hook(self._post(stage))

    def _pre(self, stage):
        def hook(module, args, kwargs):
            st = self.stats.setdefault(self.engine, {"forwards": 0, "tokens": 0, "decoder_s": 0.0, "lm_head_s": 0.0})
            if stage == "decoder":
                ids = kwargs.get("input_ids", args[0] if args else None)
                st["forwards"] += 1
                st["tokens"] += int(ids.numel()) if ids is not None else 0
            self._t0[stage] = time.perf_counter()

        return hook

    def _post(self, stage):
        def hook(module, args, output):
            self.stats[self.engine][f"{stage}_s"] += time.perf_counter() - self._t0[stage]

        return hook


def bench_task(name: str, items, engines: dict, chunk: int, clock: StageClock) -> dict:
    """Time every engine on ``items`` chunk by chunk (order alternating) and compare their choices."""
    load_start = os.getloadavg()
    chunks = chunk_items(items, chunk)
    names = list(engines)
    seconds = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    lls: dict[str, list[list[float]]] = {n: [] for n in names}
    clock.stats = {}
    for c, chunk_ in enumerate(chunks):
        pairs = [p for it in chunk_ for p in it]
        for n in names if c % 2 == 0 else names[::-1]:
            clock.engine = n
            t0, c0 = time.perf_counter(), time.process_time()
            flat = engines[n](pairs)
            seconds[n] += time.perf_counter() - t0
            cpu[n] += time.process_time() - c0
            pos = 0
            for it in chunk_:
                lls[n].append(flat[pos : pos + len(it)])
                pos += len(it)
        print(f"  {name} chunk {c + 1}/{len(chunks)}: " + ", ".join(f"{n} {seconds[n]:.1f}s" for n in names))
    ref = lls["lm-eval"]
    picks = {n: [max(range(len(x)), key=x.__getitem__) for x in lls[n]] for n in names}
    res = {
        "task": name,
        "items": len(items),
        "requests": sum(len(it) for it in items),
        "chunks": len(chunks),
        "seconds": {n: round(s, 3) for n, s in seconds.items()},
        "cpu_seconds": {n: round(s, 3) for n, s in cpu.items()},
        "load_avg_start": [round(x, 2) for x in load_start],
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "breakdown": {
            n: {
                "forwards": int(st["forwards"]),
                "padded_tokens": int(st["tokens"]),
                "decoder_s": round(st["decoder_s"], 3),
                "lm_head_s": round(st["lm_head_s"], 3),
                "rest_s": round(seconds[n] - st["decoder_s"] - st["lm_head_s"], 3),
            }
            for n, st in clock.stats.items()
        },
    }
    for n in names:
        if n == "lm-eval":
            continue
        res[f"ratio_{n}"] = round(seconds[n] / seconds["lm-eval"], 3)
        res[f"cpu_ratio_{n}"] = round(cpu[n] / cpu["lm-eval"], 3)
        res[f"agree_{n}"] = sum(a == b for a, b in zip(picks[n], picks["lm-eval"])) / len(items)
        res[f"max_dll_{n}"] = max(abs(a - b) for x, y in zip(lls[n], ref) for a, b in zip(x, y))
    if "kexpert-unshared" in lls:
        res["agree_shared_vs_unshared"] = sum(
            a == b for a, b in zip(picks["kexpert"], picks["kexpert-unshared"])
        ) / len(items)
        res["max_dll_shared_vs_unshared"] = max(
            abs(a - b) for x, y in zip(lls["kexpert"], lls["kexpert-unshared"]) for a, b in zip(x, y)
        )
    return res


def write_markdown(path: Path, results: list[dict], meta: dict) -> None:
    """The results table with the conditions it was measured under."""
    extra = [n for n in ("kexpert-kv", "kexpert-unshared") if any(f"ratio_{n}" in r for r in results)]
    head = (
        "| task | items | requests | kexpert s | lm-eval s | ratio kexpert/lm-eval | CPU-time ratio "
        "| choice agreement | max abs dLL |"
    )
    head += "".join(f" ratio {n}/lm-eval |" for n in extra) + " load avg start -> end |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        row = (
            f"| {r['task']} | {r['items']} | {r['requests']} | {r['seconds']['kexpert']:.1f} | "
            f"{r['seconds']['lm-eval']:.1f} | **{r['ratio_kexpert']:.3f}** | {r['cpu_ratio_kexpert']:.3f} | "
            f"{r['agree_kexpert']:.1%} | "
            f"{r['max_dll_kexpert']:.1e} |"
        )
        row += "".join(f" {r[f'ratio_{n}']:.3f} |" for n in extra)
        row += f" {r['load_avg_start'][0]:.2f} -> {r['load_avg_end'][0]:.2f} |"
        lines.append(row)
    body = "\n".join(lines)
    parts = [
        "| task | engine | forwards | padded tokens | decoder s | LM head s | rest s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for n, b in r["breakdown"].items():
            parts.append(
                f"| {r['task']} | {n} | {b['forwards']} | {b['padded_tokens']} | {b['decoder_s']:.1f} | "
                f"{b['lm_head_s']:.1f} | {b['rest_s']:.1f} |"
            )
    breakdown = "\n".join(parts)
    text = f"""# kexpert's log-likelihood scorer vs lm-eval's

Command: `{meta["command"]}`

Model {meta["model"]} ({meta["dtype"]}, {meta["device"]}), torch threads {meta["threads"]}, batch size
{meta["batch_size"]} for both engines, chunks of about {meta["chunk"]} requests, engines alternated chunk by chunk
(A-B-B-A) in one process on one model object. lm-eval {meta["lm_eval"]}, torch {meta["torch"]}, transformers
{meta["transformers"]}, {meta["machine"]}.

{body}

Ratio = kexpert seconds / lm-eval seconds on the same requests (below 1: kexpert is faster; 0.67 = 1.5x lm-eval's
throughput), wall clock; CPU-time ratio = the same with the process's CPU time (one torch thread), which a busy
machine disturbs less. Choice agreement = items whose highest-log-likelihood option is the same for both engines.
Load avg = the 1-minute load average (`os.getloadavg()`) when the task started and ended: absolute seconds
depend on what else ran on the machine; the ratios compare the engines within one process, alternated chunk by
chunk, so both see the same load.

Where the time goes (forward hooks on the decoder stack and the LM head; "rest" = tokenization, log-softmax,
KV-cache gathering and bookkeeping; padded tokens = tokens through the decoder, padding included):

{breakdown}
"""
    path.write_text(text)


def main() -> None:
    """Parse arguments, run the tasks, print and write the results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["arc_e", "piqa", "boolq"])
    ap.add_argument("--items", type=int, default=200, help="items per task (kexpert's seeded eval subset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=80, help="requests per alternated chunk")
    ap.add_argument("--batch-size", type=int, default=8, help="batch size of both engines")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("KEXPERT_NUM_THREADS", "1")))
    ap.add_argument("--unshared", action="store_true", help="also time kexpert with share_prefix=False")
    ap.add_argument("--kv", action="store_true", help="also time kexpert with share_prefix=kv (the KV-cache scorer)")
    ap.add_argument("--out", type=Path, default=HERE / "bench_vs_lm_eval.md", help="Markdown; JSON beside it")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/eval.yaml")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    results = []
    model = tok = spec = engines = clock = None
    for name in args.tasks:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="eval", overrides=[f"task={name}", *args.overrides])
        task = instantiate(cfg.task)
        if model is None:
            spec = instantiate(cfg.base_model)
            model, tok = spec.load()
            model.eval()
            engines = make_engines(model, tok, args.batch_size, args.unshared, args.kv)
            clock = StageClock(model)
            warm = build_items(task, spec, tok, 4, args.seed + 1)
            for fn in engines.values():
                fn([p for it in warm for p in it])
        items = build_items(task, spec, tok, args.items, args.seed)
        print(f"{name}: {len(items)} items, load average {os.getloadavg()[0]:.2f}")
        res = bench_task(name, items, engines, args.chunk, clock)
        print(json.dumps(res))
        results.append(res)

    meta = {
        "command": "python experiments/eval/bench_vs_lm_eval.py "
        + f"--tasks {' '.join(args.tasks)} --items {args.items} --chunk {args.chunk} "
        + f"--batch-size {args.batch_size} --threads {args.threads}"
        + (" --unshared" if args.unshared else "")
        + (" --kv" if args.kv else ""),
        "model": spec.hf_id or spec.name,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "chunk": args.chunk,
        "lm_eval": _version("lm_eval"),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    write_markdown(args.out, results, meta)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg.replace("_", "-"))


if __name__ == "__main__":
    main()
