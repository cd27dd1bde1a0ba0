"""The row-format registry: one name space for task-row and pool-row normalizers, clear lookup errors."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from kexpert.data.formats import FORMATS, example_normalizer, format_names, get_format, instruction_normalizer
from kexpert.data.formats import pools as P
from kexpert.data.formats import tasks as T
from kexpert.utils.errors import ConfigError


def test_every_format_has_a_kind_and_gsm8k_has_both():
    assert all(fmt.kinds for fmt in FORMATS.values())
    assert FORMATS["gsm8k"].kinds == ("task", "pool")
    assert example_normalizer("gsm8k", "x") is T.gsm8k
    assert instruction_normalizer("gsm8k", "x") is P.gsm8k
    assert instruction_normalizer("t0_p3", "x") is P.prompt_completion
    assert "arc_ai2" in format_names("task") and "arc_ai2" not in format_names("pool")


def test_wrong_kind_and_unknown_name_are_config_errors():
    with pytest.raises(ConfigError, match=r"task arc_c: split 'eval' local_format: format 'alpaca' reads pool rows"):
        example_normalizer("alpaca", "task arc_c: split 'eval' local_format")
    with pytest.raises(ConfigError, match=r"format 'arc_ai2' reads task rows into an Example, not pool rows"):
        instruction_normalizer("arc_ai2", "pool sources[0]")
    with pytest.raises(ConfigError, match=r"unknown task format 'nope'; expected one of \['arc_ai2'"):
        get_format("nope", "task", "where")


def test_task_with_a_pool_format_fails_clearly(compose_cfg):
    cfg = compose_cfg("eval", ["task=arc_c", "task.eval_split.local_format=alpaca"])
    task = instantiate(cfg.task)
    with pytest.raises(ConfigError, match="task arc_c: split 'eval' local_format: format 'alpaca' reads pool rows"):
        task.eval_examples()
