"""Algorithm 1 rank fusion, checked by hand on small tables (docs/method.md §3.4)."""

import numpy as np
import pytest

from kexpert.selection.experts.diversity import DiversityConfig
from kexpert.selection.experts.rank_fusion import choose_group, competition_rank, rank_signals
from kexpert.utils.errors import ConfigError

# five LoRAs; by hand: R_A = [4, 1, 1, 5, 3], R_P = [3, 4, 2, 1, 5], R_A + R_P = [7, 5, 3, 6, 8]
ACC = [0.5, 0.7, 0.7, 0.2, 0.6]
RPPL = [2.0, 3.0, 1.5, 1.0, 4.0]
WEIGHTS = {"reasoning_ppl": 1.0, "accuracy": 1.0}


def _bank_sim() -> np.ndarray:
    s = np.eye(5)
    for (i, j), v in {(2, 1): 0.9, (2, 3): 0.1, (2, 0): 0.5, (1, 3): 0.3, (1, 0): 0.2, (3, 0): 0.4}.items():
        s[i, j] = s[j, i] = v
    s[4, :4] = s[:4, 4] = 0.0
    return s


def test_competition_rank_ties_share_smallest_and_nan_last():
    assert competition_rank([0.7, 0.5, 0.7, np.nan, 0.2], higher_is_better=True).tolist() == [1, 3, 1, 5, 4]
    assert competition_rank([3.0, 1.0, 1.0, 2.0], higher_is_better=False).tolist() == [4, 1, 1, 3]


def test_rank_table_by_hand():
    table = rank_signals({"accuracy": ACC, "reasoning_ppl": RPPL}, WEIGHTS)
    assert table.ranks["accuracy"].tolist() == [4, 1, 1, 5, 3]
    assert table.ranks["reasoning_ppl"].tolist() == [3, 4, 2, 1, 5]
    assert table.rank_sum.tolist() == [7, 5, 3, 6, 8]
    assert table.order.tolist() == [2, 1, 3, 0, 4]


def test_algorithm1_by_hand():
    table = rank_signals({"accuracy": ACC, "reasoning_ppl": RPPL}, WEIGHTS)
    cand = table.order[:4].tolist()  # M = 4 -> [2, 1, 3, 0]
    sim = _bank_sim()[np.ix_(cand, cand)]
    # groups (bank ids): {2,1} 8+R_D 6 = 14, {2,3} 9+1 = 10, {2,0} 10+5 = 15, {1,3} 11+3 = 14, {1,0} 12+2 = 14,
    # {3,0} 13+4 = 17  -> {2,3}
    choice = choose_group(table.rank_sum[cand], sim, group_size=2)
    assert sorted(cand[i] for i in choice.members) == [2, 3]
    assert choice.total == 10 and choice.diversity_rank == 1 and choice.model_rank_sum == 9
    assert choice.num_groups == 6 and choice.exact
    assert choice.mean_similarity == pytest.approx(0.1)
    # without the diversity term the two best-ranked LoRAs win: {2, 1}
    plain = choose_group(table.rank_sum[cand], sim, group_size=2, diversity_weight=0.0)
    assert sorted(cand[i] for i in plain.members) == [1, 2]


def test_rank_sum_ties_follow_signal_order_then_bank_order():
    acc, rppl = [0.9, 0.5], [2.0, 1.0]  # rank sums tie at 3
    assert rank_signals({"accuracy": acc, "reasoning_ppl": rppl}, WEIGHTS).order.tolist() == [1, 0]
    flipped = {"accuracy": 1.0, "reasoning_ppl": 1.0}
    assert rank_signals({"accuracy": acc, "reasoning_ppl": rppl}, flipped).order.tolist() == [0, 1]
    assert rank_signals({"accuracy": [0.5, 0.5, 0.5]}, {"accuracy": 1.0}).order.tolist() == [0, 1, 2]


def test_group_ties_go_to_the_more_diverse_group():
    sim = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.5], [0.1, 0.5, 1.0]])
    # {0,1}: 1+2 + R_D 2 = 5; {0,2}: 1+3 + R_D 1 = 5; {1,2}: 2+3 + 3 = 8 -> tie, the more diverse {0,2} wins
    choice = choose_group([1.0, 2.0, 3.0], sim, group_size=2)
    assert choice.members == (0, 2)
    assert choice.runners_up[0][0] == (0, 1) and choice.runners_up[0][1] == 5


def test_weights_scale_ranks():
    table = rank_signals({"accuracy": ACC, "reasoning_ppl": RPPL}, {"reasoning_ppl": 2.0, "accuracy": 1.0})
    assert table.rank_sum.tolist() == [10, 9, 5, 7, 13]


def test_beam_fallback_beyond_max_groups_is_flagged_and_reasonable():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    rank_sum = np.arange(2, 26, 2, dtype=float)
    exact = choose_group(rank_sum, sim, 4)
    approx = choose_group(rank_sum, sim, 4, config=DiversityConfig(max_groups=10, beam_width=495, rank_samples=20000))
    assert exact.exact and not approx.exact
    assert approx.total <= exact.total + 0.1 * exact.num_groups  # estimated R_D: close to the exact optimum
    assert len(set(approx.members)) == 4


def test_invalid_inputs():
    with pytest.raises(ConfigError, match="unknown signal"):
        rank_signals({"accuracy": ACC}, {"bleu": 1.0})
    with pytest.raises(ConfigError, match="not computed"):
        rank_signals({"accuracy": ACC}, {"ppl": 1.0})
    with pytest.raises(ConfigError, match="num_experts=5"):
        choose_group([1.0, 2.0], np.eye(2), group_size=5)
