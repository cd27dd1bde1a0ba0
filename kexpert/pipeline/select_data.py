"""``python select_data.py``: K-shot-guided Sim-Div data selection for one task (METHOD.md §5, Algorithm 2).

Steps: draw the K-shot (``k_shot``, ``data_seed``); load the open pool (config group ``pool``); embed K-shot,
pool and eval split through the on-disk cache (``encoder``); drop pool items overlapping the eval split
(``decontamination``); select (``data_selection``); write ``selected.jsonl`` (K-shot + selected),
``stats.json``, ``similarity_hist.png`` and the audit files into ``paths.output_dir``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from kexpert.data.kshot import sample_kshot
from kexpert.data.pools import load_pool
from kexpert.data.records import Instruction
from kexpert.selection.data.decontamination import DecontaminationResult, Decontaminator
from kexpert.selection.data.embedding_cache import embed_texts
from kexpert.selection.data.encoders import Encoder
from kexpert.selection.data.report import write_outputs
from kexpert.selection.data.selectors import Selection, Selector
from kexpert.selection.data.texts import eval_answers, eval_segments, item_text
from kexpert.tasks.task import Task
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.instantiate import instantiate, to_container
from kexpert.utils.io import sha1_of
from kexpert.utils.logging import get_logger
from kexpert.utils.provenance import provenance

log = get_logger(__name__)


@dataclass
class DataSelectionResult:
    """What a run produced.

    Attributes:
        items: K-shot followed by the selected pool items (the rows of ``selected.jsonl``).
        kshot: The K-shot items.
        selected: The selected pool items, best first.
        stats: The contents of ``stats.json``.
        paths: Output name -> file.
        selection: The raw selection (indices into the decontaminated pool).
        decontamination: The raw decontamination result (indices into the loaded pool).
    """

    items: list[Instruction]
    kshot: list[Instruction]
    selected: list[Instruction]
    stats: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    selection: Selection | None = None
    decontamination: DecontaminationResult | None = None


def _pool_name(cfg: DictConfig) -> str:
    pool = cfg.get("pool")
    return str(pool.get("name", "pool")) if isinstance(pool, DictConfig) else "pool"


def run(cfg: DictConfig) -> DataSelectionResult:
    """Select data for ``cfg.task`` and write the outputs into ``cfg.paths.output_dir``.

    Returns:
        The selection result.

    Raises:
        DataError: the pool is empty; ConfigError: the budget exceeds the pool, or a bad config value.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 3)
        return time.perf_counter()

    t = time.perf_counter()
    task: Task = instantiate(cfg.task, key="task")
    kshot_ex = sample_kshot(task.kshot_pool(), int(cfg.k_shot), int(cfg.data_seed))
    kshot = [task.to_instruction(ex) for ex in kshot_ex]
    eval_ex = task.eval_examples()
    t = lap("task", t)

    if cfg.get("pool") is None:
        raise ConfigError("pool: no pool configured (choose one with pool=<name>, see conf/pool/)")
    pool_all = load_pool(OmegaConf.to_container(cfg.pool, resolve=True), cfg.paths.data_dir)
    if not pool_all:
        raise DataError(f"pool {_pool_name(cfg)}: no items in its sources {OmegaConf.to_container(cfg.pool.sources)}")
    t = lap("load_pool", t)

    selector: Selector = instantiate(cfg.data_selection, key="data_selection")
    if selector.budget > len(pool_all):  # decontamination only shrinks the pool: fail before embedding it
        raise ConfigError(
            f"data_selection.budget={selector.budget} is larger than the pool ({len(pool_all)} items in pool "
            f"{_pool_name(cfg)}); lower data_selection.budget or add sources to the pool"
        )
    encoder: Encoder = instantiate(cfg.encoder, key="encoder")
    decon: Decontaminator = instantiate(cfg.decontamination, key="decontamination")
    emb_cfg = cfg.embedding
    template, max_chars = str(emb_cfg.text_template), emb_cfg.get("max_chars")
    pool_texts = [item_text(it, template, max_chars) for it in pool_all]
    kshot_texts = [item_text(it, template, max_chars) for it in kshot]
    eval_texts = [item_text(task.to_instruction(ex), template, max_chars) for ex in eval_ex]
    cache_dir = emb_cfg.get("cache_dir")
    kw = {"cache_dir": cache_dir, "shard_size": int(emb_cfg.shard_size), "progress": bool(emb_cfg.progress)}
    pool_emb = embed_texts(pool_texts, encoder, desc=f"embed pool {_pool_name(cfg)}", **kw)
    kshot_emb = embed_texts(kshot_texts, encoder, desc=f"embed {task.name} K-shot", **kw)
    eval_emb = None
    if decon.enabled and decon.embed_threshold is not None and eval_texts:
        eval_emb = embed_texts(eval_texts, encoder, desc=f"embed {task.name} eval", **kw)
    t = lap("embed", t)

    dres = decon(
        pool_texts,
        [eval_segments(ex) for ex in eval_ex],
        pool_emb,
        eval_emb,
        eval_answers=[eval_answers(ex) for ex in eval_ex],
    )
    keep = np.flatnonzero(dres.keep)
    pool = [pool_all[i] for i in keep.tolist()]
    t = lap("decontaminate", t)

    if not pool:
        raise DataError(
            f"pool {_pool_name(cfg)}: all {len(pool_all)} items were dropped by decontamination against the "
            f"{task.name} eval split; nothing to select from"
        )
    sel = selector.select(pool_emb[keep], kshot_emb)
    t = lap("select", t)

    stats: dict[str, Any] = {
        "task": task.name,
        "k_shot": len(kshot),
        "data_seed": int(cfg.data_seed),
        "pool": _pool_name(cfg),
        "pool_sources": sorted({it.source for it in pool_all}),
        "pool_size": len(pool_all),
        "decontamination": dres.stats,
        "pool_after_decontamination": len(pool),
        "selection": sel.stats,
        "candidates": len(sel.candidates),
        "kept_after_dedup": len(sel.indices),
        "selected_total_with_kshot": len(kshot) + len(sel.indices),
        "encoder": encoder.identity,
        "embedding_dim": int(pool_emb.shape[1]),
        "text_template": template,
        "config_hash": sha1_of(
            to_container(
                {
                    k: cfg[k]
                    for k in (
                        "task",
                        "pool",
                        "encoder",
                        "data_selection",
                        "decontamination",
                        "embedding",
                        "k_shot",
                        "data_seed",
                    )
                }
            )
        ),
        "timings_s": timings,
        "provenance": provenance(),
    }
    timings["total_before_write"] = round(time.perf_counter() - t_start, 3)
    title = f"{task.name}: K={len(kshot)}, {sel.stats['selector']}, pool {_pool_name(cfg)} ({len(pool)})"
    paths = write_outputs(cfg.paths.output_dir, kshot, pool, sel, dres, pool_all, stats, title)
    selected = [pool[i] for i in sel.indices.tolist()]
    log.info(
        "%s: pool %d -> %d decontaminated (-%d) -> %d candidates -> %d kept after dedup; + K-shot %d = %d -> %s",
        task.name,
        len(pool_all),
        len(pool),
        dres.stats.get("dropped_total", 0),
        len(sel.candidates),
        len(selected),
        len(kshot),
        len(kshot) + len(selected),
        paths["selected"],
    )
    print(
        f"{task.name}: pool {len(pool_all)}, decontaminated -{len(pool_all) - len(pool)}, candidates "
        f"{len(sel.candidates)}, kept {len(selected)} -> {paths['selected']} ({len(kshot) + len(selected)} rows)"
    )
    return DataSelectionResult(kshot + selected, kshot, selected, stats, paths, sel, dres)
