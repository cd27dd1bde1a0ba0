"""The bank card: every bank entry and the base model on an eval slice of every task (docs/method.md §2.2).

Like the paper's Tables 9/10.

``python -m kexpert.pipeline.bank_card bank=<name> [base_model=<name>] [card.limits.arc_e=100]`` loads the base model
once, attaches every bank adapter to one peft model, and evaluates each (adapter, task) cell with the shared
evaluator: multiple-choice tasks by log-likelihood (every row of a batch names its adapter, ``__base__`` for
the base model), generation tasks with the adapter set active. Each finished cell is cached under
``<out_dir>/cells/`` (atomic JSON, keyed by the entry's sha256 and the slice), so an interrupted card resumes
and a card can be refreshed while a bank is still building. The card is written as ``bank_card.md`` (accuracy
with 95% Wilson intervals, n, the command, and the delta to the base model), ``bank_card.json`` and a heatmap
``bank_card.png`` of the deltas.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from kexpert.bank.build import BankBuildSpec
from kexpert.bank.spec import validate_bank
from kexpert.eval.evaluator import evaluate
from kexpert.models.factory import BaseModelSpec
from kexpert.pipeline.stages.bank import instantiate_tasks
from kexpert.utils.cli import configure_threads, friendly_errors
from kexpert.utils.errors import ConfigError
from kexpert.utils.instantiate import instantiate
from kexpert.utils.io import atomic_write, read_json, sha1_of, write_json
from kexpert.utils.logging import get_logger

log = get_logger(__name__)
BASE = "__base__"


def attach_bank(model, bank):
    """One peft model holding every bank adapter (named by entry), base weights untouched."""
    from peft import PeftModel

    entries = list(bank.entries)
    if not entries:
        raise ConfigError(f"bank {bank.name}: no entries to evaluate")
    pm = PeftModel.from_pretrained(model, str(entries[0].path), adapter_name=entries[0].name)
    for e in entries[1:]:
        pm.load_adapter(str(e.path), adapter_name=e.name)
    pm.eval()
    return pm


def _cell_key(task, limit: int, seed: int, extra: dict[str, Any]) -> str:
    return sha1_of({"task": task.name, "info": task.info(), "limit": limit, "seed": seed, **extra})


def evaluate_cell(task, pm, tok, prompt_format, examples, adapter: str, card_cfg) -> dict[str, Any]:
    """Metrics of one adapter (or ``__base__``) on one task slice."""
    kwargs = dict(
        batch_size=int(card_cfg.batch_size), max_length=int(card_cfg.max_length), progress=bool(card_cfg.progress)
    )
    if task.eval_mode == "loglikelihood":
        return evaluate(task, pm, tok, prompt_format, examples, adapter_name=adapter, **kwargs).metrics
    if adapter == BASE:
        with pm.disable_adapter():
            return evaluate(task, pm, tok, prompt_format, examples, **kwargs).metrics
    pm.set_adapter(adapter)
    return evaluate(task, pm, tok, prompt_format, examples, **kwargs).metrics


def run_card(cfg: DictConfig, command: str | None = None) -> dict[str, Any]:
    """Evaluate the bank and write the card; returns the card's data."""
    card_cfg = cfg.card
    spec: BaseModelSpec = instantiate(cfg.base_model, key="base_model")
    bank_spec = instantiate(cfg.bank, key="bank")
    if card_cfg.get("allow_partial") and isinstance(bank_spec, BankBuildSpec) and bank_spec.missing():
        bank = bank_spec.existing()  # a bank still building: card the entries that are complete
        if bank is None:
            raise ConfigError(f"bank {bank_spec.name}: nothing built yet; build it with: {bank_spec.build_command()}")
        validate_bank(bank, spec)
        log.warning("bank %s: partial card, %d of %d entries built", bank.name, len(bank), len(bank_spec.datasets))
    else:
        bank = bank_spec.load(spec)
    tasks = {
        n: t
        for n, t in instantiate_tasks(cfg.get("tasks"), "tasks").items()
        if int(card_cfg.limits.get(n, 0) or 0) > 0
    }
    skipped = [n for n in cfg.tasks if n not in tasks]
    if not tasks:
        raise ConfigError("card.limits: every task has limit 0; nothing to evaluate")
    out_dir = Path(card_cfg.out_dir).expanduser()
    cells_dir = out_dir / "cells" / f"{bank.name}__{spec.name}"
    model, tok = spec.load()
    pm = attach_bank(model, bank)
    columns = [BASE] + bank.names()
    shas = {BASE: spec.identity, **{e.name: e.sha256 for e in bank.entries}}
    results: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in columns}
    t0 = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=len(columns) * len(tasks), desc="bank card", disable=not card_cfg.progress)
    for tname, task in tasks.items():
        if tname == "gsm8k" and card_cfg.get("gsm8k_max_new_tokens"):
            task.max_new_tokens = int(card_cfg.gsm8k_max_new_tokens)
        limit = int(card_cfg.limits[tname])
        examples = task.eval_examples(limit=limit, seed=int(card_cfg.seed))
        key = _cell_key(task, limit, int(card_cfg.seed), {"max_new_tokens": task.max_new_tokens})
        for col in columns:
            path = cells_dir / tname / f"{col}__{sha1_of([shas[col], key])}.json"
            if path.exists():
                results[col][tname] = read_json(path)
            else:
                metrics = evaluate_cell(task, pm, tok, spec.prompt_format, examples, col, card_cfg)
                write_json(path, metrics)
                results[col][tname] = metrics
            bar.update(1)
            bar.set_postfix_str(f"{tname}/{col}")
    bar.close()
    data = {
        "bank": bank.name,
        "base_model": spec.identity,
        "bank_root": str(bank.root),
        "command": command or "python -m kexpert.pipeline.bank_card " + " ".join(sys.argv[1:]),
        "tasks": {
            n: {
                "n": len(tasks[n].eval_examples(limit=int(card_cfg.limits[n]), seed=int(card_cfg.seed))),
                "metric": tasks[n].primary_metric,
                "mode": tasks[n].eval_mode,
                "info": tasks[n].info(),
            }
            for n in tasks
        },
        "skipped_tasks": skipped,
        "entries": {
            e.name: {
                "source": e.source.get("dataset"),
                "rows": e.source.get("rows"),
                "train_loss": e.train_loss,
                "expert_lora_for": e.expert_lora_for,
            }
            for e in bank.entries
        },
        "results": results,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cells_eval_s": round(sum(float(m.get("eval_wall_s", 0.0)) for r in results.values() for m in r.values()), 1),
        "build": {k: bank.meta.get(k) for k in ("build_wall_s", "lora", "train")},
    }
    write_json(out_dir / "bank_card.json", data)
    with atomic_write(out_dir / "bank_card.md") as f:
        f.write(render_markdown(data, card_cfg))
    render_heatmap(data, out_dir / "bank_card.png")
    log.info("bank card -> %s (%.0f s)", out_dir / "bank_card.md", data["wall_s"])
    return data


