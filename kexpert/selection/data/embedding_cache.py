"""On-disk embedding cache for Sim-Div data selection (docs/method.md §5), keyed by encoder identity and text hash.

Layout: ``<cache_dir>/<encoder slug>/`` holds ``encoder.json`` (the full identity) and shards, each a pair
``<shard>.emb.npy`` (float32 vectors) + ``<shard>.keys.npy`` (16-byte text hashes, hex). A shard is written
embeddings first, keys last, each atomically, so a shard counts only once complete. Embedding runs in shards
of ``shard_size`` texts: an interrupted job keeps every finished shard and the next run encodes only what is
missing. Texts are encoded longest first, so each batch is padded only to lengths close to its own (never to a
fixed 1024 like the official script).
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from kexpert.selection.data.encoders import Encoder
from kexpert.utils.errors import DataError
from kexpert.utils.io import atomic_write, write_json
from kexpert.utils.logging import get_logger

log = get_logger(__name__)

_KEY_BYTES = 16


def text_key(text: str) -> str:
    """Stable 128-bit hex hash of a text (the cache key within one encoder)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=_KEY_BYTES).hexdigest()


def encoder_slug(identity: str) -> str:
    """Directory name for an encoder identity: readable prefix + hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", identity)[:60].strip("_")
    return f"{readable}-{hashlib.sha1(identity.encode()).hexdigest()[:12]}"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_write(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


class EmbeddingCache:
    """The shards of one encoder.

    Args:
        root: Cache root (``${paths.cache_dir}/embeddings``).
        identity: The encoder's :attr:`~kexpert.selection.data.encoders.Encoder.identity`.
    """

    def __init__(self, root: str | os.PathLike, identity: str) -> None:
        self.identity = identity
        self.dir = Path(root).expanduser() / encoder_slug(identity)
        self._index: dict[str, tuple[str, int]] | None = None
        self._dim: int | None = None

    def _shards(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name[: -len(".keys.npy")] for p in self.dir.glob("*.keys.npy"))

    def index(self) -> dict[str, tuple[str, int]]:
        """Text hash -> (shard, row) over every complete shard."""
        if self._index is None:
            self._index = {}
            for shard in self._shards():
                keys = np.load(self.dir / f"{shard}.keys.npy", allow_pickle=False)
                for row, key in enumerate(keys.tolist()):
                    self._index.setdefault(key.decode() if isinstance(key, bytes) else key, (shard, row))
        return self._index

    def __len__(self) -> int:
        return len(self.index())

    def add(self, keys: Sequence[str], emb: np.ndarray) -> None:
        """Write one shard (embeddings, then keys: the keys file marks it complete)."""
        if len(keys) != len(emb):
            raise ValueError(f"{len(keys)} keys for {len(emb)} embeddings")
        if self._dim is not None and emb.shape[1] != self._dim:
            raise DataError(f"{self.dir}: encoder returned dim {emb.shape[1]}, cache holds dim {self._dim}")
        if not (self.dir / "encoder.json").exists():
            write_json(self.dir / "encoder.json", {"identity": self.identity})
        shard = f"{uuid.uuid4().hex[:16]}"
        _save_npy(self.dir / f"{shard}.emb.npy", np.ascontiguousarray(emb, dtype=np.float32))
        _save_npy(self.dir / f"{shard}.keys.npy", np.asarray(keys, dtype=f"S{2 * _KEY_BYTES}"))
        index = self.index()
        for row, key in enumerate(keys):
            index.setdefault(key, (shard, row))
        self._dim = emb.shape[1]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Embeddings of ``keys`` (all must be cached), in order."""
        index = self.index()
        by_shard: dict[str, tuple[list[int], list[int]]] = {}
        for pos, key in enumerate(keys):
            shard, row = index[key]
            dst, src = by_shard.setdefault(shard, ([], []))
            dst.append(pos)
            src.append(row)
        out: np.ndarray | None = None
        for shard, (dst, src) in by_shard.items():
            path = self.dir / f"{shard}.emb.npy"
            try:
                emb = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: unreadable cache shard ({e}); delete it to recompute") from e
            if out is None:
                out = np.empty((len(keys), emb.shape[1]), dtype=np.float32)
            elif emb.shape[1] != out.shape[1]:
                raise DataError(
                    f"{path}: dim {emb.shape[1]} differs from other shards ({out.shape[1]}); delete {self.dir}"
                )
            out[np.asarray(dst)] = emb[np.asarray(src)]
        if out is None:
            return np.empty((0, 0), dtype=np.float32)
        return out


def embed_texts(
    texts: Sequence[str],
    encoder: Encoder,
    cache_dir: str | os.PathLike | None,
    shard_size: int = 4096,
    progress: bool = True,
    desc: str = "embedding",
) -> np.ndarray:
    """Embed texts through the cache: only texts not cached for this encoder are encoded.

    Args:
        texts: The texts.
        encoder: The encoder; its model is loaded only if something is missing.
        cache_dir: Cache root, or ``None`` to encode everything in memory (no reuse, no resume).
        shard_size: Texts per shard (the unit of resumption).
        progress: Show a tqdm bar over the texts to encode.
        desc: Progress bar label.

    Returns:
        ``(len(texts), dim)`` float32 unit vectors, in input order.
    """
    if not texts:
        raise DataError(f"{desc}: nothing to embed (empty text list)")
    keys = [text_key(t) for t in texts]
    cache = EmbeddingCache(cache_dir, encoder.identity) if cache_dir is not None else None
    known = cache.index() if cache is not None else {}
    first: dict[str, int] = {}
    for pos, key in enumerate(keys):
        if key not in known and key not in first:
            first[key] = pos
    missing = sorted(first.values(), key=lambda p: -len(texts[p]))
    log.info("%s: %d texts, %d unique not cached (encoder %s)", desc, len(texts), len(missing), encoder.identity)
    memory: dict[str, np.ndarray] = {}
    if missing:
        bar = tqdm(total=len(missing), desc=desc, unit="text", disable=not progress, mininterval=2.0)
        for start in range(0, len(missing), shard_size):
            shard = missing[start : start + shard_size]
            parts = []
            for b in range(0, len(shard), encoder.batch_size):
                batch = [texts[p] for p in shard[b : b + encoder.batch_size]]
                parts.append(encoder.encode(batch))
                bar.update(len(batch))
            emb = np.concatenate(parts).astype(np.float32, copy=False)
            shard_keys = [keys[p] for p in shard]
            if cache is not None:
                cache.add(shard_keys, emb)
            else:
                memory.update(zip(shard_keys, emb, strict=True))
        bar.close()
    if cache is not None:
        return cache.get(keys)
    return np.stack([memory[k] for k in keys]).astype(np.float32, copy=False)
