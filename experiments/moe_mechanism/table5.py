"""Needle control summary and Table 5 (issue 34, items 2 and 4) from train.py run dirs.

For each run dir (a ``train.py`` job: ``metrics.json``, ``predictions.jsonl``, ``routing/``, ``csv/metrics.csv``)
prints one row: accuracy, wall time, the token share of the ``--slot`` expert per layer (top-k assignment share =
``fractions / top_k`` and mean gate weight, both 1/N for uniform routing), routing entropy, the correlation with the
same-seed untrained MoE (``routing.init_agreement``) and the router/expert drift from the CSV log. Runs with
``eval.per_expert=true`` also get Table 5: the eval items bucketed by the N experts' own answers (All correct /
Mixed / All wrong; ``kexpert.report.agreement``), with the MoE's accuracy in each bucket next to each expert's and
the best single expert's. ``--ref NAME=RUN_DIR`` adds another run's accuracy on the same items (e.g. the Expert LoRA
alone, or the uniform merge) per bucket.

    python experiments/moe_mechanism/table5.py outputs/moe_mechanism/needle/rocket_lr1 ... \
        --ref uniform_merge=outputs/moe_mechanism/needle/uniform_merge --plot slot_share.png
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "study_smollm2"))
from paired import load_run, sign_test_p  # noqa: E402  (the study's paired-test helpers)


def _read_json(p: Path):
    return json.loads(p.read_text()) if p.exists() else None


def _preds(run: Path) -> dict[str, bool]:
    """``{item id: correct}`` of an evaluated run dir."""
    loaded = load_run(run)
    if loaded is None:
        raise SystemExit(f"{run}: expected an evaluated run dir (metrics.json with a score, predictions.jsonl)")
    return loaded[1]


def _csv_last(run: Path, cols: list[str]) -> dict[str, float | None]:
    """Last non-empty value of each column in the run's Lightning CSV log (and the max for drift)."""
    paths = sorted(run.glob("csv/**/metrics.csv"))
    out: dict[str, float | None] = {c: None for c in cols}
    if not paths:
        return out
    with open(paths[-1]) as f:
        for row in csv.DictReader(f):
            for c in cols:
                v = row.get(c)
                if v not in (None, ""):
                    out[c] = float(v)
    return out


def run_row(run: Path, slot: int) -> dict:
    """Needle-summary numbers of one run dir."""
    m = _read_json(run / "metrics.json") or {}
    r = _read_json(run / "routing" / "routing.json")
    ri = _read_json(run / "routing" / "routing_init.json")
    row = {
        "run": run.name,
        "method": m.get("method"),
        "acc": m.get("score"),
        "n": (m.get("eval") or {}).get("n"),
        "wall_s": m.get("wall_s"),
    }
    if r:
        k = r["top_k"]
        row["experts"] = r["experts"]
        row["layers"] = r["layers"]
        row["share"] = [f[slot] / k for f in r["fractions"]]
        row["weight"] = [w[slot] for w in r["mean_weights"]]
        # mean over layers of the entropy of the mean gate weights (a routing-level entropy; log N = uniform)
        ent = []
        for w in r["mean_weights"]:
            ent.append(-sum(p * math.log(p) for p in w if p > 0))
        row["mean_weight_entropy"] = sum(ent) / len(ent)
        if ri and "untrained" in ri:
            u = ri["untrained"]
            row["share_init"] = [f[slot] / u.get("top_k", k) for f in u["fractions"]]
            if "mean_weights" in u:
                row["weight_init"] = [w[slot] for w in u["mean_weights"]]
    ia = ((m.get("routing") or {}).get("init_agreement")) or {}
    row["init_r"] = ia.get("r")
    row["init_r_layer"] = ia.get("per_layer_r_mean")
    row["init_top2"] = ia.get("top2")
    last = _csv_last(run, ["drift/router", "drift/experts", "router/entropy", "grad_norm/router", "train/loss"])
    row.update(last)
    return row


