"""Loaders against the real files in shared/data (skipped with a message when absent).

The expected sizes are the paper's evaluation denominators (docs/method.md §7).
"""

import pytest
from hydra.utils import instantiate
from omegaconf import open_dict

EXPECTED = {  # task: (eval items, K-shot pool, pool source)
    "arc_c": (295, 1117, "train"),  # train: 1119 rows, 2 without 4 options
    "arc_e": (567, 2241, "train"),  # train: 2251 rows, 10 without 4 options
    "piqa": (1838 - 200, 200, "holdout:200"),
    "boolq": (3270 - 200, 200, "holdout:200"),
    "gsm8k": (1319, 7473, "train"),
    "mbpp": (500, 374, "train"),
}


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_task_sizes(name, compose_cfg, real_data_dir):
    cfg = compose_cfg("eval", [f"task={name}"])
    with open_dict(cfg):
        cfg.task.data_dir = str(real_data_dir)
    task = instantiate(cfg.task)
    n_eval, n_pool, src = EXPECTED[name]
    ev, pool = task.eval_examples(), task.kshot_pool()
    assert (len(ev), len(pool), task.kshot_pool_source) == (n_eval, n_pool, src)
    assert len({e.id for e in ev}) == len(ev), "ids must be unique"
    assert not {e.id for e in ev} & {e.id for e in pool}
    if task.answer_kind == "multiple_choice":
        assert all(e.choices[e.gold_index] == e.gold_text for e in ev)
    if name == "gsm8k":
        assert all(e.rationale for e in pool)
