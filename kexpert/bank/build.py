"""Building a LoRA bank: one LoRA per open dataset, trained with Lightning (docs/method.md §2.3-2.4).

A :class:`BankBuildSpec` (``conf/bank/<name>.yaml``) lists the datasets (pool files read through
:mod:`kexpert.data.pools`, or a task's train split rendered through the task's own prompt and target: the paper's
"Expert LoRA"), the LoRA shape and the training recipe. :meth:`BankBuildSpec.build` trains the entries that are
missing from the bank's manifest, one after another on one loaded base model: each entry is trained by
:func:`kexpert.training.lora.train_entry` (a fresh peft LoRA seeded by the entry name, so an entry trained alone
equals the same entry trained inside a build; the one training path of :func:`kexpert.training.fit.fit`, the SFT
path the MoE uses), is saved to a temp dir unique to the process and renamed into place, and only then enters the
manifest; the peft wrapper is unloaded before the next entry. An interrupted build therefore resumes with the
missing entries. Builders of one bank may run at once: each entry is trained under a lock
(``<root>/.build.<entry>.lock``), and a builder that waited on it reuses the entry another one finished. The base
model is loaded only when an entry is actually trained. A build starts with a one-line notice (the entries, roughly
how many tokens and minutes) and reports each entry's progress with an estimate of the time left. Before training,
every item is checked against every task's eval split (:mod:`kexpert.data.decontam`); an overlap left in a training
set is an error.
"""

from __future__ import annotations

import random
import time
import zlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kexpert.bank.manifest import MANIFEST_NAME, Bank, BankEntry, read_manifest, write_manifest
from kexpert.bank.spec import validate_bank
from kexpert.bank.validate import entry_from_adapter
from kexpert.data.decontam import EvalIndex, find_overlaps
from kexpert.data.pools import load_pool_file
from kexpert.data.records import Instruction
from kexpert.training.lora import LoRAShape, TrainRecipe, train_entry
from kexpert.utils.distributed import process_rank, rank_private_dir
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.io import exclusive_lock
from kexpert.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class DatasetSpec:
    """One bank entry's training data.

    Attributes:
        name: Entry name.
        files: Pool files (relative to the data dir, or absolute), read by ``kexpert.data.pools``.
        task: Instead of files: a task name whose train split (``Task.kshot_pool``) is rendered with
            ``Task.to_instruction`` (the "Expert LoRA" of that task).
        format: Pool format (``None`` = detected per file).
        rows: Items sampled (seeded) from the loaded data; ``None`` = all.
        with_rationale: Task entries only: train on rationale targets.
    """

    name: str
    files: list[str] | None = None
    task: str | None = None
    format: str | None = None
    rows: int | None = None
    with_rationale: bool = False

    def __post_init__(self) -> None:
        if bool(self.files) == bool(self.task):
            raise ConfigError(f"bank dataset {self.name!r}: set exactly one of 'files' or 'task'")
        self.files = list(self.files) if self.files else None


def entry_seed(seed: int, name: str) -> int:
    """The training seed of an entry: depends on its name only, not on its position in the bank."""
    return int(seed) + zlib.crc32(name.encode()) % 100_000


