"""Is the trained routing set by the router's random init? Routing of an untrained LoRA-MoE vs trained runs.

The study's routing tables show the same per-slot token shares (about 0.58 / 0.55 / 0.51 / 0.36 of 2) on every
task, whichever bank LoRAs fill the slots. This probe builds the LoRA-MoE with ``train_moe``'s own
``build_moe_at_init`` (``seed_everything(seed)``, load, inject, router init), does not train it, collects the
fraction of tokens routed to each expert per layer on a task's eval texts (as the pipeline's routing report does), and
compares it, per (layer, slot), with the ``routing.json`` of trained runs:

    python experiments/study_smollm2/routing_init.py --task gsm8k --experts math_cot alpaca_demo mbpp_train sciq \
        --seeds 0 1 --compare outputs/sweeps/main_table_gsm8k/draw1/0_*/routing/routing.json \
        --out experiments/study_smollm2/routing_init

``--experts`` can name LoRAs other than the trained run's, and ``--task`` another task's texts: if the
correlation stays high with other experts and texts but not with another seed, the routing is the init's.
``--routing A.json ...`` compares existing routing files (e.g. two trained runs) instead of building a model.
Prints a markdown table (Pearson r over the 60 x N cells, mean absolute difference, share of layers whose two most
used slots agree, mean of the per-layer r) and writes it, with each untrained ``routing.json``, under ``--out``.
The measure is the package's ``kexpert.models.routing_stats.routing_agreement``; every pipeline run now records it
against its own same-seed untrained MoE (``metrics.json`` -> ``routing.init_agreement``). A trained run's router
seed is ``method_info.router_seed`` in its ``metrics.json`` (``seed`` for ``data_seed=0``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from kexpert.models.routing_stats import collect_routing_stats, eval_texts, routing_agreement
from kexpert.pipeline.stages import eval_task, load_bank
from kexpert.training.train_moe import build_moe_at_init
from kexpert.utils.errors import ConfigError
from kexpert.utils.instantiate import instantiate

ROOT = Path(__file__).resolve().parents[2]


def compose_train_cfg(task: str, overrides: list[str]):
    """The ``train.py`` config for ``task`` (method=rocket), without running Hydra's app."""
    os.environ.setdefault("KEXPERT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    out = f"paths.output_dir={tempfile.gettempdir()}"  # required by the config; the probe writes nothing there
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=[f"task={task}", "method=rocket", out, *overrides])


def untrained_routing(cfg, experts: list[str], seed: int, limit: int) -> dict:
    """Routing fractions of the LoRA-MoE as ``train_moe`` builds it at step 0 (no training)."""
    base_spec = instantiate(cfg.base_model, key="base_model")
    bank = load_bank(cfg.bank, base_spec)
    missing = [e for e in experts if e not in bank]
    if missing:
        raise SystemExit(f"bank {bank.name}: no entries {missing} (it has {', '.join(bank.names())})")
    spec = instantiate(cfg.moe, key="moe")
    model, tok, _, _ = build_moe_at_init(spec, base_spec, [bank[e] for e in experts], seed)
    task = eval_task(instantiate(cfg.task, key="task"), cfg.eval)
    examples = task.eval_examples(limit=limit, seed=cfg.eval.seed)
    texts = eval_texts(task, examples, base_spec.prompt_format, tok)
    stats = collect_routing_stats(model.eval(), tok, texts, expert_names=experts, batch_size=8, progress=True)
    return {"layers": stats.layers, "experts": list(experts), "fractions": stats.fractions, "tokens": stats.tokens}


def compare(a: dict, b: dict) -> dict:
    """Pearson r over (layer, slot), mean absolute difference, agreement of each layer's top-2 slots, per-layer r.

    The measure is the package's :func:`kexpert.models.routing_stats.routing_agreement` (the run report records
    it for every MoE run against its same-seed untrained MoE).
    """
    try:
        return routing_agreement(a, b)
    except ConfigError as e:
        raise SystemExit(str(e)) from e


def _fmt(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.3f}"


def _read_routing(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{p}: expected a routing.json written by the routing report ({e})") from e


def main() -> None:
    """Build, route, compare, write."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="gsm8k")
    ap.add_argument("--experts", nargs="+", help="bank entries, one per slot, in slot order")
    ap.add_argument(
        "--routing", nargs="+", type=Path, help="compare these routing.json files (e.g. other trained runs) instead"
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--limit", type=int, default=100, help="eval items (the pipeline's routing report uses 100)")
    ap.add_argument("--compare", nargs="+", type=Path, required=True, help="routing.json files of trained runs")
    ap.add_argument("--label", default=None, help="name of this probe in the table (default: task and experts)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("overrides", nargs="*", help="train.py config overrides (e.g. moe.top_k=2)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if bool(args.experts) == bool(args.routing):
        raise SystemExit("give either --experts (build an untrained MoE) or --routing (compare routing.json files)")
    trained = {str(p): _read_routing(p) for p in args.compare}
    lines = [
        "| routing | router seed | compared with | Pearson r (layer x slot) | mean abs diff | same top-2 slots "
        "| mean per-layer r |",
        "|---|---|---|---|---|---|---|",
    ]
    sides: list[tuple[str, str, dict]] = []
    if args.routing:
        sides = [(args.label or str(p), "—", _read_routing(p)) for p in args.routing]
    else:
        cfg = compose_train_cfg(args.task, args.overrides)
        label = args.label or f"untrained, {args.task}: {', '.join(args.experts)}"
        for seed in args.seeds:
            routing = untrained_routing(cfg, args.experts, seed, args.limit)
            if args.out:
                d = args.out / f"{args.task}_{'-'.join(args.experts)}_seed{seed}"
                d.mkdir(parents=True, exist_ok=True)
                (d / "routing.json").write_text(json.dumps(routing, indent=1) + "\n")
            sides.append((label, str(seed), routing))
    for label, seed, routing in sides:
        for name, t in trained.items():
            c = compare(routing, t)
            lr = c["per_layer_r_mean"]
            cells = f"{_fmt(c['r'])} | {c['mad']:.3f} | {100 * c['top2']:.0f}% | {_fmt(lr)}"
            lines.append(f"| {label} | {seed} | {name} | {cells} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with (args.out / "comparisons.md").open("a") as fh:
            fh.write(text + "\n\n")


if __name__ == "__main__":
    main()