def table5(run: Path, refs: dict[str, Path]) -> dict | None:
    """Buckets of one per_expert run: counts, MoE / expert / ref accuracy per bucket."""
    from kexpert.report.agreement import analyze_run
    from kexpert.report.runs import RunRecord

    m = _read_json(run / "metrics.json") or {}
    pe = m.get("per_expert")
    if pe is None and (run / "per_expert.json").exists():
        pe = _read_json(run / "per_expert.json")
        m = {**m, "per_expert": pe}
    if not pe:
        return None
    ag = analyze_run(RunRecord(path=run / "metrics.json", metrics=m))  # the library's buckets (validated)
    experts, ids, correct = pe["experts"], [str(i) for i in pe["ids"]], pe["correct"]
    moe = _preds(run)
    ref_preds = {name: _preds(p) for name, p in refs.items()}
    buckets: dict[str, list[int]] = {"All correct": [], "Mixed": [], "All wrong": []}
    for j in range(len(ids)):
        flags = [bool(correct[e][j]) for e in experts]
        key = "All correct" if all(flags) else ("All wrong" if not any(flags) else "Mixed")
        buckets[key].append(j)
    assert (len(buckets["All correct"]), len(buckets["Mixed"]), len(buckets["All wrong"])) == (
        ag.all_correct,
        ag.mixed,
        ag.all_incorrect,
    )

    def acc(flags: list[bool]) -> float | None:
        return sum(flags) / len(flags) if flags else None

    out = {"run": run.name, "experts": experts, "n": len(ids), "rows": {}}
    overall = {e: acc([bool(correct[e][j]) for j in range(len(ids))]) for e in experts}
    best = max(experts, key=lambda e: overall[e])
    out["best_expert"] = best
    for key, js in list(buckets.items()) + [("All items", list(range(len(ids))))]:
        row = {
            "n": len(js),
            "moe": acc([moe[ids[j]] for j in js]),
            "moe_right": sum(moe[ids[j]] for j in js),
            "slot_right": [sum(bool(correct[e][j]) for j in js) for e in experts],
        }
        for e in experts:
            row[e] = acc([bool(correct[e][j]) for j in js])
        row["best_single"] = row[best]
        for name, p in ref_preds.items():
            row[name] = acc([p[ids[j]] for j in js if ids[j] in p])
        out["rows"][key] = row
    return out


def paired(a: Path, b: Path) -> dict:
    """Accuracy of two runs on their common items, wins/losses of ``a`` against ``b`` and the sign test."""
    pa, pb = _preds(a), _preds(b)
    common = [i for i in pa if i in pb]
    wins = sum(pa[i] and not pb[i] for i in common)
    losses = sum(pb[i] and not pa[i] for i in common)
    return {
        "n": len(common),
        "acc_a": sum(pa[i] for i in common) / len(common),
        "acc_b": sum(pb[i] for i in common) / len(common),
        "wins": wins,
        "losses": losses,
        "p": sign_test_p(wins, losses),
    }


