"""The pipeline's stages as functions over typed results (:mod:`kexpert.pipeline.stages.results`).

``kshot`` -> ``experts`` / ``oracle`` -> ``data`` -> ``train`` -> ``eval`` -> ``report``; each takes the results of
the stages before it plus only the sub-config it needs, and caches its artifact under a hash of exactly its inputs.
The entry points (``train.py``, ``select_experts.py``, ``select_data.py``, ``bank.py``) compose them.
"""

from kexpert.pipeline.stages.bank import build_bank_entries, instantiate_tasks, load_bank
from kexpert.pipeline.stages.data import DATA_KEYS, DataSelectionConfig, run_data_selection, select_data, selects_data
from kexpert.pipeline.stages.evaluate import eval_split_overlap, eval_task, evaluate_model, evaluator_kwargs
from kexpert.pipeline.stages.experts import choose_experts, rank_oracle, run_selection, selection_context
from kexpert.pipeline.stages.kshot import draw_kshot, kshot_inputs
from kexpert.pipeline.stages.report import (
    count_params,
    log_metrics,
    publish_run_dir,
    routing_report,
    stage_cache_summary,
    summary_line,
)
from kexpert.pipeline.stages.results import Evaluation, ExpertPick, KShot, SelectedData, StageLog, TrainedModel
from kexpert.pipeline.stages.train import train_inputs, train_method

__all__ = [
    "DATA_KEYS",
    "DataSelectionConfig",
    "Evaluation",
    "ExpertPick",
    "KShot",
    "SelectedData",
    "StageLog",
    "TrainedModel",
    "build_bank_entries",
    "choose_experts",
    "count_params",
    "draw_kshot",
    "eval_split_overlap",
    "eval_task",
    "evaluate_model",
    "evaluator_kwargs",
    "instantiate_tasks",
    "kshot_inputs",
    "load_bank",
    "log_metrics",
    "publish_run_dir",
    "rank_oracle",
    "routing_report",
    "run_data_selection",
    "run_selection",
    "select_data",
    "selection_context",
    "selects_data",
    "stage_cache_summary",
    "summary_line",
    "train_inputs",
    "train_method",
]
