"""FAISS index helpers for Sim-Div dedup and decontamination (docs/method.md §5).

Near-duplicate search is a *range* search on inner product (= cosine for unit vectors): every pair above a
threshold, found without ever materialising a dense ``n x n`` similarity matrix. The index is flat (exact) by
default; IVF or HNSW for large sets (approximate: a few close pairs may be missed); a GPU index when FAISS
reports a GPU. GPU indexes have no range search, so there it is emulated by k-NN with a growing k, which is
exact for a flat index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kexpert.utils.errors import ConfigError
from kexpert.utils.logging import get_logger

log = get_logger(__name__)

_KINDS = ("auto", "flat", "ivf", "hnsw")


@dataclass
class IndexConfig:
    """How to index vectors for neighbour search.

    Attributes:
        kind: ``flat`` (exact), ``ivf``, ``hnsw``, or ``auto`` (flat up to ``auto_flat_max`` vectors, else IVF).
        auto_flat_max: Largest database that ``auto`` indexes flat.
        nlist: IVF cells; ``None`` = ``4 * sqrt(n)``.
        nprobe: IVF cells searched per query.
        hnsw_m: HNSW graph degree.
        ef_construction: HNSW build beam.
        ef_search: HNSW search beam.
        gpu: ``auto`` (use a GPU when faiss has one), ``true`` (require it) or ``false``.
        query_batch: Queries per search call (bounds memory of range-search results).
    """

    kind: str = "auto"
    auto_flat_max: int = 200_000
    nlist: int | None = None
    nprobe: int = 32
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    gpu: str | bool = "auto"
    query_batch: int = 16384

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(f"index.kind must be one of {_KINDS}, got {self.kind!r}")
        if str(self.gpu).lower() not in ("auto", "true", "false"):
            raise ConfigError(f"index.gpu must be auto, true or false, got {self.gpu!r}")

    @classmethod
    def build(cls, spec: IndexConfig | dict | None) -> IndexConfig:
        """From a config mapping (``None`` = defaults)."""
        if spec is None:
            return cls()
        if isinstance(spec, IndexConfig):
            return spec
        return cls(**dict(spec))


def _faiss():
    import faiss

    return faiss


def gpu_available() -> bool:
    """Whether this FAISS build has GPU support and sees a GPU."""
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _want_gpu(cfg: IndexConfig) -> bool:
    flag = str(cfg.gpu).lower()
    if flag == "false":
        return False
    has = gpu_available()
    if flag == "true" and not has:
        raise ConfigError("index.gpu=true but FAISS reports no GPU (install faiss-gpu on a GPU machine)")
    return has


def resolve_kind(cfg: IndexConfig, n: int) -> str:
    """The concrete index kind for a database of ``n`` vectors."""
    if cfg.kind == "auto":
        return "flat" if n <= cfg.auto_flat_max else "ivf"
    return cfg.kind


def build_index(x: np.ndarray, cfg: IndexConfig | None = None):
    """An inner-product index over the rows of ``x`` (float32, unit rows).

    Args:
        x: ``(n, d)`` database vectors.
        cfg: Index settings.

    Returns:
        A populated ``faiss.Index`` (on GPU when configured and available; HNSW stays on CPU).
    """
    faiss = _faiss()
    cfg = cfg or IndexConfig()
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    kind = resolve_kind(cfg, n)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = cfg.nlist or max(1, int(4 * math.sqrt(n)))
        nlist = min(nlist, max(1, n // 39))  # faiss wants >= 39 training points per cell
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234
        train = x if n <= 256 * nlist else x[np.random.default_rng(0).choice(n, 256 * nlist, replace=False)]
        index.train(train)
        index.nprobe = min(cfg.nprobe, nlist)
    else:  # hnsw
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
    if kind != "hnsw" and _want_gpu(cfg):
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
        index.referenced_objects = [*getattr(index, "referenced_objects", []), res]  # keep res alive with it
        log.info("faiss: %s index on GPU", kind)
    index.add(x)
    return index


def _is_gpu(index) -> bool:
    return "Gpu" in type(index).__name__


def range_search(index, queries: np.ndarray, threshold: float, cfg: IndexConfig | None = None):
    """All database rows with inner product ``> threshold`` to each query.

    Args:
        index: From :func:`build_index`.
        queries: ``(m, d)`` float32 unit vectors.
        threshold: Similarity threshold (strict).
        cfg: For ``query_batch``.

    Returns:
        ``(lims, sims, ids)`` in FAISS range-search layout: the neighbours of query ``i`` are
        ``ids[lims[i]:lims[i + 1]]`` with similarities ``sims[lims[i]:lims[i + 1]]``.
    """
    cfg = cfg or IndexConfig()
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    lims_parts, sims_parts, ids_parts = [np.zeros(1, dtype=np.int64)], [], []
    offset = 0
    for start in range(0, len(queries), cfg.query_batch):
        q = queries[start : start + cfg.query_batch]
        if _is_gpu(index):
            lims, sims, ids = _knn_range(index, q, threshold)
        else:
            lims, sims, ids = index.range_search(q, float(threshold))
        lims_parts.append(lims[1:].astype(np.int64) + offset)
        sims_parts.append(sims)
        ids_parts.append(ids.astype(np.int64))
        offset += int(lims[-1])
    return (
        np.concatenate(lims_parts),
        np.concatenate(sims_parts) if sims_parts else np.zeros(0, np.float32),
        np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64),
    )


def _knn_range(index, q: np.ndarray, threshold: float, k0: int = 32):
    """Range search by k-NN, doubling k until every query's k-th neighbour is at or below the threshold."""
    k = min(k0, index.ntotal)
    while True:
        sims, ids = index.search(q, k)
        if k >= index.ntotal or not (sims[:, -1] > threshold).any():
            break
        k = min(2 * k, index.ntotal)
    mask = (sims > threshold) & (ids >= 0)
    lims = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64)
    return lims, sims[mask].astype(np.float32), ids[mask].astype(np.int64)


def neighbours_above(x: np.ndarray, threshold: float, cfg: IndexConfig | None = None):
    """Every pair ``(i, j)``, ``i != j``, of rows of ``x`` with cosine ``> threshold``.

    Args:
        x: ``(n, d)`` unit vectors.
        threshold: Similarity threshold.
        cfg: Index settings.

    Returns:
        ``(rows, cols, sims)``: both directions of each pair.
    """
    index = build_index(x, cfg)
    lims, sims, ids = range_search(index, x, threshold, cfg)
    rows = np.repeat(np.arange(len(x), dtype=np.int64), np.diff(lims))
    keep = ids != rows
    return rows[keep], ids[keep], sims[keep]
