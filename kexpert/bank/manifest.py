"""The bank manifest: which LoRA adapters a bank holds and where they came from (docs/method.md §2).

A bank is a directory with a ``manifest.json``; every entry points at one PEFT adapter dir
(``adapter_config.json`` + ``adapter_model.safetensors``). Schema (version 1)::

    {
      "schema_version": 1,
      "name": "smollm2_cpu",                  # the bank's name
      "entries": [
        {
          "name": "commonsense_qa",            # unique in the bank
          "path": "adapters/commonsense_qa",   # adapter dir, relative to the manifest's dir (or absolute)
          "base_model": "HuggingFaceTB/...",   # BaseModelSpec.identity of the model it was trained on
          "source": {"dataset": ..., "rows": 400, "template": ..., "files": [...]},   # {} when imported
          "rank": 16,                          # null when ranks differ per module (see meta.ranks)
          "alpha": 16.0,                       # null when alphas differ per module
          "target_modules": ["q_proj", "v_proj"],
          "sha256": "...",                     # of adapter_model.safetensors
          "train_loss": 1.23,                  # null when imported
          "meta": {...}                        # train tokens, wall time, expert_lora_for task, ...
        }
      ],
      "meta": {...}                            # bank-level info (build config, provenance)
    }

Paths are stored relative to the manifest's directory when the adapter lives inside it, so a bank dir can be
moved or copied as a whole.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.io import read_json, write_json

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
_REQUIRED = ("name", "path", "base_model", "target_modules", "sha256")


@dataclass
class BankEntry:
    """One LoRA adapter of a bank.

    Attributes:
        name: Unique name in the bank (``commonsense_qa``, ``arc_e_train``).
        path: The PEFT adapter dir.
        base_model: ``BaseModelSpec.identity`` of the model it was trained on.
        source: ``{"dataset", "rows", "template", "files"}`` of its training data (empty when imported).
        rank: LoRA rank, ``None`` when ranks differ per module (then ``meta["ranks"]``).
        alpha: lora_alpha, ``None`` when it differs per module.
        target_modules: Adapted module names.
        sha256: Hash of the adapter weights file.
        train_loss: Final training loss (``None`` when imported).
        meta: Anything else (train tokens, wall time, ``expert_lora_for``).
    """

    name: str
    path: Path
    base_model: str
    source: dict[str, Any] = field(default_factory=dict)
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=list)
    sha256: str = ""
    train_loss: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.target_modules = list(self.target_modules)

    @property
    def expert_lora_for(self) -> str | None:
        """The task whose train split this LoRA was trained on (the paper's "Expert LoRA"), if any."""
        return self.meta.get("expert_lora_for")

    def weights_file(self) -> Path:
        """The adapter weights file (kexpert reads safetensors only; a pickled ``.bin`` is refused)."""
        return self.path / "adapter_model.safetensors"

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        """JSON form; ``path`` relative to ``root`` when it lies inside it."""
        d = asdict(self)
        p = Path(self.path)
        if root is not None:
            with contextlib.suppress(ValueError):
                p = p.resolve().relative_to(Path(root).resolve())
        d["path"] = str(p)
        return d


@dataclass
class Bank:
    """A named set of LoRA adapters on one base model.

    Attributes:
        name: The bank's name.
        root: Its directory (where ``manifest.json`` lives).
        entries: The adapters, in manifest order.
        meta: Bank-level information (build config, provenance).
    """

    name: str
    root: Path
    entries: list[BankEntry] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        seen: set[str] = set()
        for e in self.entries:
            if e.name in seen:
                raise ConfigError(f"bank {self.name}: duplicate entry name {e.name!r}")
            seen.add(e.name)

    def names(self) -> list[str]:
        """Entry names in manifest order."""
        return [e.name for e in self.entries]

    def __getitem__(self, name: str) -> BankEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise ConfigError(f"bank {self.name} ({self.root}): no entry {name!r}; entries: {', '.join(self.names())}")

    def __contains__(self, name: object) -> bool:
        return any(e.name == name for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def expert_lora_for(self, task: str) -> BankEntry | None:
        """The entry trained on ``task``'s train split (the paper's "Expert LoRA" baseline), or ``None``."""
        for e in self.entries:
            if e.expert_lora_for == task:
                return e
        return None

    def subset(self, names: list[str]) -> Bank:
        """A bank with only the named entries (in the given order)."""
        return Bank(name=self.name, root=self.root, entries=[self[n] for n in names], meta=dict(self.meta))

    @property
    def manifest_path(self) -> Path:
        """``<root>/manifest.json``."""
        return self.root / MANIFEST_NAME


def _entry_from_dict(d: Any, where: str, root: Path) -> BankEntry:
    if not isinstance(d, dict):
        raise DataError(f"{where}: expected an object, got {type(d).__name__}")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")
    known = set(BankEntry.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(unknown)} (expected {', '.join(sorted(known))})")
    if not isinstance(d["target_modules"], list) or not all(isinstance(t, str) for t in d["target_modules"]):
        raise DataError(f"{where}: target_modules must be a list of strings")
    if d.get("rank") is not None and not isinstance(d["rank"], int):
        raise DataError(f"{where}: rank must be an integer or null, got {d['rank']!r}")
    path = Path(os.path.expanduser(str(d["path"])))
    if not path.is_absolute():
        path = root / path
    return BankEntry(
        name=str(d["name"]),
        path=path,
        base_model=str(d["base_model"]),
        source=dict(d.get("source") or {}),
        rank=d.get("rank"),
        alpha=None if d.get("alpha") is None else float(d["alpha"]),
        target_modules=list(d["target_modules"]),
        sha256=str(d["sha256"]),
        train_loss=None if d.get("train_loss") is None else float(d["train_loss"]),
        meta=dict(d.get("meta") or {}),
    )


def read_manifest(path: str | os.PathLike) -> Bank:
    """Read a bank manifest (a ``manifest.json`` file or the bank dir holding it).

    Raises:
        DataError: a missing file, invalid JSON, a wrong schema version, or a malformed entry (named).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.exists():
        raise DataError(f"{path}: bank manifest not found")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object with 'name' and 'entries'")
    version = raw.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise DataError(f"{path}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    if "entries" not in raw or not isinstance(raw["entries"], list):
        raise DataError(f"{path}: key 'entries' must be a list")
    root = path.parent
    entries = [
        _entry_from_dict(d, f"{path}: entries[{i}]" + (f" ({d.get('name')})" if isinstance(d, dict) else ""), root)
        for i, d in enumerate(raw["entries"])
    ]
    try:
        return Bank(
            name=str(raw.get("name") or root.name), root=root, entries=entries, meta=dict(raw.get("meta") or {})
        )
    except ConfigError as e:
        raise DataError(f"{path}: {e}") from e


def write_manifest(bank: Bank, path: str | os.PathLike | None = None) -> Path:
    """Write ``bank`` as JSON, atomically (default ``<bank.root>/manifest.json``); returns the path."""
    path = Path(path) if path is not None else bank.manifest_path
    if path.is_dir():
        path = path / MANIFEST_NAME
    root = path.parent
    write_json(
        path,
        {
            "schema_version": SCHEMA_VERSION,
            "name": bank.name,
            "entries": [e.to_dict(root) for e in bank.entries],
            "meta": bank.meta,
        },
    )
    return path
