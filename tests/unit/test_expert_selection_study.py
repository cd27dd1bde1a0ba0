"""The signal study's correlation table (Spearman of K-shot signals with eval accuracy)."""

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from kexpert.pipeline.expert_signal_study import correlations, markdown


def test_correlations_match_scipy_and_handle_constants():
    eval_acc = np.array([0.2, 0.5, 0.4, 0.9])
    sig = {
        "accuracy": np.array([0.1, 0.6, 0.3, 0.8]),
        "reasoning_ppl": np.array([9.0, 3.0, 4.0, 1.0]),
        "ppl": np.array([2.0, 2.0, 2.0, 2.0]),
    }
    rows = {r["signal"]: r for r in correlations(sig, eval_acc)}
    assert rows["accuracy"]["spearman_rho"] == pytest.approx(1.0)
    assert rows["reasoning_ppl"]["spearman_rho"] == pytest.approx(-1.0)
    assert rows["reasoning_ppl"]["p_value"] == pytest.approx(spearmanr(sig["reasoning_ppl"], eval_acc).pvalue)
    assert math.isnan(rows["ppl"]["spearman_rho"]) and rows["ppl"]["expected_sign"] == "-"
    text = markdown(
        "arc_c",
        "python -m kexpert.pipeline.expert_signal_study task=arc_c",
        list(rows.values()),
        [{"name": "l0", "eval_accuracy": 0.2, "accuracy": 0.1, "reasoning_ppl": 9.0, "ppl": 2.0}],
        "info",
    )
    assert "`python -m kexpert.pipeline.expert_signal_study task=arc_c`" in text
    assert "| reasoning_ppl | -1.000 |" in text and "| l0 | 0.200 |" in text
    assert "| ppl | undefined: the signal is the same for every LoRA | — |" in text and "nan" not in text
