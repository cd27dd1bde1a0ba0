"""``python select_data.py``: K-shot-guided Sim-Div data selection for one task (docs/method.md §5, Algorithm 2).

Composes the stages: draw the K-shot (``k_shot``, ``data_seed``), then select from the open pool into
``paths.output_dir`` (``selected.jsonl`` = K-shot + selected, ``stats.json``, ``similarity_hist.png``, audit files).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from kexpert.pipeline.cache import StageCache
from kexpert.pipeline.stages import DATA_KEYS, DataSelectionConfig, draw_kshot, run_data_selection
from kexpert.pipeline.stages.data import DataSelectionResult
from kexpert.utils.instantiate import instantiate


def run(cfg: DictConfig) -> DataSelectionResult:
    """Select data for ``cfg.task`` and write the outputs into ``cfg.paths.output_dir``.

    Raises:
        DataError: the pool is empty; ConfigError: the budget exceeds the pool, or a bad config value.
    """
    task = instantiate(cfg.task, key="task")
    kshot = draw_kshot(task, cfg.task, cfg.k_shot, cfg.data_seed, StageCache(cfg.paths.cache_dir))
    settings = DataSelectionConfig(**{k: cfg.get(k) for k in DATA_KEYS})
    return run_data_selection(task, kshot, settings, cfg.paths.data_dir, Path(cfg.paths.output_dir))
