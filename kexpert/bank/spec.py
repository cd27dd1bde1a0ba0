"""Bank specs for existing adapters: a manifest, a directory of PEFT adapters, or hub ids (docs/method.md §2).

``conf/bank/<name>.yaml`` instantiates a spec with ``.load(base_spec=None) -> Bank``:

* :class:`BankSpec` with ``manifest``: read a ``manifest.json`` (a bank dir or the file).
* :class:`BankSpec` with ``adapters_dir``: import every subdirectory holding ``adapter_config.json`` (one with
  adapter weights but no config is an error; the others are listed in a warning and in the manifest's
  ``meta.skipped``, with why); the manifest is derived from the files
  (rank, alpha, targets, sha256) and written under ``root`` when set.
* :class:`BankSpec` with ``hub_ids``: ``huggingface_hub.snapshot_download`` each id (online only; offline
  is a clear error naming the id).

Every adapter is read through the one loader (:mod:`kexpert.models.adapter`: safetensors only, readable, finite
values). With a base model, every entry is validated (:func:`validate_bank`): its target modules exist in the model,
shapes fit, and the recorded base model matches, or only a warning with ``allow_base_mismatch``. Ranks and
target sets may differ between entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kexpert.bank.manifest import Bank, read_manifest, write_manifest
from kexpert.bank.validate import entry_from_adapter, validate_entry
from kexpert.models.adapter import CONFIG_NAME, PICKLE_NAME, WEIGHTS_NAME, module_shapes
from kexpert.models.factory import hub_reachable
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


def base_model_shapes(base_spec) -> dict[str, tuple[int, int]]:
    """``{module path: (out, in)}`` of every linear layer of the base model, without loading its weights.

    The tiny test model is built outright; any other model is instantiated from its config on the ``meta``
    device (no memory, no weights read).
    """
    if base_spec.tiny is not None:
        model, _ = base_spec.load()
        return module_shapes(model)
    from transformers import AutoConfig, AutoModelForCausalLM

    source, kwargs = base_spec.resolve_source()
    config = AutoConfig.from_pretrained(source, trust_remote_code=base_spec.trust_remote_code, **kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=base_spec.trust_remote_code)
    return module_shapes(model)


def validate_bank(bank: Bank, base_spec, allow_base_mismatch: bool = False, model=None) -> Bank:
    """Validate every entry of ``bank`` against ``base_spec`` (or an already loaded ``model`` of it).

    Raises:
        ConfigError / DataError: naming the first bad entry and what is wrong.
    """
    shapes = module_shapes(model) if model is not None else base_model_shapes(base_spec)
    for entry in bank.entries:
        validate_entry(entry, shapes, base_spec.identity, allow_base_mismatch=allow_base_mismatch)
    log.info(
        "bank %s: %d entries valid for %s (ranks %s)",
        bank.name,
        len(bank),
        base_spec.name,
        sorted({e.rank for e in bank.entries if e.rank is not None}),
    )
    return bank


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "adapter"


@dataclass
class BankSpec:
    """A bank of existing adapters (exactly one of ``manifest``, ``adapters_dir``, ``hub_ids``).

    Attributes:
        name: Bank name.
        manifest: A manifest.json or a bank dir holding one.
        adapters_dir: A directory whose subdirectories are PEFT adapter dirs (entry name = subdir name).
        hub_ids: Hub repo ids of PEFT adapters (``owner/name`` or ``owner/name:subfolder``).
        root: Where an imported bank's manifest is written (``None`` = do not write one).
        base_model: Base-model identity recorded for imported adapters (``None`` = each adapter's
            ``base_model_name_or_path``).
        allow_base_mismatch: Warn instead of failing when an entry's base model differs from the chosen one.
        include: Only these entry names (``None`` = all).
        cache_dir: Hub download cache.
    """

    name: str
    manifest: str | None = None
    adapters_dir: str | None = None
    hub_ids: list[str] | None = None
    root: str | None = None
    base_model: str | None = None
    allow_base_mismatch: bool = False
    include: list[str] | None = None
    cache_dir: str | None = None
    _given: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        given = [k for k in ("manifest", "adapters_dir", "hub_ids") if getattr(self, k)]
        if len(given) != 1:
            raise ConfigError(
                f"bank {self.name}: set exactly one of manifest, adapters_dir, hub_ids (got {given or 'none'})"
            )
        self._given = given

    def _import_dir(self) -> Bank:
        d = Path(str(self.adapters_dir)).expanduser()
        if not d.is_dir():
            raise DataError(f"bank {self.name}: adapters_dir {d} is not a directory")
        subdirs, skipped = [], {}
        for p in sorted(d.iterdir()):
            if not p.is_dir():
                continue
            if p.name.startswith("."):
                skipped[p.name] = "hidden"
            elif not (p / CONFIG_NAME).exists() and not any((p / w).exists() for w in (WEIGHTS_NAME, PICKLE_NAME)):
                skipped[p.name] = f"no {CONFIG_NAME}"
            else:
                subdirs.append(p)
        if (d / CONFIG_NAME).exists():
            subdirs.insert(0, d)
        if skipped:
            log.warning(
                "bank %s: skipped %d of %d subdirectories of %s: %s",
                self.name,
                len(skipped),
                len(skipped) + len(subdirs),
                d,
                ", ".join(f"{name} ({why})" for name, why in skipped.items()),
            )
        if not subdirs:
            raise DataError(
                f"bank {self.name}: {d} holds no PEFT adapter dirs (subdirs with {CONFIG_NAME})"
                + (f"; skipped: {', '.join(f'{n} ({w})' for n, w in skipped.items())}" if skipped else "")
            )
        entries = [entry_from_adapter(p.name, p, base_model=self.base_model) for p in subdirs]
        meta: dict[str, Any] = {"imported_from": str(d)}
        if skipped:
            meta["skipped"] = skipped
        return Bank(
            name=self.name,
            root=Path(self.root).expanduser() if self.root else d,
            entries=entries,
            meta=meta,
        )

    def _import_hub(self) -> Bank:
        from huggingface_hub import snapshot_download

        online = hub_reachable()
        entries = []
        for hub_id in self.hub_ids or []:
            repo, _, sub = str(hub_id).partition(":")
            try:
                local = snapshot_download(
                    repo,
                    cache_dir=self.cache_dir,
                    local_files_only=not online,
                    allow_patterns=[f"{sub}/*" if sub else "*"],
                )
            except Exception as e:
                why = "the hub is unreachable and it is not in the local cache" if not online else str(e)
                raise DataError(f"bank {self.name}: hub adapter {hub_id!r} could not be fetched ({why})") from e
            path = Path(local) / sub if sub else Path(local)
            entry = entry_from_adapter(_safe_name(hub_id.replace("/", "__")), path, base_model=self.base_model)
            entry.meta["hub_id"] = hub_id
            entries.append(entry)
        root = Path(self.root).expanduser() if self.root else Path(self.cache_dir or ".")
        return Bank(name=self.name, root=root, entries=entries, meta={"imported_from": list(self.hub_ids or [])})

    def load(self, base_spec=None) -> Bank:
        """Read or import the bank; validate it against ``base_spec`` when given."""
        if self.manifest:
            bank = read_manifest(self.manifest)
        elif self.adapters_dir:
            bank = self._import_dir()
        else:
            bank = self._import_hub()
        if self.include is not None:
            bank = bank.subset(list(self.include))
        if base_spec is not None:
            validate_bank(bank, base_spec, allow_base_mismatch=self.allow_base_mismatch)
        if self.root and not self.manifest:
            write_manifest(bank, Path(self.root).expanduser())
        return bank

    def describe(self) -> dict[str, Any]:
        """Where the bank comes from (for logs)."""
        return {"name": self.name, self._given[0]: getattr(self, self._given[0])}
