"""Specialists control (issue 34, item 2): does the router send each domain's tokens to its specialist?

Input: a ``train.py`` run of a LoRA-MoE whose experts include one specialist per domain, trained on data that mixes
the domains (see this folder's README for the command). For each domain (a task of the run's ``bank_tasks``:
its eval prompts + gold targets, the texts the run report routes) this script:

1. routes the texts through the trained MoE and through the same MoE as training started it (same experts, same
   router seed) and records, per layer, each expert's top-k assignment share (``fractions / top_k``) and mean
   gate weight;
2. measures each expert *alone* (every token forced to it, weight 1) by its mean per-token NLL on the domain's
   texts: the specialist is the expert with the lowest NLL, i.e. whether there is anything to route at all.

A router that specialises gives a domain's specialist a larger share on that domain's tokens than on the other
domain's, and more so than the untrained router does (which already routes domains apart a little, since the
hidden states differ). Writes ``specialists.json``, ``specialists.md`` and ``specialists.png`` (token share of each
specialist by domain and layer, trained vs untrained) into ``--out``.

    python experiments/moe_mechanism/specialists.py outputs/moe_mechanism/specialists/ro_lr100 \
        --domain science=arc_e --domain code=mbpp --specialist science=arc_e_train --specialist code=code_alpaca \
        --limit 100 --out experiments/moe_mechanism/specialists
"""

from __future__ import annotations

import argparse
import gc
import json
import math
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from kexpert.api import load_expert
from kexpert.eval.per_expert import route_all_to
from kexpert.models.routing_stats import collect_routing_stats, eval_texts, short_layer_name
from kexpert.training.train_moe import build_moe_at_init


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise SystemExit(f"{flag} {v!r}: expected NAME=VALUE")
        k, val = v.split("=", 1)
        out[k] = val
    return out


@torch.no_grad()
def _mean_nll(model, tok, texts: list[str], batch_size: int = 8) -> float:
    """Mean next-token NLL over every real token of ``texts`` (prompt and target, as the router sees them)."""
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=1024)
        logits = model(**enc).logits[:, :-1].float()
        labels = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        total += float(nll[mask].sum())
        count += int(mask.sum())
    return total / count


