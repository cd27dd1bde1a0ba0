"""Stage ``kshot``: draw the K-shot D_K from the task's K-shot pool (the one place it is drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kexpert.data.kshot import sample_kshot
from kexpert.data.records import Example, Instruction
from kexpert.pipeline.cache import StageCache
from kexpert.pipeline.keys import node
from kexpert.pipeline.stages.results import KShot
from kexpert.tasks.task import Task
from kexpert.utils.io import read_jsonl, write_json, write_jsonl


def kshot_inputs(task_cfg: DictConfig, k_shot: int, data_seed: int) -> dict[str, Any]:
    """The cache-key inputs of a draw: the task config, K and the draw's seed."""
    return {"task": node(task_cfg), "k_shot": int(k_shot), "data_seed": int(data_seed)}


def draw_kshot(task: Task, task_cfg: DictConfig, k_shot: int, data_seed: int, cache: StageCache) -> KShot:
    """Draw ``k_shot`` examples with ``data_seed`` (cached; the same draw for every stage and method).

    Args:
        task: The task.
        task_cfg: Its config node (part of the cache key).
        k_shot: K.
        data_seed: Seed of the draw.
        cache: The stage cache.
    """

    def build(d: Path) -> None:
        ex = sample_kshot(task.kshot_pool(), int(k_shot), int(data_seed))
        write_jsonl(d / "kshot.jsonl", [e.to_dict() for e in ex])
        write_jsonl(d / "kshot_sft.jsonl", [task.to_instruction(e).to_dict() for e in ex])
        write_json(d / "info.json", {"pool": task.kshot_pool_source, "ids": [e.id for e in ex]})

    inputs = kshot_inputs(task_cfg, k_shot, data_seed)
    art = cache.run("kshot", inputs, build)
    examples = [Example.from_dict(r) for r in read_jsonl(art.path / "kshot.jsonl")]
    items: list[Instruction] = [task.to_instruction(e) for e in examples]
    return KShot(examples, items, task.kshot_pool_source, art, inputs)
