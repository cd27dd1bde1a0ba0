"""Signal study (the paper's Fig. 8 claim, docs/method.md §3.2 and §8.2): do K-shot signals predict eval accuracy?

For one task, every bank LoRA gets its K-shot signals (accuracy, vanilla perplexity, reasoning perplexity) and its
accuracy on the task's eval split; the Spearman correlation (``scipy.stats.spearmanr``) of each signal with eval
accuracy over the bank is written as a markdown table together with the command that made it::

    python -m kexpert.pipeline.expert_signal_study task=arc_c bank=smollm2_cpu

Perplexities should correlate negatively (lower perplexity, higher accuracy), K-shot accuracy positively.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from scipy.stats import spearmanr

from kexpert.pipeline.select_experts import build_context
from kexpert.selection.experts.base import SelectionContext
from kexpert.utils.cli import configure_threads, friendly_errors
from kexpert.utils.instantiate import instantiate
from kexpert.utils.io import atomic_write, write_json
from kexpert.utils.logging import get_logger

log = get_logger(__name__)

EXPECTED_SIGN = {"accuracy": "+", "ppl": "-", "reasoning_ppl": "-"}


def correlations(signals: dict[str, np.ndarray], eval_acc: np.ndarray) -> list[dict[str, Any]]:
    """Spearman rho and p-value of each signal with eval accuracy (NaN when a side is constant)."""
    rows = []
    for name, values in signals.items():
        note = ""
        if np.ptp(values) == 0 or np.ptp(eval_acc) == 0:
            rho, p = math.nan, math.nan
            note = (
                "undefined: the signal is the same for every LoRA"
                if np.ptp(values) == 0
                else ("undefined: every LoRA has the same eval accuracy")
            )
        else:
            res = spearmanr(values, eval_acc)
            rho, p = float(res.statistic), float(res.pvalue)
        rows.append(
            {
                "signal": name,
                "spearman_rho": rho,
                "p_value": p,
                "n_loras": len(values),
                "expected_sign": EXPECTED_SIGN.get(name, ""),
                "note": note,
            }
        )
    return rows


def markdown(task: str, command: str, rows: list[dict[str, Any]], per_lora: list[dict[str, Any]], info: str) -> str:
    """The study as a markdown section: the correlation table, the per-LoRA values and the command."""
    out = [
        f"### {task}",
        "",
        f"`{command}`",
        "",
        info,
        "",
        "| K-shot signal | Spearman rho vs eval accuracy | p-value | LoRAs | expected sign |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("note"):
            rho, p = f"{r['note']}", "—"
        else:
            rho, p = f"{r['spearman_rho']:+.3f}", f"{r['p_value']:.3g}"
        out.append(f"| {r['signal']} | {rho} | {p} | {r['n_loras']} | {r['expected_sign']} |")
    sig_names = [r["signal"] for r in rows]
    out += [
        "",
        "| LoRA | eval acc | " + " | ".join(f"K-shot {s}" for s in sig_names) + " |",
        "|---" * (len(sig_names) + 2) + "|",
    ]
    for e in per_lora:
        out.append(
            f"| {e['name']} | {e['eval_accuracy']:.3f} | " + " | ".join(f"{e[s]:.3f}" for s in sig_names) + " |"
        )
    return "\n".join(out) + "\n"


def run_study(cfg: DictConfig, command: str) -> dict[str, Any]:
    """Compute the signals and eval accuracies, write ``<task>.md`` and ``<task>.json`` under ``study.out_dir``."""
    selector = instantiate(cfg.expert_selection, key="expert_selection")
    ctx: SelectionContext
    ctx, spec = build_context(cfg, selector)
    st = cfg.study
    ctx.eval_limit, ctx.eval_seed, ctx.eval_mode = st.eval_limit, int(st.eval_seed), st.eval_mode
    signals = {s: ctx.signal(s) for s in st.signals}
    eval_acc = ctx.eval_accuracy()
    rows = correlations(signals, eval_acc)
    per_lora = [
        {"name": n, "eval_accuracy": float(eval_acc[i]), **{s: float(v[i]) for s, v in signals.items()}}
        for i, n in enumerate(ctx.bank.names())
    ]
    n_eval = len(ctx.signal_details["eval_accuracy"][ctx.bank.names()[0]]["per_example"])
    mode = st.eval_mode or ctx.task.eval_mode
    info = (
        f"Bank `{ctx.bank.name}` ({len(ctx.bank)} LoRAs) on {spec.name}; K={len(ctx.kshot)} (data_seed "
        f"{cfg.data_seed}); K-shot accuracy mode `{selector.signals.accuracy_mode or ctx.task.eval_mode}`; eval "
        f"accuracy on {n_eval} eval items (`{mode}` mode, seed {st.eval_seed})."
    )
    out_dir = Path(st.out_dir)
    text = markdown(ctx.task.name, command, rows, per_lora, info)
    with atomic_write(out_dir / f"{ctx.task.name}.md") as f:
        f.write(text)
    doc = {"task": ctx.task.name, "command": command, "correlations": rows, "per_lora": per_lora, "info": info}
    write_json(out_dir / f"{ctx.task.name}.json", doc)
    print(text)
    return doc


@hydra.main(version_base="1.3", config_path="../../../conf", config_name="select_experts")
@friendly_errors
def main(cfg: DictConfig) -> None:
    """``python -m kexpert.pipeline.expert_signal_study task=... bank=...``."""
    configure_threads()
    run_study(cfg, "python -m kexpert.pipeline.expert_signal_study " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
