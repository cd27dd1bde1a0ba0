"""BoolQ calibration check: is a below-majority base score the model's prior or a scoring bug?

Reads the ``predictions.jsonl`` of a log-likelihood BoolQ evaluation (``python eval.py task=boolq ...``), prints the
answer distribution, and re-scores every item with content-free contextual calibration (Zhao et al., 2021): the
log-likelihood of " yes" / " no" after content-free passages and questions is subtracted from each item's scores.

    python experiments/eval/boolq_calibration.py outputs/runs/boolq/<run>/predictions.jsonl

The base model is composed exactly as ``eval.py`` composes it; pass Hydra overrides after the file
(``base_model=mistral_7b``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONTENT_FREE = ("N/A", "", "[MASK]")
PROMPT = "{context}\nQuestion: {question}?\nAnswer:"  # conf/task/boolq.yaml `prompt`
ANSWERS = (" yes", " no")  # option A, option B


def answer_loglik(model, tokenizer, prompt: str, target: str) -> float:
    """Sum of log-probabilities of ``target``'s tokens after ``prompt`` (no special tokens)."""
    p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    t_ids = tokenizer(target, add_special_tokens=False).input_ids
    ids = torch.tensor([p_ids + t_ids])
    with torch.no_grad():
        logp = model(ids).logits.float().log_softmax(-1)[0]
    return float(sum(logp[len(p_ids) - 1 + i, tok] for i, tok in enumerate(t_ids)))


def main() -> None:
    """Print raw and calibrated accuracy for one BoolQ predictions file."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions", type=Path, help="predictions.jsonl of a log-likelihood BoolQ run")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/eval.yaml, e.g. base_model=smollm2_135m")
    args = ap.parse_args()

    rows = []
    with args.predictions.open() as fh:
        for lineno, line in enumerate(fh, 1):
            row = json.loads(line)
            if "loglik" not in row or len(row["loglik"]) != 2:
                raise SystemExit(
                    f"{args.predictions}:{lineno}: expected a 2-option 'loglik' list (BoolQ, loglikelihood mode)"
                )
            rows.append(row)
    conf_dir = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=["task=boolq", *args.overrides])
    spec = instantiate(cfg.base_model)
    model, tokenizer = spec.load()
    model.eval()
    per_input = []
    for cf in CONTENT_FREE:
        prompt = PROMPT.format(context=cf, question=cf)
        per_input.append([answer_loglik(model, tokenizer, prompt, a) for a in ANSWERS])
    prior = [sum(p[i] for p in per_input) / len(per_input) for i in range(2)]
    n = len(rows)
    gold = [r["gold"] for r in rows]
    calibrated = ["A" if r["loglik"][0] - prior[0] > r["loglik"][1] - prior[1] else "B" for r in rows]
    print(
        f"content-free log-likelihood of ' yes' / ' no' per input {CONTENT_FREE}: "
        + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in per_input)
    )
    print(f"n={n}  gold 'yes' rate={gold.count('A') / n:.2f}")
    raw_acc = sum(r["correct"] for r in rows) / n
    raw_yes = sum(r["pred"] == "A" for r in rows) / n
    cal_acc = sum(p == g for p, g in zip(calibrated, gold)) / n
    print(f"raw:        acc={raw_acc:.3f}  predicted 'yes' rate={raw_yes:.2f}")
    print(f"calibrated: acc={cal_acc:.3f}  predicted 'yes' rate={calibrated.count('A') / n:.2f}")


if __name__ == "__main__":
    main()
