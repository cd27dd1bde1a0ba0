"""Expert activation analysis: the fraction of tokens routed to each expert in each layer (docs/method.md §7, Fig. 7).

For every real (non-padding) token of an evaluation set and every MoE layer, each expert in the token's top-k
counts 1 and the others 0; the table reports that fraction per (layer, expert), so a row sums to k. The mean
gate weight per expert is reported too. Output: CSV, a markdown table, JSON and a heatmap PNG (matplotlib, Agg).

:func:`routing_agreement` compares two such tables (e.g. a trained MoE and the same-seed untrained one, as the run
report does): Pearson r over all (layer, expert) cells, r within each layer, the mean absolute difference and the
share of layers whose two most used experts agree. r near 1 with the untrained MoE means training did not move the
routing off its init.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kexpert.data.prompts import PromptFormat
from kexpert.data.records import Example
from kexpert.models.components.router_init import forward_tokens
from kexpert.models.inject import moe_layers
from kexpert.utils.errors import ConfigError
from kexpert.utils.io import atomic_write, write_json


def short_layer_name(path: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``L3.q_proj`` (metric names and plot labels)."""
    m = re.search(r"\.(\d+)\.", path)
    return f"L{m.group(1)}.{path.rsplit('.', 1)[-1]}" if m else path


@dataclass
class RoutingStats:
    """Routing fractions over an evaluation set.

    Attributes:
        layers: MoE module paths, in model order.
        fractions: ``fractions[l][i]``: share of tokens whose top-k includes expert i at layer l.
        mean_weights: ``mean_weights[l][i]``: mean gate weight of expert i at layer l (0 outside the top-k).
        tokens: Tokens counted.
        top_k: k.
        expert_names: One name per expert.
    """

    layers: list[str]
    fractions: list[list[float]]
    mean_weights: list[list[float]]
    tokens: int
    top_k: int
    expert_names: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, float | str]]:
        """One row per (layer, expert)."""
        out = []
        for l_idx, layer in enumerate(self.layers):
            for i, name in enumerate(self.expert_names):
                out.append(
                    {
                        "layer": layer,
                        "expert": name,
                        "fraction": round(self.fractions[l_idx][i], 6),
                        "mean_weight": round(self.mean_weights[l_idx][i], 6),
                    }
                )
        return out

    def to_markdown(self) -> str:
        """Layers as rows, experts as columns (fraction of tokens routed)."""
        head = "| layer | " + " | ".join(self.expert_names) + " |"
        sep = "|---|" + "---|" * len(self.expert_names)
        body = [
            f"| {short_layer_name(p)} | " + " | ".join(f"{v:.3f}" for v in fr) + " |"
            for p, fr in zip(self.layers, self.fractions)
        ]
        mean = [sum(col) / len(self.fractions) for col in zip(*self.fractions)]
        body.append("| **mean** | " + " | ".join(f"**{v:.3f}**" for v in mean) + " |")
        return "\n".join([head, sep, *body]) + "\n"


