"""The router grid of issue 34 (item 3): router lr x {1, 10, 100} on the real Algorithm-1 experts, over K-shot draws.

Reads the run dirs ``run_grid.sh`` writes (``<task>_rocket_lr<m>_s<draw>[_ep10]``, ``<task>_ro_lr<m>_s<draw>``,
``<task>_uniform_s<draw>``) and prints, per task:

1. one row per (variant, router lr): accuracy mean ± std over draws; router drift ||W - W0|| / ||W0||; correlation
   of the routing with the same-seed untrained MoE (``routing.init_agreement.r``); per-token router entropy at the
   last logged step (log 4 = 1.386 uniform); the share of tokens of the model-wide most used expert (mean over
   layers of the fraction of tokens whose top-k includes it; 0.5 = uniform top-2 of 4, 1.0 = every token);
2. paired on the same eval items, per draw: wins/losses and the exact sign test against the uniform merge of the
   same experts (same draw) and against router lr x1 (same draw);
3. Table 5 pooled over the ``eval.per_expert`` runs of the task (the MoE vs its best single expert on Mixed items).

    python experiments/moe_mechanism/grid.py outputs/moe_mechanism/grid [--json grid.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from table5 import _f, _read_json, paired, run_row, table5  # noqa: E402

NAME = re.compile(r"^(?P<task>[a-z_]+?)_(?P<variant>rocket|ro)_lr(?P<lr>\d+)_s(?P<draw>\d+)(?P<ep>_ep\d+)?$")


def concentration(run: Path) -> tuple[float, str] | None:
    """The expert with the largest share over all layers, and its share of tokens (mean over layers).

    The share is the fraction of tokens whose top-k includes it (k/N for uniform routing, 1.0 = every token in
    every layer). An untrained router is sparse per layer but favours different experts in different layers, so
    one expert for the whole model is what training towards a useful expert produces.
    """
    r = _read_json(run / "routing" / "routing.json")
    if not r:
        return None
    n = len(r["experts"])
    means = [statistics.fmean(f[i] for f in r["fractions"]) for i in range(n)]
    top = max(range(n), key=means.__getitem__)
    return means[top], r["experts"][top]


def _ms(xs: list[float | None], pct: bool = False, nd: int = 3) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    scale = 100 if pct else 1
    m = statistics.fmean(xs) * scale
    s = (statistics.stdev(xs) * scale) if len(xs) > 1 else 0.0
    return f"{m:.{nd}f} ± {s:.{nd}f}"


def collect(root: Path) -> dict:
    """Group the grid's run dirs: cells[task][(variant, lr, epochs)][draw] = run dir; refs[task][draw] = uniform."""
    cells: dict = defaultdict(lambda: defaultdict(dict))
    uniform: dict = defaultdict(dict)
    for d in sorted(p for p in root.iterdir() if (p / "metrics.json").exists()):
        m = re.match(r"^(?P<task>[a-z_]+?)_uniform_s(?P<draw>\d+)$", d.name)
        if m:
            uniform[m["task"]][int(m["draw"])] = d
            continue
        m = NAME.match(d.name)
        if m:
            ep = int(m["ep"][3:]) if m["ep"] else 2
            cells[m["task"]][(m["variant"], int(m["lr"]), ep)][int(m["draw"])] = d
    return {"cells": cells, "uniform": uniform}


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"{args.root}: expected a folder of grid run dirs (<task>_rocket_lr<m>_s<draw>, ...)")
    g = collect(args.root)
    if not g["cells"]:
        raise SystemExit(f"{args.root}: no run dir named <task>_rocket_lr<m>_s<draw> or <task>_ro_lr<m>_s<draw>")
    dump: dict = {}
    for task, cells in g["cells"].items():
        uni = g["uniform"].get(task, {})
        print(f"\n## {task}\n")
        print(
            "| variant | router lr | epochs | draws | acc % (mean ± std) | router drift | r with untrained routing "
            "| router entropy | top expert's share (which) | vs uniform merge, per draw (W/L, p) | vs x1, per draw |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for (variant, lr, ep), runs in sorted(cells.items()):
            rows = {d: run_row(p, 0) for d, p in sorted(runs.items())}
            conc_named = [concentration(p) for p in runs.values()]
            conc = [c[0] if c else None for c in conc_named]
            top_names = sorted({c[1] for c in conc_named if c})
            vs_u, vs_1 = [], []
            for d, p in sorted(runs.items()):
                if d in uni:
                    c = paired(p, uni[d])
                    vs_u.append(f"s{d} {c['wins']}/{c['losses']} ({c['p']:.2f})")
                base = cells.get(("rocket", 1, 2), {}).get(d)
                if base is not None and base != p:
                    c = paired(p, base)
                    vs_1.append(f"s{d} {c['wins']}/{c['losses']} ({c['p']:.2f})")
            rs = list(rows.values())
            print(
                f"| {'router-only' if variant == 'ro' else 'ROCKET'} | x{lr} | {ep} | {len(runs)} | "
                f"{_ms([r['acc'] for r in rs], True, 1)} | {_ms([r.get('drift/router') for r in rs])} | "
                f"{_ms([r.get('init_r') for r in rs])} | {_ms([r.get('router/entropy') for r in rs])} | "
                f"{_ms(conc)} ({', '.join(top_names)}) | {'; '.join(vs_u) or '—'} | {'; '.join(vs_1) or '—'} |"
            )
            dump.setdefault(task, {})[f"{variant}_lr{lr}_ep{ep}"] = {
                str(d): {
                    **{
                        k: v
                        for k, v in r.items()
                        if k not in ("layers", "share", "weight", "share_init", "weight_init")
                    },
                    "concentration": concentration(runs[d]),
                }
                for d, r in rows.items()
            }
        if uni:
            accs = [(_read_json(p / "metrics.json") or {}).get("score") for p in uni.values()]
            dash = " — |" * 6
            print(f"| uniform merge (no training) | — | — | {len(uni)} | {_ms(accs, True, 1)} |{dash}")
        t5 = [t for p in sorted(r for c in cells.values() for r in c.values()) if (t := table5(p, {}))]
        if t5:
            print(
                f"\nTable 5 pooled over {len(t5)} `eval.per_expert` runs ({', '.join(t['run'] for t in t5)}): "
                "MoE vs each expert alone (the trained MoE's experts, forced routing) and the best single expert "
                "of each run\n"
            )
            print("| bucket | n | MoE % (right) | best single expert % (right) |")
            print("|---|---|---|---|")
            for key in t5[0]["rows"]:
                n = sum(t["rows"][key]["n"] for t in t5)
                moe = sum(t["rows"][key]["moe_right"] for t in t5)
                best = sum(t["rows"][key]["slot_right"][t["experts"].index(t["best_expert"])] for t in t5)
                m_pct, b_pct = (_f(v / n) if n else "—" for v in (moe, best))
                print(f"| {key} | {n} | {m_pct} ({moe}) | {b_pct} ({best}) |")
            dump.setdefault(task, {})["table5"] = t5
    if args.json:
        args.json.write_text(json.dumps(dump, indent=1, default=str))


if __name__ == "__main__":
    main()