def _f(v, pct=True, nd=1) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.{nd}f}" if pct else f"{v:.{nd}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="train.py run dirs")
    ap.add_argument("--slot", type=int, default=1, help="the useful expert's slot (needle: 1 = arc_e_train)")
    ap.add_argument("--ref", action="append", default=[], help="NAME=RUN_DIR: another run's accuracy per bucket")
    ap.add_argument("--plot", type=Path, default=None, help="PNG: slot token share by layer, one line per run")
    ap.add_argument("--json", type=Path, default=None, help="write everything as JSON here")
    args = ap.parse_args()
    refs = dict(r.split("=", 1) for r in args.ref)
    refs = {k: Path(v) for k, v in refs.items()}

    for r in [*args.runs, *refs.values()]:
        if not (r / "metrics.json").is_file():
            raise SystemExit(f"{r}: expected a train.py/eval.py run dir with metrics.json")
    rows = [run_row(r, args.slot) for r in args.runs]
    print("## Needle summary (slot", args.slot, ")\n")
    print(
        "| run | method | acc % | n | wall s | slot share mean (min-max over layers) | init share mean | "
        "slot gate weight mean | entropy (last logged) | init r | init r/layer | drift router | drift experts |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sh = r.get("share")
        shs = f"{sum(sh) / len(sh):.3f} ({min(sh):.3f}-{max(sh):.3f})" if sh else "—"
        si = r.get("share_init")
        sis = f"{sum(si) / len(si):.3f}" if si else "—"
        w = r.get("weight")
        ws = f"{sum(w) / len(w):.3f}" if w else "—"
        print(
            f"| {r['run']} | {r['method']} | {_f(r['acc'])} | {r['n']} | {_f(r['wall_s'], False, 0)} | {shs} | "
            f"{sis} | {ws} | {_f(r.get('router/entropy'), False, 3)} | {_f(r.get('init_r'), False, 3)} | "
            f"{_f(r.get('init_r_layer'), False, 3)} | {_f(r.get('drift/router'), False, 3)} | "
            f"{_f(r.get('drift/experts'), False, 3)} |"
        )

    t5 = [t for t in (table5(r, refs) for r in args.runs) if t]
    for t in t5:
        ex = t["experts"]
        names = list(refs)
        print(f"\n## Table 5: {t['run']} (n = {t['n']}; best single expert overall: {t['best_expert']})\n")
        print(
            "| bucket | n | MoE % | "
            + " | ".join(f"{e} alone %" for e in ex)
            + " | best single % |"
            + "".join(f" {n} % |" for n in names)
        )
        print("|---|---|---|" + "---|" * (len(ex) + 1 + len(names)))
        for key, row in t["rows"].items():
            print(
                f"| {key} | {row['n']} | {_f(row['moe'])} | "
                + " | ".join(_f(row[e]) for e in ex)
                + f" | {_f(row['best_single'])} |"
                + "".join(f" {_f(row.get(n))} |" for n in names)
            )

    if len(t5) > 1:
        n_slots = len(t5[0]["experts"])
        print(f"\n## Table 5 pooled over {len(t5)} runs (experts by slot; counts summed)\n")
        print("| bucket | n | MoE % | " + " | ".join(f"slot {i} %" for i in range(n_slots)) + " |")
        print("|---|---|---|" + "---|" * n_slots)
        for key in t5[0]["rows"]:
            n = sum(t["rows"][key]["n"] for t in t5)
            moe_r = sum(t["rows"][key]["moe_right"] for t in t5)
            slots = [sum(t["rows"][key]["slot_right"][i] for t in t5) for i in range(n_slots)]
            print(
                f"| {key} | {n} | {_f(moe_r / n if n else None)} ({moe_r}) | "
                + " | ".join(f"{_f(v / n if n else None)} ({v})" for v in slots)
                + " |"
            )

    if refs:
        print("\n## Paired against the references (common items; wins/losses of the run; exact sign test)\n")
        print("| run | reference | n | run acc % | ref acc % | wins/losses | p |")
        print("|---|---|---|---|---|---|---|")
        pairs = []
        for r in args.runs:
            for name, ref in refs.items():
                if r.resolve() == ref.resolve() or not (r / "predictions.jsonl").exists():
                    continue
                c = paired(r, ref)
                pairs.append({"run": r.name, "ref": name, **c})
                print(
                    f"| {r.name} | {name} | {c['n']} | {_f(c['acc_a'])} | {_f(c['acc_b'])} | "
                    f"{c['wins']}/{c['losses']} | {c['p']:.2f} |"
                )

    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "table5": t5}, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.6), dpi=90)
        first = None
        for r in rows:
            if r.get("share"):
                first = first or r
                ax.plot(range(len(r["share"])), r["share"], marker=".", lw=1, label=r["run"])
        if first and first.get("share_init"):
            ax.plot(
                range(len(first["share_init"])),
                first["share_init"],
                color="k",
                ls=":",
                lw=1,
                label="untrained MoE (same seed)",
            )
        if first:
            n = len(first["experts"])
            ax.axhline(1 / n, color="grey", lw=0.8, ls="--", label=f"uniform 1/{n}")
            labels = [name.replace("model.layers.", "L").replace(".self_attn.", ".") for name in first["layers"]]
            ax.set_xticks(range(len(labels))[::4])
            ax.set_xticklabels(labels[::4], rotation=45, fontsize=7)
            ax.set_ylabel(f"token share of slot {args.slot} ({first['experts'][args.slot]})", fontsize=8)
        ax.set_title("Needle control, ARC-E: top-k token share of the useful expert by layer", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
