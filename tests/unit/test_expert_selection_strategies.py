"""Strategies of the expert_selection group on a fake context with hand-made signals (docs/method.md §3.4, §9)."""

import numpy as np
import pytest

from kexpert.bank.manifest import Bank, BankEntry
from kexpert.selection.experts.fixed import FixedSelector
from kexpert.selection.experts.oracle import OracleSelector
from kexpert.selection.experts.random_pick import RandomSelector
from kexpert.selection.experts.rank_sum import RankSumSelector
from kexpert.selection.experts.rocket import RocketSelector
from kexpert.utils.errors import ConfigError

SIGNALS = {
    "accuracy": [0.5, 0.7, 0.7, 0.2, 0.6],
    "reasoning_ppl": [2.0, 3.0, 1.5, 1.0, 4.0],
    "ppl": [5.0, 1.0, 2.0, 3.0, 4.0],
}


class FakeContext:
    def __init__(self, sim):
        self.bank = Bank("fake", "/nonexistent", [BankEntry(f"l{i}", f"/x/{i}", "m") for i in range(5)])
        self.sim = sim
        self.eval_limit, self.eval_seed = None, 0

    def signal(self, name):
        return np.array(SIGNALS[name])

    def eval_accuracy(self):
        return np.array([0.1, 0.9, 0.3, 0.9, 0.5])

    def similarity(self, config, progress=True):
        return self.sim


def _sim():
    s = np.eye(5)
    for (i, j), v in {(2, 1): 0.9, (2, 3): 0.1, (2, 0): 0.5, (1, 3): 0.3, (1, 0): 0.2, (3, 0): 0.4}.items():
        s[i, j] = s[j, i] = v
    return s


def test_rocket_runs_algorithm_1():
    sel = RocketSelector(num_experts=2, num_candidates=4).select(FakeContext(_sim()))
    assert sel.candidates == ["l2", "l1", "l3", "l0"]
    assert sorted(sel.chosen) == ["l2", "l3"]  # worked out by hand in test_rank_fusion.py
    assert sel.group["total_rank"] == 10 and sel.group["diversity_rank"] == 1 and sel.group["exact"]
    assert sel.rank_sum == {"l0": 7, "l1": 5, "l2": 3, "l3": 6, "l4": 8}


def test_rank_sum_strategies():
    ctx = FakeContext(_sim())
    assert RankSumSelector(2, {"reasoning_ppl": 1, "accuracy": 1}).select(ctx).chosen == ["l2", "l1"]
    assert RankSumSelector(2, {"accuracy": 1}).select(ctx).chosen == ["l1", "l2"]  # tie at 0.7: bank order
    assert RankSumSelector(3, {"reasoning_ppl": 1}).select(ctx).chosen == ["l3", "l2", "l0"]
    assert RankSumSelector(1, {"ppl": 1}).select(ctx).chosen == ["l1"]


def test_oracle_is_labelled_and_uses_eval_accuracy():
    sel = OracleSelector(num_experts=2).select(FakeContext(_sim()))
    assert sel.oracle and sel.chosen == ["l1", "l3"] and "ORACLE" in sel.notes[0]


def test_random_and_fixed():
    ctx = FakeContext(_sim())
    a, b = RandomSelector(3, seed=1).select(ctx).chosen, RandomSelector(3, seed=1).select(ctx).chosen
    assert a == b and len(set(a)) == 3
    draws = {tuple(RandomSelector(3, seed=s).select(ctx).chosen) for s in range(6)}
    assert len(draws) > 1  # the seed matters
    assert FixedSelector(["l4", "l0"]).select(ctx).chosen == ["l4", "l0"]
    with pytest.raises(ConfigError, match="no entry 'l9'"):
        FixedSelector(["l9"]).select(ctx)
    with pytest.raises(ConfigError, match="num_experts=3"):
        FixedSelector(["l1", "l2"], num_experts=3)


def test_invalid_sizes():
    with pytest.raises(ConfigError, match="num_candidates"):
        RocketSelector(num_experts=4, num_candidates=3)
    with pytest.raises(ConfigError, match="bank size"):
        RankSumSelector(6, {"accuracy": 1}).select(FakeContext(_sim()))
