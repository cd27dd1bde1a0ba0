"""Decontamination: drop pool items that overlap the task's eval split, before selection (docs/method.md §5).

The paper's stated principle is "no data leakage ... with respect to the testing sets"; pools such as T0/P3
or CommonsenseQA can contain evaluation questions verbatim or reworded. Two tests, either one drops an item:

1. **Long n-gram overlap.** The item's text contains a word n-gram (default 13, the GPT-3 rule) of an eval
   item's question, passage, gold answer or solution. A question or passage shorter than ``ngram`` words but at
   least ``min_tokens`` long counts as a single n-gram of its own length, so a short eval question copied
   verbatim is caught too; answers count only through full n-grams (a pool question that merely mentions an
   eval answer phrase is knowledge overlap, not a leak of the eval item).
   Matching is vectorised over the whole pool with 64-bit polynomial hashes of word-id windows (words outside
   the eval vocabulary break windows), never a Python loop over n-grams.
   Words are those of :func:`kexpert.data.decontam.normalize_words`, shared with the bank's decontamination.
2. **Embedding near-duplicates.** The item's embedding has cosine ``> embed_threshold`` to an eval item's
   (FAISS range search; the eval items are embedded with the same text template as the pool).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kexpert.data.decontam import normalize_words
from kexpert.selection.data.faiss_index import IndexConfig, build_index, range_search
from kexpert.utils.errors import ConfigError
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class DecontaminationResult:
    """Which pool items survive, and why the others were dropped.

    Attributes:
        keep: Boolean mask over the pool.
        ngram_hits: Pool index -> eval index of an n-gram overlap.
        embed_hits: Pool index -> (eval index, cosine) of an embedding near-duplicate.
        stats: Counts for the report.
    """

    keep: np.ndarray
    ngram_hits: dict[int, int] = field(default_factory=dict)
    embed_hits: dict[int, tuple[int, float]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


class Decontaminator:
    """Drop pool items overlapping the eval split.

    Args:
        enabled: Off = keep everything.
        ngram: Word n-gram length (``0`` disables the n-gram test).
        min_tokens: Eval segments shorter than ``ngram`` but at least this long are matched whole.
        embed_threshold: Cosine above which an item is an embedding near-duplicate (``null`` disables).
        index: FAISS settings for the embedding test.
        chunk_items: Pool items hashed per block (bounds memory).
        seed: Seed of the hash coefficients.
    """

    def __init__(
        self,
        enabled: bool = True,
        ngram: int = 13,
        min_tokens: int = 8,
        embed_threshold: float | None = 0.95,
        index: IndexConfig | dict[str, Any] | None = None,
        chunk_items: int = 20000,
        seed: int = 0,
    ) -> None:
        if ngram < 0 or (ngram and not 1 <= min_tokens <= ngram):
            raise ConfigError(
                f"decontamination: need ngram >= 0 and 1 <= min_tokens <= ngram (got {ngram}, {min_tokens})"
            )
        if embed_threshold is not None and not -1.0 <= embed_threshold <= 1.0:
            raise ConfigError(f"decontamination.embed_threshold must be in [-1, 1] or null, got {embed_threshold}")
        self.enabled = bool(enabled)
        self.ngram = int(ngram)
        self.min_tokens = int(min_tokens)
        self.embed_threshold = embed_threshold
        self.index = IndexConfig.build(index)
        self.chunk_items = int(chunk_items)
        self._coef = np.random.default_rng(seed).integers(1, 2**63, size=max(self.ngram, 1), dtype=np.uint64) | 1

    # ------------------------------------------------------------------------------------------- n-grams
    def _hash_windows(self, ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every window of ``length`` word ids and whether the window is valid (no id 0)."""
        m = len(ids) - length + 1
        if m <= 0:
            return np.zeros(0, np.uint64), np.zeros(0, bool)
        h = np.zeros(m, dtype=np.uint64)
        for k in range(length):
            h += ids[k : k + m] * self._coef[k]
        zeros = np.concatenate([[0], np.cumsum(ids == 0)])
        return h, (zeros[length:] - zeros[:-length]) == 0

    def _eval_table(
        self, eval_segments: Sequence[Sequence[str]], eval_answers: Sequence[Sequence[str]] | None
    ) -> tuple[dict[str, int], dict[int, dict[int, int]]]:
        vocab: dict[str, int] = {}
        table: dict[int, dict[int, int]] = {}
        tagged = [(e, seg, self.min_tokens) for e, segs in enumerate(eval_segments) for seg in segs]
        tagged += [(e, seg, self.ngram) for e, segs in enumerate(eval_answers or []) for seg in segs]
        for e, seg, shortest in tagged:
            toks = normalize_words(seg)
            if len(toks) < shortest:
                continue
            ids = np.array([vocab.setdefault(t, len(vocab) + 1) for t in toks], dtype=np.uint64)
            length = min(len(toks), self.ngram)
            h, _ = self._hash_windows(ids, length)
            bucket = table.setdefault(length, {})
            for v in h.tolist():
                bucket.setdefault(v, e)
        return vocab, table

    def ngram_overlap(
        self,
        pool_texts: Sequence[str],
        eval_segments: Sequence[Sequence[str]],
        eval_answers: Sequence[Sequence[str]] | None = None,
    ) -> dict[int, int]:
        """Pool items containing a long n-gram of an eval item.

        Args:
            pool_texts: One text per pool item.
            eval_segments: Per eval item, its prompt segments (question, passage): short ones match whole.
            eval_answers: Per eval item (same order), its answer segments (gold text, solution): full n-grams only.

        Returns:
            Pool index -> index of an eval item it overlaps.
        """
        if not self.ngram:
            return {}
        vocab, table = self._eval_table(eval_segments, eval_answers)
        if not table:
            return {}
        lookup = {length: np.fromiter(b.keys(), dtype=np.uint64, count=len(b)) for length, b in table.items()}
        hits: dict[int, int] = {}
        for start in range(0, len(pool_texts), self.chunk_items):
            chunk = pool_texts[start : start + self.chunk_items]
            toks = [normalize_words(t) for t in chunk]
            lengths = np.fromiter((len(t) + 1 for t in toks), dtype=np.int64, count=len(toks))
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            ids = np.fromiter(
                itertools.chain.from_iterable(itertools.chain((vocab.get(w, 0) for w in t), (0,)) for t in toks),
                dtype=np.uint64,
                count=int(lengths.sum()),
            )
            for length, keys in lookup.items():
                h, valid = self._hash_windows(ids, length)
                pos = np.flatnonzero(valid & np.isin(h, keys))
                if len(pos) == 0:
                    continue
                items = np.searchsorted(starts, pos, side="right") - 1
                for p, item in zip(pos.tolist(), items.tolist(), strict=True):
                    hits.setdefault(start + item, table[length][int(h[p])])
        return hits

    # ---------------------------------------------------------------------------------------- embeddings
    def embedding_overlap(self, pool_emb: np.ndarray, eval_emb: np.ndarray) -> dict[int, tuple[int, float]]:
        """Pool items whose cosine to some eval item exceeds ``embed_threshold``.

        Returns:
            Pool index -> (most similar eval index, cosine).
        """
        if self.embed_threshold is None or len(eval_emb) == 0 or len(pool_emb) == 0:
            return {}
        index = build_index(eval_emb, self.index)
        lims, sims, ids = range_search(index, pool_emb, self.embed_threshold, self.index)
        hits: dict[int, tuple[int, float]] = {}
        for i in np.flatnonzero(np.diff(lims)).tolist():
            s, e = lims[i], lims[i + 1]
            j = s + int(np.argmax(sims[s:e]))
            hits[i] = (int(ids[j]), float(sims[j]))
        return hits

    def __call__(
        self,
        pool_texts: Sequence[str],
        eval_segments: Sequence[Sequence[str]],
        pool_emb: np.ndarray | None = None,
        eval_emb: np.ndarray | None = None,
        eval_answers: Sequence[Sequence[str]] | None = None,
    ) -> DecontaminationResult:
        """Run both tests.

        Args:
            pool_texts: Pool item texts.
            eval_segments: Per eval item, its prompt segments (question, passage).
            pool_emb: Pool embeddings (skip the embedding test when ``None``).
            eval_emb: Eval embeddings, same encoder and text template.
            eval_answers: Per eval item, its answer segments (gold text, solution, code).

        Returns:
            The surviving mask and the reasons.
        """
        n = len(pool_texts)
        if not self.enabled:
            return DecontaminationResult(np.ones(n, dtype=bool), stats={"enabled": False})
        ngram_hits = self.ngram_overlap(pool_texts, eval_segments, eval_answers)
        embed_hits = {}
        if pool_emb is not None and eval_emb is not None:
            embed_hits = self.embedding_overlap(pool_emb, eval_emb)
        keep = np.ones(n, dtype=bool)
        keep[list(ngram_hits)] = False
        keep[list(embed_hits)] = False
        stats = {
            "enabled": True,
            "eval_items": len(eval_segments),
            "ngram": self.ngram,
            "min_tokens": self.min_tokens,
            "embed_threshold": self.embed_threshold,
            "dropped_ngram": len(ngram_hits),
            "dropped_embedding": len(embed_hits),
            "dropped_total": int((~keep).sum()),
        }
        log.info(
            "decontamination: dropped %d of %d pool items (%d n-gram, %d embedding)",
            stats["dropped_total"],
            n,
            len(ngram_hits),
            len(embed_hits),
        )
        return DecontaminationResult(keep, ngram_hits, embed_hits, stats)