def rough_tokens(items: list[Instruction], recipe: TrainRecipe) -> int:
    """Training tokens of one entry, roughly (4 characters a token, cut at ``cutoff_len``, times the epochs)."""
    per_item = (min(len(it.instruction) + len(it.input) + len(it.output), 4 * recipe.cutoff_len) for it in items)
    return (sum(per_item) // 4 + len(items)) * max(int(recipe.epochs), 1)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def rough_duration(tokens: int) -> str:
    """``"4-38 min"``: the bank's training time at SmolLM2-135M's measured CPU speed (130 tok/s idle, 15 loaded)."""
    lo, hi = tokens / 130, tokens / 15
    if hi < 90:
        return f"{lo:.0f}-{hi:.0f} s"
    return f"{_minutes(lo)}-{hi / 60:.0f} min" if lo < 90 else f"{lo / 60:.0f}-{hi / 60:.0f} min"


@dataclass
class BankBuildSpec:
    """A bank that kexpert trains (``conf/bank/<name>.yaml``).

    Attributes:
        name: Bank name.
        root: Where the built bank lives (default ``${paths.bank_dir}/<bank>/<base_model>``).
        datasets: One :class:`DatasetSpec` per entry.
        lora: The LoRA shape.
        train: The training recipe.
        seed: Base seed (each entry adds a hash of its name) for sampling and training.
        data_dir: Where pool files live (``${paths.data_dir}``).
        exclude_eval_overlap: Drop items that contain an eval question before sampling (otherwise any overlap
            is an error).
        decontam_ngram: Words per decontamination key.
        decontam_min_words: Shorter eval questions only match a whole prompt.
        allow_base_mismatch: Loading: warn instead of failing when an entry's base model differs.
        all_rows: Ignore every dataset's ``rows`` and train on all its items (full-scale banks).
    """

    name: str
    root: str
    datasets: list[Any] = field(default_factory=list)
    lora: Any = None
    train: Any = None
    seed: int = 0
    data_dir: str | None = None
    exclude_eval_overlap: bool = True
    decontam_ngram: int = 13
    decontam_min_words: int = 6
    allow_base_mismatch: bool = False
    all_rows: bool = False

    def __post_init__(self) -> None:
        self.root_path = Path(self.root).expanduser()
        self.lora = self.lora if isinstance(self.lora, LoRAShape) else LoRAShape(**dict(self.lora or {}))
        self.train = self.train if isinstance(self.train, TrainRecipe) else TrainRecipe(**dict(self.train or {}))
        specs = [d if isinstance(d, DatasetSpec) else DatasetSpec(**dict(d)) for d in self.datasets]
        names = [d.name for d in specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"bank {self.name}: duplicate dataset name(s) {', '.join(dup)}")
        if not specs:
            raise ConfigError(f"bank {self.name}: 'datasets' is empty")
        self.datasets = specs

    # ------------------------------------------------------------ loading
    def build_command(self, base_name: str | None = None) -> str:
        """The command that builds (or completes) this bank."""
        return f"python bank.py bank={self.name}" + (f" base_model={base_name}" if base_name else "")

    def existing(self) -> Bank | None:
        """The manifest written so far, or ``None``."""
        if not (self.root_path / MANIFEST_NAME).exists():
            return None
        return read_manifest(self.root_path)

    def missing(self) -> list[str]:
        """Dataset names that have no complete adapter in the manifest yet."""
        bank = self.existing()
        done = set(bank.names()) if bank is not None else set()
        return [d.name for d in self.datasets if d.name not in done]

    def load(self, base_spec=None) -> Bank:
        """The built bank, validated against ``base_spec`` when given.

        Raises:
            ConfigError: the bank (or some entry) is not built yet; the message gives the build command.
        """
        missing = self.missing()
        if missing:
            what = "is not built" if len(missing) == len(self.datasets) else f"lacks {len(missing)} entries"
            raise ConfigError(
                f"bank {self.name} {what} at {self.root_path} (missing: {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}); build it with: "
                f"{self.build_command(getattr(base_spec, 'name', None))}"
            )
        bank = self.existing()
        assert bank is not None
        bank = bank.subset([d.name for d in self.datasets])
        if base_spec is not None:
            validate_bank(bank, base_spec, allow_base_mismatch=self.allow_base_mismatch)
        return bank

    # --------------------------------------------------------------- data
    def _resolve(self, f: str) -> Path:
        p = Path(f).expanduser()
        if p.is_absolute():
            return p
        if not self.data_dir:
            raise ConfigError(
                f"bank {self.name}: pool file {f} is relative but paths.data_dir / KEXPERT_DATA_DIR is unset"
            )
        return Path(self.data_dir).expanduser() / p

    def load_items(
        self, ds: DatasetSpec, tasks: dict[str, Any], index: EvalIndex | None
    ) -> tuple[list[Instruction], dict]:
        """The (decontaminated, sampled) training items of one entry and their source description."""
        if ds.task is not None:
            if ds.task not in tasks:
                raise ConfigError(
                    f"bank dataset {ds.name!r}: task {ds.task!r} is not configured (have {sorted(tasks)})"
                )
            task = tasks[ds.task]
            if task.kshot_pool_source != "train":
                raise DataError(f"bank dataset {ds.name!r}: task {ds.task} has no train split in its source")
            items = [task.to_instruction(ex, with_rationale=ds.with_rationale) for ex in task.kshot_pool()]
            source = {
                "dataset": f"task:{ds.task}:train",
                "template": {"prompt": task.prompt_template, "target": task.target_template},
                "files": [str(task.kshot_source.local or task.kshot_source.hub)],
            }
        else:
            items = []
            files = [self._resolve(f) for f in ds.files or []]
            for f in files:
                items += load_pool_file(f, fmt=ds.format)
            source = {"dataset": ds.name, "template": ds.format or "pool (detected)", "files": [str(f) for f in files]}
        total = len(items)
        dropped = 0
        if index is not None and self.exclude_eval_overlap:
            bad = find_overlaps(items, index)
            dropped = len(bad)
            if bad:
                log.info(
                    "bank entry %s: dropped %d items that contain eval questions (e.g. %s)",
                    ds.name,
                    len(bad),
                    next(iter(bad.values()))[0],
                )
            items = [it for i, it in enumerate(items) if i not in bad]
        rng = random.Random(entry_seed(self.seed, ds.name))
        if ds.rows is not None and not self.all_rows and ds.rows < len(items):
            keep = sorted(rng.sample(range(len(items)), ds.rows))
            items = [items[i] for i in keep]
        if index is not None:
            bad = find_overlaps(items, index)
            if bad:
                i, owners = next(iter(bad.items()))
                raise DataError(
                    f"bank entry {ds.name!r}: {len(bad)} training items contain eval questions, e.g. item "
                    f"{i} ({items[i].instruction[:80]!r}) contains {owners[0]}; set bank.exclude_eval_overlap=true"
                )
        if not items:
            raise DataError(f"bank entry {ds.name!r}: no training items (files {source['files']})")
        source.update(rows=len(items), rows_available=total, eval_overlap_dropped=dropped)
        return items, source

    # -------------------------------------------------------------- build
    def build(
        self,
        base_spec,
        tasks: dict[str, Any],
        optimizer,
        scheduler,
        trainer_cfg,
        model=None,
        tokenizer=None,
        only: list[str] | None = None,
    ) -> Bank:
        """Train every missing entry and return the (complete) bank.

        Args:
            base_spec: The base model spec.
            tasks: ``{task name: Task}``: their eval splits decontaminate every entry; task entries train on them.
            optimizer: Partial optimizer (``params`` missing); ``train.lr`` overrides its lr.
            scheduler: Partial scheduler or ``None``.
            trainer_cfg: The ``trainer`` config node (a Lightning Trainer ``_target_``).
            model: An already loaded base model (default: ``base_spec.load()``).
            tokenizer: Its tokenizer.
            only: Build only these entries.
        """
        todo = [d for d in self.datasets if d.name in set(self.missing()) and (only is None or d.name in only)]
        if not todo:
            bank = self.existing() or Bank(name=self.name, root=self.root_path, entries=[], meta={})
            log.info("bank %s at %s: all %d entries present, nothing to build", self.name, self.root_path, len(bank))
            return bank
        index = EvalIndex(self.decontam_ngram, self.decontam_min_words)
        for task in tasks.values():
            index.add_examples(task.eval_examples())
            if task.kshot_pool_source != "train":  # a hold-out K-shot pool is part of the eval file too
                index.add_examples(task.kshot_pool())
        log.info("decontamination index: %d eval questions from %s", index.size, ", ".join(sorted(tasks)))
        prepared = []
        for ds in todo:  # all data first: a data error fails before hours of training
            prepared.append((ds, *self.load_items(ds, tasks, index)))
        tokens = [rough_tokens(items, self.train) for _, items, _ in prepared]
        log.info(
            "bank %s: building %d missing LoRA entries (%s) into %s: ~%s training tokens, roughly %s for a 135M "
            "model on 2 CPU cores (progress below; later runs reuse the bank)",
            self.name,
            len(prepared),
            ", ".join(ds.name for ds, _, _ in prepared),
            self.root_path,
            f"{sum(tokens) / 1000:.0f}k" if sum(tokens) >= 1000 else sum(tokens),
            rough_duration(sum(tokens)),
        )
        t_build, built, done_tokens = time.perf_counter(), 0, 0
        rank = process_rank()
        private = self._private_dir(rank) if rank else None
        for i, (ds, items, source) in enumerate(prepared, start=1):
            # One builder per entry at a time: a concurrent builder of this bank waits here, then reuses the entry.
            # A rank > 0 of a multi-process trainer takes part in rank zero's training instead, without the lock (rank
            # zero holds it while it waits for this rank), and then reads the entry rank zero published.
            lock = exclusive_lock(self.root_path / f".build.{ds.name}.lock") if private is None else nullcontext()
            with lock:
                if private is None and ds.name not in self.missing():
                    where = f"bank {self.name}: entry {i}/{len(prepared)} {ds.name}"
                    log.info("%s was built by another process; reused", where)
                    continue
                if model is None:
                    model, tokenizer = base_spec.load()
                log.info("bank %s: entry %d/%d %s (%d items)", self.name, i, len(prepared), ds.name, len(items))
                path, stats = train_entry(
                    model,
                    tokenizer,
                    base_spec,
                    ds.name,
                    items,
                    self.lora,
                    self.train,
                    optimizer,
                    scheduler,
                    trainer_cfg,
                    (private or self.root_path / "adapters") / ds.name,
                    seed=entry_seed(self.seed, ds.name),
                )
                if private is not None:  # rank zero saves and publishes the entry right after the fit
                    self._await_entry(ds.name)
                    built += 1
                    continue
                meta = {k: v for k, v in stats.items() if k != "train_loss"}
                meta["lora"], meta["recipe"] = vars(self.lora), vars(self.train)
                if ds.task is not None:
                    meta["expert_lora_for"] = ds.task
                entry = entry_from_adapter(
                    ds.name,
                    path,
                    base_model=base_spec.identity,
                    source=source,
                    train_loss=stats["train_loss"],
                    meta=meta,
                )
                self._commit(entry, base_spec)
            built += 1
            done_tokens += tokens[i - 1]
            rate = done_tokens / max(time.perf_counter() - t_build, 1e-9)
            log.info(
                "bank %s: entry %d/%d %s done: loss %.3f -> %.3f, %d tokens, %.0f tok/s, %.0f s; ~%s left",
                self.name,
                i,
                len(prepared),
                ds.name,
                stats["first_loss"],
                stats["train_loss"],
                stats["train_tokens"],
                stats["tokens_per_s"],
                stats["wall_s"],
                _minutes(sum(tokens[i:]) / rate),
            )
        elapsed, manifest = time.perf_counter() - t_build, self.root_path / MANIFEST_NAME
        log.info("bank %s: built %d entries in %.0f s -> %s", self.name, built, elapsed, manifest)
        if private is not None:
            return self.existing()  # type: ignore[return-value]  # _await_entry saw every entry in it
        return self._commit(None, base_spec)

    def _await_entry(self, name: str, timeout_s: float = 600.0) -> None:
        """On a rank > 0: wait until rank zero has published entry ``name`` (it does so right after the fit)."""
        deadline = time.monotonic() + timeout_s
        while not ((bank := self.existing()) is not None and name in bank):
            if time.monotonic() > deadline:
                raise ConfigError(f"bank {self.name}: rank zero did not publish entry {name} within {timeout_s:.0f} s")
            time.sleep(0.5)

    def _private_dir(self, rank: int) -> Path:
        """The work dir of a rank > 0 training an entry along with rank zero (it saves nothing; removed at exit)."""
        path = rank_private_dir(self.root_path, f".rank{rank}.")
        log.info("bank %s: rank %d trains along with rank zero in %s (rank zero publishes)", self.name, rank, path)
        return path

    def _commit(self, entry: BankEntry | None, base_spec) -> Bank:
        """Add ``entry`` to the manifest on disk, under a lock (parallel builders of one bank merge, never clobber)."""
        with exclusive_lock(self.root_path / ".manifest.lock"):
            bank = self.existing() or Bank(name=self.name, root=self.root_path, entries=[], meta={})
            if entry is not None:
                bank.entries = [e for e in bank.entries if e.name != entry.name] + [entry]
            order = [d.name for d in self.datasets if d.name in bank]
            bank.entries = [bank[n] for n in order] + [e for e in bank.entries if e.name not in order]
            bank.meta.update(
                base_model=base_spec.identity,
                lora=vars(self.lora),
                train=vars(self.train),
                seed=self.seed,
                build_wall_s=round(sum(float(e.meta.get("wall_s", 0.0)) for e in bank.entries), 1),
            )
            write_manifest(bank)
        return bank
