"""Stage ``data``: K-shot-guided Sim-Div data selection (Algorithm 2, docs/method.md §5).

Steps: load the open pool (config group ``pool``); embed K-shot, pool and eval split through the on-disk cache
(``encoder``); drop pool items overlapping the eval split (``decontamination``); select (``data_selection``);
write ``selected.jsonl`` (K-shot + selected), ``stats.json``, ``similarity_hist.png`` and the audit files.
:func:`run_data_selection` is the body of ``python select_data.py``; :func:`select_data` runs it as a cached
stage of ``train.py`` on the run's K-shot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from kexpert.data.pools import load_pool
from kexpert.data.records import Instruction
from kexpert.pipeline.cache import StageCache
from kexpert.pipeline.keys import node
from kexpert.pipeline.stages.results import KShot, SelectedData
from kexpert.selection.data.decontamination import DecontaminationResult, Decontaminator
from kexpert.selection.data.embedding_cache import embed_texts
from kexpert.selection.data.encoders import Encoder
from kexpert.selection.data.report import write_outputs
from kexpert.selection.data.selectors import Selection, Selector
from kexpert.selection.data.texts import eval_answers, eval_segments, item_text
from kexpert.tasks.task import Task
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.instantiate import instantiate, to_container
from kexpert.utils.io import read_jsonl, sha1_of
from kexpert.utils.logging import get_logger
from kexpert.utils.provenance import provenance

log = get_logger(__name__)
DATA_KEYS = ("pool", "encoder", "data_selection", "embedding", "decontamination", "index")
"""The run-config keys data selection reads (the fields of :class:`DataSelectionConfig`)."""


@dataclass(frozen=True)
class DataSelectionConfig:
    """The sub-configs data selection reads.

    ``conf/pool``, ``conf/encoder``, ``conf/data_selection``, and ``conf/data_settings``'s ``embedding``,
    ``decontamination`` and ``index``.
    """

    pool: DictConfig | None
    encoder: DictConfig
    data_selection: DictConfig
    embedding: DictConfig
    decontamination: DictConfig
    index: DictConfig | None = None

    def key(self) -> dict[str, Any]:
        """The cache-key inputs (beside the K-shot's)."""
        return {k: node(getattr(self, k)) for k in DATA_KEYS}

    @property
    def pool_name(self) -> str:
        """The pool's name, for messages."""
        return str(self.pool.get("name", "pool")) if isinstance(self.pool, DictConfig) else "pool"


def selects_data(data_selection_cfg: DictConfig | None) -> bool:
    """Whether the configured strategy selects anything (``data_selection=none`` has budget 0: K-shot only)."""
    if data_selection_cfg is None:
        return False
    return int(instantiate(data_selection_cfg, key="data_selection").budget) > 0


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


def run_data_selection(
    task: Task, kshot: KShot, settings: DataSelectionConfig, data_dir: Any, out_dir: Path
) -> DataSelectionResult:
    """Select open data for ``task`` guided by ``kshot`` and write the outputs into ``out_dir``.

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
    kshot_items = list(kshot.items)
    eval_ex = task.eval_examples()
    t = lap("task", t)

    if settings.pool is None:
        raise ConfigError("pool: no pool configured (choose one with pool=<name>, see conf/pool/)")
    pool_all = load_pool(OmegaConf.to_container(settings.pool, resolve=True), data_dir)
    if not pool_all:
        raise DataError(
            f"pool {settings.pool_name}: no items in its sources {OmegaConf.to_container(settings.pool.sources)}"
        )
    t = lap("load_pool", t)

    selector: Selector = instantiate(settings.data_selection, key="data_selection")
    if selector.budget > len(pool_all):  # decontamination only shrinks the pool: fail before embedding it
        raise ConfigError(
            f"data_selection.budget={selector.budget} is larger than the pool ({len(pool_all)} items in pool "
            f"{settings.pool_name}); lower data_selection.budget or add sources to the pool"
        )
    encoder: Encoder = instantiate(settings.encoder, key="encoder")
    decon: Decontaminator = instantiate(settings.decontamination, key="decontamination")
    emb_cfg = settings.embedding
    template, max_chars = str(emb_cfg.text_template), emb_cfg.get("max_chars")
    pool_texts = [item_text(it, template, max_chars) for it in pool_all]
    kshot_texts = [item_text(it, template, max_chars) for it in kshot_items]
    eval_texts = [item_text(task.to_instruction(ex), template, max_chars) for ex in eval_ex]
    cache_dir = emb_cfg.get("cache_dir")
    kw = {"cache_dir": cache_dir, "shard_size": int(emb_cfg.shard_size), "progress": bool(emb_cfg.progress)}
    pool_emb = embed_texts(pool_texts, encoder, desc=f"embed pool {settings.pool_name}", **kw)
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
            f"pool {settings.pool_name}: all {len(pool_all)} items were dropped by decontamination against the "
            f"{task.name} eval split; nothing to select from"
        )
    sel = selector.select(pool_emb[keep], kshot_emb)
    t = lap("select", t)

    stats: dict[str, Any] = {
        "task": task.name,
        "k_shot": len(kshot_items),
        "data_seed": int(kshot.inputs["data_seed"]),
        "pool": settings.pool_name,
        "pool_sources": sorted({it.source for it in pool_all}),
        "pool_size": len(pool_all),
        "decontamination": dres.stats,
        "pool_after_decontamination": len(pool),
        "selection": sel.stats,
        "candidates": len(sel.candidates),
        "kept_after_dedup": len(sel.indices),
        "selected_total_with_kshot": len(kshot_items) + len(sel.indices),
        "encoder": encoder.identity,
        "embedding_dim": int(pool_emb.shape[1]),
        "text_template": template,
        "config_hash": sha1_of(
            to_container(
                {
                    "task": kshot.inputs["task"],
                    "pool": settings.pool,
                    "encoder": settings.encoder,
                    "data_selection": settings.data_selection,
                    "decontamination": settings.decontamination,
                    "embedding": settings.embedding,
                    "k_shot": kshot.inputs["k_shot"],
                    "data_seed": kshot.inputs["data_seed"],
                }
            )
        ),
        "timings_s": timings,
        "provenance": provenance(),
    }
    timings["total_before_write"] = round(time.perf_counter() - t_start, 3)
    title = f"{task.name}: K={len(kshot_items)}, {sel.stats['selector']}, pool {settings.pool_name} ({len(pool)})"
    paths = write_outputs(out_dir, kshot_items, pool, sel, dres, pool_all, stats, title)
    selected = [pool[i] for i in sel.indices.tolist()]
    log.info(
        "%s: pool %d -> %d decontaminated (-%d) -> %d candidates -> %d kept after dedup; + K-shot %d = %d -> %s",
        task.name,
        len(pool_all),
        len(pool),
        dres.stats.get("dropped_total", 0),
        len(sel.candidates),
        len(selected),
        len(kshot_items),
        len(kshot_items) + len(selected),
        paths["selected"],
    )
    print(
        f"{task.name}: pool {len(pool_all)}, decontaminated -{len(pool_all) - len(pool)}, candidates "
        f"{len(sel.candidates)}, kept {len(selected)} -> {paths['selected']} ({len(kshot_items) + len(selected)} rows)"
    )
    return DataSelectionResult(kshot_items + selected, kshot_items, selected, stats, paths, sel, dres)


def select_data(
    task: Task, kshot: KShot, settings: DataSelectionConfig, cache: StageCache, data_dir: Any
) -> SelectedData:
    """Stage ``data``: D_A for the run's K-shot (cached by K-shot and the data-selection sub-configs).

    ``selected.jsonl`` holds D_K followed by D_A; D_A is what follows the K-shot's rows.
    """
    if not selects_data(settings.data_selection):
        return SelectedData([], None)  # data_selection=none: K-shot only
    inputs = {**kshot.inputs, **settings.key()}
    art = cache.run("data", inputs, lambda d: run_data_selection(task, kshot, settings, data_dir, d))
    rows = read_jsonl(art.path / "selected.jsonl")
    return SelectedData([Instruction.from_dict(r) for r in rows[len(kshot.items) :]], art)