def _score(metrics: dict[str, Any]) -> tuple[float, float, float]:
    key = metrics["primary_metric"]
    lo, hi = metrics[f"{key}_ci95"]
    return float(metrics[key]), float(lo), float(hi)


def render_markdown(data: dict[str, Any], card_cfg=None) -> str:
    """The card as a markdown table: one row per LoRA (plus Base), one column per task, acc [95% CI]."""
    tasks = list(data["tasks"])
    res = data["results"]
    lines = [
        f"# Bank card: {data['bank']} on {data['base_model']}",
        "",
        f"Command: `{data['command']}`",
        "",
        "Each cell: the task's primary metric in % with its 95% Wilson interval; Δ is the difference to the base "
        "model on the same items (**bold**: the LoRA's interval lies entirely above the base model's score).",
        "",
        "| task | n | metric | mode |",
        "|---|---|---|---|",
    ]
    for t in tasks:
        info = data["tasks"][t]
        lines.append(f"| {t} | {info['n']} | {info['metric']} | {info['mode']} |")
    if data.get("skipped_tasks"):
        lines += ["", f"Skipped tasks (limit 0 in card.limits): {', '.join(data['skipped_tasks'])}."]
    lines += [
        "",
        "| LoRA | train rows | " + " | ".join(tasks) + " | mean Δ |",
        "|---|---|" + "---|" * len(tasks) + "---|",
    ]
    base = {t: _score(res[BASE][t])[0] for t in tasks}
    for name in [BASE] + [n for n in res if n != BASE]:
        cells, deltas = [], []
        for t in tasks:
            s, lo, hi = _score(res[name][t])
            if name == BASE:
                cells.append(f"{100 * s:.1f} [{100 * lo:.0f}, {100 * hi:.0f}]")
            else:
                d = s - base[t]
                deltas.append(d)
                txt = f"{100 * s:.1f} [{100 * lo:.0f}, {100 * hi:.0f}] ({100 * d:+.1f})"
                cells.append(f"**{txt}**" if lo > base[t] else txt)
        ent = data["entries"].get(name, {})
        label = (
            "Base"
            if name == BASE
            else name + (f" (expert: {ent['expert_lora_for']})" if ent.get("expert_lora_for") else "")
        )
        mean_d = f"{100 * sum(deltas) / len(deltas):+.1f}" if deltas else ""
        lines.append(f"| {label} | {ent.get('rows') or ''} | " + " | ".join(cells) + f" | {mean_d} |")
    lines += [
        "",
        f"Evaluation time, summed over the {sum(len(r) for r in res.values())} cells: "
        f"{data.get('cells_eval_s', 0.0):.0f} s (this run: {data['wall_s']:.0f} s; cells cached under cells/ "
        "are not recomputed).",
    ]
    build = data.get("build") or {}
    if build.get("build_wall_s") is not None:
        lines.append(f"Bank build wall time (sum of entries): {build['build_wall_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def render_heatmap(data: dict[str, Any], path: Path) -> None:
    """PNG heatmap of score minus base score (rows: LoRAs, columns: tasks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(data["tasks"])
    res = data["results"]
    names = [n for n in res if n != BASE]
    base = np.array([_score(res[BASE][t])[0] for t in tasks])
    delta = np.array([[_score(res[n][t])[0] for t in tasks] for n in names]) - base
    lim = max(float(np.abs(delta).max()) * 100, 1.0)
    fig, ax = plt.subplots(figsize=(1.3 * len(tasks) + 3, 0.38 * len(names) + 1.8))
    im = ax.imshow(100 * delta, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(tasks)), [f"{t}\n(base {100 * b:.0f}%)" for t, b in zip(tasks, base)])
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(tasks)):
            ax.text(j, i, f"{100 * delta[i, j]:+.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy − base (points)")
    n_txt = ", ".join(f"{t} n={data['tasks'][t]['n']}" for t in tasks)
    ax.set_title(f"{data['bank']}: LoRA − base ({n_txt})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="bank")
@friendly_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point: ``python -m kexpert.pipeline.bank_card bank=<name>``."""
    configure_threads()
    run_card(cfg)


if __name__ == "__main__":
    main()