def _fractions(routing: RoutingStats | Mapping) -> tuple[list[str], list[list[float]]]:
    if isinstance(routing, RoutingStats):
        return routing.layers, routing.fractions
    return list(routing["layers"]), routing["fractions"]


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Pearson r of two 1-d tensors; ``None`` when either is constant (r undefined)."""
    if x.numel() < 2 or float(x.std()) == 0.0 or float(y.std()) == 0.0:
        return None
    r = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    return None if math.isnan(r) else r


def routing_agreement(a: RoutingStats | Mapping, b: RoutingStats | Mapping) -> dict[str, object]:
    """How alike two routing tables are, over the layers of ``a`` (``b`` must cover them, with as many experts).

    ``a`` and ``b`` are :class:`RoutingStats` or ``routing.json`` documents (``layers``, ``fractions``).

    Returns:
        ``{"r": Pearson r over every (layer, expert) cell, "mad": mean absolute difference, "top2": share of layers
        whose two most used experts are the same, "per_layer_r": {short layer name: r over that layer's experts
        or None where a layer's fractions are constant}, "per_layer_r_mean": mean of the defined per-layer r}``.

    Raises:
        ConfigError: a layer of ``a`` missing from ``b``, or different expert counts.
    """
    layers, fa = _fractions(a)
    layers_b, fb = _fractions(b)
    idx = {p: i for i, p in enumerate(layers_b)}
    missing = [p for p in layers if p not in idx]
    if missing:
        raise ConfigError(f"routing tables cover different layers (e.g. {missing[0]})")
    x = torch.tensor(fa, dtype=torch.float64)
    y = torch.tensor([fb[idx[p]] for p in layers], dtype=torch.float64)
    if x.shape != y.shape:
        raise ConfigError(f"routing tables have {x.shape[1]} and {y.shape[1]} experts")
    k = min(2, x.shape[1])
    top = [set(u.topk(k).indices.tolist()) == set(v.topk(k).indices.tolist()) for u, v in zip(x, y)]
    per_layer = {short_layer_name(p): _pearson(u, v) for p, u, v in zip(layers, x, y)}
    defined = [r for r in per_layer.values() if r is not None]
    return {
        "r": _pearson(x.flatten(), y.flatten()),
        "mad": float((x - y).abs().mean()),
        "top2": sum(top) / len(top),
        "per_layer_r": per_layer,
        "per_layer_r_mean": sum(defined) / len(defined) if defined else None,
    }


def eval_texts(task, examples: Sequence[Example], prompt_format: PromptFormat, tokenizer) -> list[str]:
    """Prompt + gold target of each example, as the model sees them (the routing-analysis input)."""
    return [
        prompt_format.render(task.prompt(ex), tokenizer) + prompt_format.response(task.target(ex)) for ex in examples
    ]


@torch.no_grad()
def collect_routing_stats(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    expert_names: Sequence[str] | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
    progress: bool = True,
) -> RoutingStats:
    """Run ``texts`` through the model and count routings per layer and expert.

    Raises:
        ConfigError: no MoE layers or no texts.
    """
    layers = moe_layers(model)
    if not layers or not texts:
        raise ConfigError("routing stats need a LoRA-MoE model and at least one text")
    first = next(iter(layers.values()))
    n, k = first.experts.num_experts, first.router.top_k
    counts = {p: torch.zeros(n, dtype=torch.float64) for p in layers}
    weights = {p: torch.zeros(n, dtype=torch.float64) for p in layers}
    mask_box: dict[str, torch.Tensor] = {}

    def make_hook(p: str):
        def hook(module, args, output):
            route = module.last_routing
            m = mask_box["mask"]  # (B*T,)
            counts[p] += torch.bincount(route.indices[m].reshape(-1), minlength=n).double().cpu()
            weights[p] += route.dense_weights()[m].sum(dim=0).double().cpu()

        return hook

    previous = {p: layer.record_routing for p, layer in layers.items()}
    handles = [layer.register_forward_hook(make_hook(p)) for p, layer in layers.items()]
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    tokens = 0
    try:
        for layer in layers.values():
            layer.record_routing = True
        for s in tqdm(range(0, len(texts), batch_size), desc="routing stats", disable=not progress):
            enc = tokenizer(
                list(texts[s : s + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            )
            mask_box["mask"] = enc["attention_mask"].reshape(-1).bool().to(next(model.parameters()).device)
            tokens += int(enc["attention_mask"].sum())
            forward_tokens(model, enc)
    finally:
        for h in handles:
            h.remove()
        for p, layer in layers.items():
            layer.record_routing = previous[p]
        tokenizer.padding_side = old_side
        model.train(was_training)
    names = list(expert_names) if expert_names else [f"expert_{i}" for i in range(n)]
    return RoutingStats(
        layers=list(layers),
        fractions=[(counts[p] / max(tokens, 1)).tolist() for p in layers],
        mean_weights=[(weights[p] / max(tokens, 1)).tolist() for p in layers],
        tokens=tokens,
        top_k=k,
        expert_names=names,
    )


def plot_heatmap(
    stats: RoutingStats, path: str | Path, title: str = "Fraction of tokens routed to each expert"
) -> None:
    """Layers x experts heatmap PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_h = max(3.0, 0.22 * len(stats.layers) + 1.5)
    fig, ax = plt.subplots(figsize=(1.4 * len(stats.expert_names) + 2.5, fig_h))
    im = ax.imshow(stats.fractions, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(stats.expert_names)), stats.expert_names, rotation=30, ha="right")
    ax.set_yticks(range(len(stats.layers)), [short_layer_name(p) for p in stats.layers], fontsize=7)
    ax.set_title(f"{title}\n({stats.tokens} tokens, top-{stats.top_k})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def write_routing_report(stats: RoutingStats, out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write ``routing.csv``, ``routing.md``, ``routing.json`` and ``routing_heatmap.png`` into ``out_dir``."""
    out = Path(out_dir)
    paths = {
        "csv": out / "routing.csv",
        "md": out / "routing.md",
        "json": out / "routing.json",
        "png": out / "routing_heatmap.png",
    }
    rows = stats.rows()
    with atomic_write(paths["csv"]) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(paths["md"]) as f:
        f.write(stats.to_markdown())
    write_json(
        paths["json"],
        {
            "tokens": stats.tokens,
            "top_k": stats.top_k,
            "experts": stats.expert_names,
            "layers": stats.layers,
            "fractions": stats.fractions,
            "mean_weights": stats.mean_weights,
        },
    )
    plot_heatmap(stats, paths["png"], **({"title": title} if title else {}))
    return paths