def _routing(model, tok, texts: list[str], names: list[str]) -> dict:
    stats = collect_routing_stats(model, tok, texts, expert_names=names, progress=False)
    k = stats.top_k
    return {
        "layers": [short_layer_name(p) for p in stats.layers],
        "share": [[f / k for f in row] for row in stats.fractions],
        "gate": stats.mean_weights,
        "tokens": stats.tokens,
        "top_k": k,
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def analyze(run: Path, domains: dict[str, str], limit: int, seed: int, num_fewshot: int = 0) -> dict:
    """Routing and per-expert NLL by domain, trained and untrained."""
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    base_spec = instantiate(cfg.base_model)
    model, tok = load_expert(run)
    moe_cfg = run / "artifacts" / "train" / "train" / "moe" / "moe_config.json"
    train_info = json.loads(moe_cfg.read_text())["extra"]["train"]
    names = [e["name"] for e in train_info["experts"]]
    texts = {}
    for dom, task_name in domains.items():
        # zero-shot by default: a few-shot prompt would repeat the same demonstrations in every text
        task = instantiate(cfg.bank_tasks[task_name], num_fewshot=num_fewshot)
        texts[dom] = eval_texts(task, task.eval_examples(limit=limit, seed=seed), base_spec.prompt_format, tok)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out: dict = {
        "run": str(run),
        "experts": names,
        "router_seed": train_info["router_seed"],
        "domains": {},
        "num_fewshot": num_fewshot,
    }
    for dom, t in texts.items():
        nll = {}
        for i, name in enumerate(names):
            with route_all_to(model, i):
                nll[name] = _mean_nll(model, tok, t)
        out["domains"][dom] = {
            "task": domains[dom],
            "texts": len(t),
            "trained": _routing(model, tok, t, names),
            "nll_alone_trained": nll,
            "nll_moe_trained": _mean_nll(model, tok, t),
        }
    del model
    gc.collect()
    spec = instantiate(cfg.moe)
    experts = [(e["name"], e["path"]) for e in train_info["experts"]]
    init_model, tok0, _, _ = build_moe_at_init(spec, base_spec, experts, int(train_info["router_seed"]))
    init_model.eval()
    if tok0.pad_token is None:
        tok0.pad_token = tok0.eos_token
    for dom, t in texts.items():
        out["domains"][dom]["untrained"] = _routing(init_model, tok0, t, names)
        out["domains"][dom]["nll_moe_untrained"] = _mean_nll(init_model, tok0, t)
    return out


def _layers_above(res: dict, own_domain: str, expert: int, kind: str) -> int:
    """Layers where ``expert``'s share on ``own_domain``'s tokens exceeds its mean share on the other domains'."""
    doms = res["domains"]
    own = [row[expert] for row in doms[own_domain][kind]["share"]]
    others = [o for o in doms if o != own_domain]
    oth = [_mean([doms[o][kind]["share"][li][expert] for o in others]) for li in range(len(own))]
    return sum(a > b for a, b in zip(own, oth))


def summarize(res: dict, specialists: dict[str, str]) -> str:
    """Markdown: per-expert NLL alone by domain, then each specialist's share by domain (trained vs untrained)."""
    names, doms = res["experts"], list(res["domains"])
    lines = [f"Run `{res['run']}`, experts {names}, router seed {res['router_seed']}.", ""]
    lines += ["Mean per-token NLL of each expert alone (forced routing), and of the MoE, by domain:", ""]
    lines += ["| domain | " + " | ".join(names) + " | MoE untrained | MoE trained |"]
    lines += ["|---|" + "---|" * (len(names) + 2)]
    for d in doms:
        dd = res["domains"][d]
        best = min(dd["nll_alone_trained"], key=dd["nll_alone_trained"].get)
        cells = [
            f"**{dd['nll_alone_trained'][n]:.3f}**" if n == best else f"{dd['nll_alone_trained'][n]:.3f}"
            for n in names
        ]
        lines += [
            f"| {d} ({dd['task']}, {dd['texts']} texts) | "
            + " | ".join(cells)
            + f" | {dd['nll_moe_untrained']:.3f} | {dd['nll_moe_trained']:.3f} |"
        ]
    lines += ["", "Top-k share of each specialist, mean over layers (min-max), by the domain of the tokens:", ""]
    lines += [
        "| specialist | tokens of | untrained | trained | gate weight untrained / trained | layers where its "
        "share on its own domain exceeds the other domain's (untrained -> trained) |",
        "|---|---|---|---|---|---|",
    ]
    for sd, sname in specialists.items():
        i = names.index(sname)
        for d in doms:
            dd = res["domains"][d]
            u = [row[i] for row in dd["untrained"]["share"]]
            t = [row[i] for row in dd["trained"]["share"]]
            sep = ""
            if d == sd:
                sep = f"{_layers_above(res, sd, i, 'untrained')} -> {_layers_above(res, sd, i, 'trained')} of {len(u)}"
            gu = _mean([row[i] for row in dd["untrained"]["gate"]])
            gt = _mean([row[i] for row in dd["trained"]["gate"]])
            lines += [
                f"| {sname} ({sd}) | {d} | {_mean(u):.3f} ({min(u):.2f}-{max(u):.2f}) | "
                f"{_mean(t):.3f} ({min(t):.2f}-{max(t):.2f}) | {gu:.3f} / {gt:.3f} | {sep} |"
            ]
    return "\n".join(lines) + "\n"


def plot(res: dict, specialists: dict[str, str], path: Path) -> None:
    """One panel per specialist: its share per layer on each domain's tokens, trained (solid), untrained (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, doms = res["experts"], list(res["domains"])
    fig, axes = plt.subplots(len(specialists), 1, figsize=(12, 3.2 * len(specialists)), sharex=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (sd, sname) in zip(axes[:, 0], specialists.items()):
        i = names.index(sname)
        layers = res["domains"][doms[0]]["trained"]["layers"]
        for c, d in zip(colors, doms):
            dd = res["domains"][d]
            ax.plot([r[i] for r in dd["trained"]["share"]], color=c, lw=2, label=f"{d} tokens, trained")
            ax.plot([r[i] for r in dd["untrained"]["share"]], color=c, lw=1, ls="--", label=f"{d} tokens, untrained")
        k = res["domains"][doms[0]]["trained"]["top_k"]
        ax.axhline(1 / len(names), color="grey", lw=0.5)  # uniform routing
        ax.set_ylim(0, 1.0 / k + 0.02)
        ax.set_ylabel("top-k share")
        ax.set_title(f"{sname} (the {sd} specialist): share of tokens routed to it, by token domain")
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    axes[-1, 0].set_xticks(range(len(layers)))
    axes[-1, 0].set_xticklabels(layers, rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--domain", action="append", required=True, help="NAME=TASK (a bank_tasks key of the run)")
    ap.add_argument("--specialist", action="append", required=True, help="DOMAIN=EXPERT_NAME")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-fewshot", type=int, default=0, help="demonstrations in each domain's prompts")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default="specialists")
    args = ap.parse_args()
    domains, specialists = _pairs(args.domain, "--domain"), _pairs(args.specialist, "--specialist")
    res = analyze(args.run, domains, args.limit, args.seed, args.num_fewshot)
    for sd, sname in specialists.items():
        if sd not in res["domains"] or sname not in res["experts"]:
            raise SystemExit(f"--specialist {sd}={sname}: unknown domain or expert (experts: {res['experts']})")
    if not all(math.isfinite(v) for d in res["domains"].values() for v in d["nll_alone_trained"].values()):
        raise SystemExit(f"{args.run}: an expert's NLL is not finite; nothing written")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    md = summarize(res, specialists)
    (args.out / f"{args.name}.md").write_text(md)
    plot(res, specialists, args.out / f"{args.name}.png")
    print(md)


if __name__ == "__main__":
    main()
