"""Parity with lm-evaluation-harness: the same model dir, the same items, kexpert's scorer against lm-eval's.

For one task, it takes the items ``eval.py`` scores (``task.eval_examples(limit, seed)``), writes them to a local
JSON Lines file with kexpert's task prompt and options, and writes an lm-eval task YAML that reads that file
(``doc_to_text`` = the base model's prompt format around the prompt, ``doc_to_choice`` = the options, joined by
the same target delimiter). Then both engines score it:

* kexpert: :func:`kexpert.eval.evaluator.option_logliks` (what ``evaluate`` ranks) or, in generate mode,
  :func:`kexpert.eval.evaluator.evaluate`;
* lm-eval: ``lm_eval.simple_evaluate`` with its ``HFLM`` loading the same model dir (``pretrained=<dir>``), or,
  with ``--expert <artifact>``, with the ``kexpert`` model class (:mod:`kexpert.integrations.lm_eval`) on a trained
  expert, against kexpert's scorer on the same artifact.

Per item it compares the choice (``acc``'s and ``acc_norm``'s pick) and every option's log-likelihood, or, in
generate mode, the generation and the answer kexpert extracts from it. Needs ``pip install "kexpert[lm-eval]"``.

    python experiments/eval/lm_eval_parity.py --task arc_e --limit 200 --out outputs/lm_eval_parity
    python experiments/eval/lm_eval_parity.py --task gsm8k --limit 50 --mode generate --out ...
    python experiments/eval/lm_eval_parity.py --task arc_e --limit 150 --expert outputs/multiruns/demo/<date>/2_*rocket
    python experiments/eval/lm_eval_parity.py --table outputs/lm_eval_parity/*.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from string import Formatter
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from kexpert.eval.evaluator import evaluate, option_logliks
from kexpert.eval.metrics import pick_options
from kexpert.integrations.lm_eval import KexpertLM, load_artifact
from kexpert.models.factory import BaseModelSpec
from kexpert.utils.instantiate import instantiate
from kexpert.utils.io import write_json, write_jsonl
from kexpert.utils.resolvers import register_resolvers

CONF = Path(__file__).resolve().parents[2] / "conf"
TOL = 1e-4


def load_task_and_spec(task: str, base_model: str, data_dir: str | None, model_dir: str | None):
    """The task and base-model spec as ``eval.py`` composes them; ``model_dir`` replaces the weights' source."""
    register_resolvers()
    overrides = [f"task={task}", f"base_model={base_model}"]
    if data_dir:
        overrides.append(f"paths.data_dir={data_dir}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=overrides)
    spec: BaseModelSpec = instantiate(cfg.base_model, key="base_model")
    if model_dir is not None:
        spec = BaseModelSpec(name=Path(model_dir).name, path=model_dir, prompt_format=spec.prompt_format)
    spec.dtype, spec.device = "float32", "cpu"
    return instantiate(cfg.task, key="task"), spec


def model_dir_of(spec: BaseModelSpec) -> str:
    """The local HF dir both engines load (the offline GGUF conversion for the embedded default)."""
    source, kwargs = spec.resolve_source()
    if kwargs or not Path(source).is_dir():
        raise SystemExit(f"lm-eval needs a local HF model dir; {spec.name} resolves to {source} {kwargs}")
    return source


def jinja_of(template: str) -> str:
    """A Python format template with one ``{prompt}`` field as a Jinja template over the ``prompt`` column."""
    out, literal = [], ""

    def flush() -> None:
        out.append("{% raw %}" + literal + "{% endraw %}" if any(c in literal for c in "{}%#") else literal)

    for text, field, _, _ in Formatter().parse(template):
        literal += text
        if field is not None:
            if field != "prompt":
                raise SystemExit(f"prompt format template: unexpected field {{{field}}}")
            flush()
            out.append("{{prompt}}")
            literal = ""
    flush()
    return "".join(out)


def write_lm_eval_task(task, spec, examples, mode: str, out: Path) -> str:
    """Write ``<out>/tasks/<name>.jsonl`` + ``.yaml`` (the items kexpert scores) and return the lm-eval task name."""
    pf = spec.prompt_format
    if pf.chat_template:
        raise SystemExit("chat-template prompt formats are not compared: lm-eval's --apply_chat_template differs")
    name = f"kexpert_parity_{task.name}_{mode}"
    rows: list[dict[str, Any]] = []
    delims = set()
    for ex in examples:
        row = {"id": ex.id, "prompt": task.prompt(ex, mode=mode)}
        if mode == "loglikelihood":
            conts = [pf.response(c) for c in task.continuations(ex)]
            lead = {c[: len(c) - len(c.lstrip())] for c in conts}
            delims |= lead
            row |= {"choices": [c.lstrip() for c in conts], "gold": ex.gold_index}
        else:
            row["answer"] = str(ex.gold)
        rows.append(row)
    if len(delims) > 1:
        raise SystemExit(f"{task.name}: options start with different whitespace {sorted(delims)}")
    tasks_dir = out / "tasks"
    tasks_dir.mkdir(parents=True, exist_ok=True)
    data = tasks_dir / f"{name}.jsonl"
    write_jsonl(data, rows)
    cfg: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "doc_to_text": jinja_of(pf.template + pf.response_prefix.replace("{", "{{").replace("}", "}}")),
        "num_fewshot": 0,
    }
    if mode == "loglikelihood":
        cfg |= {
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "target_delimiter": next(iter(delims), ""),
            "metric_list": [
                {"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")
            ],
        }
    else:
        cfg |= {
            "output_type": "generate_until",
            "doc_to_target": "answer",
            "generation_kwargs": {"until": list(task.stop), "do_sample": False, "max_gen_toks": task.max_new_tokens},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        }
    (tasks_dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return name


def run_lm_eval(name: str, tasks_dir: Path, model_dir: str | None, batch_size: int, expert=None, base=None):
    """lm-eval on the written task; its logged samples, in item order.

    The model is lm-eval's ``HFLM`` on ``model_dir``, or, with ``expert``, the ``kexpert`` model class of
    :mod:`kexpert.integrations.lm_eval` on that artifact.
    """
    tm = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    if expert is not None:
        lm = KexpertLM(expert=str(expert), base=base, device="cpu", batch_size=batch_size)
    else:
        lm = HFLM(pretrained=model_dir, device="cpu", dtype="float32", batch_size=batch_size)
    res = simple_evaluate(model=lm, tasks=[name], task_manager=tm, log_samples=True, bootstrap_iters=0)
    return sorted(res["samples"][name], key=lambda s: s["doc_id"])


def compare_loglikelihood(task, examples, kx: list[list[tuple[str, float]]], lm: list[dict]) -> dict[str, Any]:
    """Per item: both engines' picks and log-likelihoods; the summary counts agreements and the largest gap."""
    items, max_d = [], 0.0
    agree = {"acc": 0, "acc_norm": 0}
    correct = {k: 0 for k in ("kexpert_acc", "lm_eval_acc", "kexpert_acc_norm", "lm_eval_acc_norm", "old_acc_norm")}
    for ex, opts, s in zip(examples, kx, lm):
        conts, ll_k = [c for c, _ in opts], [ll for _, ll in opts]
        ll_l = [float(r[0][0]) for r in s["resps"]]
        raw_k, norm_k = pick_options(ll_k, conts)
        choices = s["doc"]["choices"]
        raw_l = max(range(len(ll_l)), key=lambda j: ll_l[j])
        norm_l = max(range(len(ll_l)), key=lambda j: ll_l[j] / len(choices[j]))
        old = max(range(len(ll_k)), key=lambda j: ll_k[j] / max(len(conts[j].encode()), 1))  # the pre-lm-eval rule
        d = max(abs(a - b) for a, b in zip(ll_k, ll_l))
        max_d = max(max_d, d)
        agree["acc"] += raw_k == raw_l
        agree["acc_norm"] += norm_k == norm_l
        g = ex.gold_index
        for k, pick in (("kexpert_acc", raw_k), ("lm_eval_acc", raw_l), ("kexpert_acc_norm", norm_k)):
            correct[k] += pick == g
        correct["lm_eval_acc_norm"] += float(s["acc_norm"]) == 1.0
        correct["old_acc_norm"] += old == g
        items.append({"id": ex.id, "kexpert": ll_k, "lm_eval": ll_l, "max_abs_diff": d, "picks": [raw_k, raw_l]})
    n = len(examples)
    summary = {
        "n": n,
        "options": sum(len(i["kexpert"]) for i in items),
        "choice_agreement": agree["acc"] / n,
        "acc_norm_choice_agreement": agree["acc_norm"] / n,
        "max_abs_loglik_diff": max_d,
        "options_within_tol": sum(abs(a - b) <= TOL for i in items for a, b in zip(i["kexpert"], i["lm_eval"])),
        **{k: v / n for k, v in correct.items()},
    }
    return {"summary": summary, "items": items}


def compare_generate(task, examples, preds: list[dict], lm: list[dict]) -> dict[str, Any]:
    """Per item: both generations, and the answer kexpert's extractor reads from each."""
    items, same_text, same_answer, ok_l = [], 0, 0, 0
    for ex, p, s in zip(examples, preds, lm):
        gen_l = s["resps"][0][0]
        ans_l = task.extract(gen_l, ex)
        same_text += gen_l.strip() == p["generation"].strip()
        same_answer += ans_l == p["pred"]
        ok_l += task.is_correct(ans_l, ex)
        items.append({"id": ex.id, "kexpert": p["generation"], "lm_eval": gen_l, "answers": [p["pred"], ans_l]})
    n = len(examples)
    summary = {
        "n": n,
        "generation_agreement": same_text / n,
        "answer_agreement": same_answer / n,
        "kexpert_acc": sum(p["correct"] for p in preds) / n,
        "lm_eval_acc": ok_l / n,
    }
    return {"summary": summary, "items": items}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Score ``args.task`` with both engines and compare (written to ``<out>/<task>_<mode>.json``)."""
    task, spec = load_task_and_spec(args.task, args.base_model, args.data_dir, args.model_dir)
    mode = args.mode or task.eval_mode
    model_dir = model_dir_of(spec) if args.expert is None else None
    examples = task.eval_examples(limit=args.limit, seed=args.seed)
    out = Path(args.out)
    name = write_lm_eval_task(task, spec, examples, mode, out)
    if args.expert is None:
        model, tok = spec.load()
    else:
        model, tok, _ = load_artifact(args.expert, base=args.expert_base, device="cpu")
    t0 = time.perf_counter()
    if mode == "loglikelihood":
        kx: Any = option_logliks(task, model, tok, spec.prompt_format, examples, batch_size=args.batch_size)
    else:
        kx = evaluate(task, model, tok, spec.prompt_format, examples=examples, mode=mode, progress=False).predictions
    t_k = time.perf_counter() - t0
    del model
    t0 = time.perf_counter()
    lm = run_lm_eval(name, out / "tasks", model_dir, args.batch_size, args.expert, args.expert_base)
    t_l = time.perf_counter() - t0
    if [s["doc"]["id"] for s in lm] != [ex.id for ex in examples]:
        raise SystemExit("lm-eval scored other items than kexpert (ids differ)")
    compare = compare_loglikelihood if mode == "loglikelihood" else compare_generate
    result = compare(task, examples, kx, lm)
    result["summary"] |= {
        "task": task.name,
        "mode": mode,
        "limit": args.limit,
        "seed": args.seed,
        "model_dir": model_dir,
        "expert": None if args.expert is None else str(args.expert),
        "kexpert_s": round(t_k, 1),
        "lm_eval_s": round(t_l, 1),
    }
    write_json(out / f"{task.name}_{mode}.json", result)
    print(json.dumps(result["summary"], indent=2))
    return result


def acc_norm_rules(args: argparse.Namespace) -> dict[str, Any]:
    """kexpert alone: ``acc``, ``acc_norm`` (lm-eval's rule) and the pre-lm-eval rule on the same items."""
    task, spec = load_task_and_spec(args.task, args.base_model, args.data_dir, args.model_dir)
    examples = task.eval_examples(limit=args.limit, seed=args.seed)
    model, tok = spec.load()
    per_item = option_logliks(task, model, tok, spec.prompt_format, examples, batch_size=args.batch_size)
    n, acc, new, old = len(examples), 0, 0, 0
    for ex, opts in zip(examples, per_item):
        lls, conts = [ll for _, ll in opts], [c for c, _ in opts]
        raw, norm = pick_options(lls, conts)
        before = max(range(len(lls)), key=lambda j: lls[j] / max(len(conts[j].encode()), 1))
        acc, new, old = acc + (raw == ex.gold_index), new + (norm == ex.gold_index), old + (before == ex.gold_index)
    summary = {"task": task.name, "n": n, "limit": args.limit, "seed": args.seed}
    summary |= {"acc": acc / n, "acc_norm": new / n, "old_acc_norm": old / n}
    write_json(Path(args.out) / f"{task.name}_acc_norm_rules.json", summary)
    print(json.dumps(summary, indent=2))
    return summary


def table(paths: list[Path]) -> str:
    """The markdown parity table of several result files."""
    lines = [
        "| task | mode | items | choices agree | max abs loglik diff | options within 1e-4 | acc kexpert / lm-eval "
        "| acc_norm kexpert / lm-eval (old kexpert rule) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in paths:
        s = json.loads(Path(p).read_text())["summary"]

        def pct(k: str, s: dict = s) -> str:
            return f"{100 * s[k]:.1f}"

        if s["mode"] == "loglikelihood":
            lines.append(
                f"| {s['task']} | {s['mode']} | {s['n']} | {pct('choice_agreement')}% "
                f"(acc_norm {pct('acc_norm_choice_agreement')}%) | {s['max_abs_loglik_diff']:.1e} "
                f"| {s['options_within_tol']}/{s['options']} | {pct('kexpert_acc')} / {pct('lm_eval_acc')} "
                f"| {pct('kexpert_acc_norm')} / {pct('lm_eval_acc_norm')} ({pct('old_acc_norm')}) |"
            )
        else:
            lines.append(
                f"| {s['task']} | {s['mode']} | {s['n']} | generations {pct('generation_agreement')}%, "
                f"answers {pct('answer_agreement')}% | — | — | {pct('kexpert_acc')} / {pct('lm_eval_acc')} | — |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", help="conf/task name (arc_e, piqa, boolq, gsm8k, ...)")
    ap.add_argument("--limit", type=int, default=None, help="eval.limit: the seeded subset eval.py scores")
    ap.add_argument("--seed", type=int, default=0, help="eval.seed")
    ap.add_argument("--mode", choices=["loglikelihood", "generate"], default=None, help="default: the task's")
    ap.add_argument("--base-model", default="smollm2_135m", help="conf/base_model name (prompt format, weights)")
    ap.add_argument("--model-dir", default=None, help="a local HF model dir instead of the base model's weights")
    ap.add_argument(
        "--expert",
        default=None,
        help="a kexpert artifact (run dir, LoRA-MoE, LoRA): lm-eval's side is "
        "the 'kexpert' model class, kexpert's side load_artifact; the prompt format is --base-model's",
    )
    ap.add_argument("--expert-base", default=None, help="base= of the kexpert model class (a PEFT LoRA's base)")
    ap.add_argument("--data-dir", default=None, help="paths.data_dir (default: KEXPERT_DATA_DIR)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="outputs/lm_eval_parity", help="tasks/ (YAML + JSONL) and <task>_<mode>.json")
    ap.add_argument("--table", nargs="+", type=Path, help="print the markdown table of these result files")
    ap.add_argument("--acc-norm-rules", action="store_true", help="kexpert only: acc_norm, new and old rule")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return
    if not args.task:
        ap.error("--task is required")
    acc_norm_rules(args) if args.acc_norm_rules else run(args)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    sys.exit(main())
