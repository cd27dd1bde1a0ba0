"""K-shot signals of every bank LoRA, scored in batched passes (docs/method.md §3.1-3.2).

* ``accuracy``: the task's evaluator on the K-shot (greedy generation + answer extraction as the paper, or the
  log-likelihood mode as an option), one adapter at a time with the K-shot batched.
* ``ppl``: vanilla perplexity, ``exp`` of the mean NLL of the gold response given the prompt (Eq. 1).
* ``reasoning_ppl``: the same with the gold answer expanded by a rationale (Eqs. 2-4); the bank-level value is
  the mean per-example perplexity, which ranks like the paper's sum.

The base model is loaded once and every adapter once into one ``PeftModel``; perplexities of all adapters go
through one :func:`~kexpert.eval.scoring.score_continuations` call with per-row ``adapter_names``, so batches
mix adapters and pad little (responses only, no BOS inside them, eval mode, no grad). Each value is cached on
disk under a key of (adapter sha256, base model, task, K-shot ids, signal settings), so adding an adapter to the
bank or re-running another strategy scores only what is new.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kexpert.bank.manifest import Bank, BankEntry
from kexpert.data.prompts import PromptFormat
from kexpert.data.records import Example
from kexpert.eval.evaluator import evaluate
from kexpert.eval.scoring import score_continuations
from kexpert.selection.experts.rationales import RationaleConfig, kshot_rationales
from kexpert.tasks.task import Task
from kexpert.utils.errors import ConfigError
from kexpert.utils.io import read_json, sha1_of, write_json
from kexpert.utils.logging import get_logger

log = get_logger(__name__)

SIGNALS = ("accuracy", "ppl", "reasoning_ppl")
BASE = "__base__"


@dataclass
class SignalConfig:
    """How K-shot signals are computed (``expert_selection.signals``).

    Attributes:
        accuracy_mode: ``generate`` (the paper) or ``loglikelihood``; ``null`` = the task's eval mode.
        batch_size: Sequences per forward.
        generate_batch_size: Rows decoded together for the generated K-shot accuracy.
        max_length: Context truncation (from the left) in tokens.
        mixed_batches: Score perplexities of all adapters in one pass with mixed-adapter batches (else one
            pass per adapter).
        score_base: Also score the base model without adapter (reported as ``__base__``, never selected).
        extra: Signals computed for the report although the strategy does not need them.
        cache: Reuse cached per-adapter values.
        progress: Progress bars.
        rationale: Where rationales come from (:class:`RationaleConfig`).
    """

    accuracy_mode: str | None = "generate"
    batch_size: int = 16
    generate_batch_size: int = 32
    max_length: int = 1024
    mixed_batches: bool = True
    score_base: bool = True
    extra: list[str] = field(default_factory=list)
    cache: bool = True
    progress: bool = True
    rationale: Any = None

    def __post_init__(self) -> None:
        if self.accuracy_mode not in (None, "generate", "loglikelihood"):
            raise ConfigError(
                "expert_selection.signals.accuracy_mode: expected generate|loglikelihood|null, "
                f"got {self.accuracy_mode!r}"
            )
        if self.batch_size < 1 or self.generate_batch_size < 1:
            raise ConfigError("expert_selection.signals.batch_size and generate_batch_size must be >= 1")
        self.extra = list(self.extra or [])
        bad = [s for s in self.extra if s not in SIGNALS]
        if bad:
            raise ConfigError(f"expert_selection.signals.extra: unknown signal(s) {bad} (expected {list(SIGNALS)})")
        if self.rationale is None:
            self.rationale = RationaleConfig()
        elif not isinstance(self.rationale, RationaleConfig):
            self.rationale = RationaleConfig(**dict(self.rationale))


def adapter_name(entry_name: str) -> str:
    """A peft-safe adapter name for a bank entry (peft module keys cannot hold dots)."""
    return "bank_" + re.sub(r"[^0-9A-Za-z_]", "_", entry_name)


def load_bank_into(model, entries: Sequence[BankEntry], progress: bool = True):
    """Wrap ``model`` in one ``PeftModel`` holding every entry's adapter under :func:`adapter_name`.

    Args:
        model: The base model (it is modified in place, as peft does).
        entries: Bank entries to load.
        progress: Show a progress bar.

    Returns:
        The ``PeftModel`` in eval mode.
    """
    from peft import PeftModel

    pm = model if isinstance(model, PeftModel) else None
    loaded = set(pm.peft_config) if pm is not None else set()
    for e in tqdm(entries, desc="loading adapters", disable=not progress):
        name = adapter_name(e.name)
        if name in loaded:
            continue
        if pm is None:
            pm = PeftModel.from_pretrained(model, str(e.path), adapter_name=name, is_trainable=False)
        else:
            pm.load_adapter(str(e.path), adapter_name=name, is_trainable=False)
        loaded.add(name)
    if pm is None:
        raise ConfigError("expert selection: the bank has no entries")
    pm.eval()
    return pm


class BankScorer:
    """Computes and caches K-shot signals for bank entries, loading the base model and adapters once.

    Args:
        task: The task.
        kshot: The K-shot items.
        bank: The bank.
        model_loader: ``() -> (model, tokenizer)`` of the base model (called lazily, once).
        prompt_format: The base model's prompt format.
        base_identity: ``BaseModelSpec.identity`` (part of cache keys).
        config: Signal settings.
        cache_dir: Root of the signal and rationale caches.
        data_dir: Data dir for CoT files.
        rationale_loader: ``() -> (model, tokenizer, prompt_format, identity)`` of a separate rationale model,
            or ``None`` to use the base model.
        rationale_identity: The separate rationale model's ``BaseModelSpec.identity`` (its cache key).
    """

    def __init__(
        self,
        task: Task,
        kshot: list[Example],
        bank: Bank,
        model_loader: Callable[[], tuple[Any, Any]],
        prompt_format: PromptFormat,
        base_identity: str,
        config: SignalConfig,
        cache_dir: str | Path,
        data_dir: str | None = None,
        rationale_loader: Callable[[], tuple] | None = None,
        rationale_identity: str | None = None,
    ) -> None:
        self.task, self.kshot, self.bank = task, kshot, bank
        self.pf, self.base_identity, self.cfg = prompt_format, base_identity, config
        self.cache_dir, self.data_dir = Path(cache_dir), data_dir
        self._model_loader, self._rationale_loader = model_loader, rationale_loader
        self._rationale_identity = rationale_identity if rationale_loader is not None else f"{base_identity} (base)"
        self._model = self._tok = None
        self._rationales: list[dict[str, Any]] | None = None
        self.timings: dict[str, float] = {}
        self.kshot_ids = [ex.id for ex in kshot]

    # ----------------------------------------------------------------- models
    def base(self):
        """``(model, tokenizer)``, loaded once."""
        if self._model is None:
            self._model, self._tok = self._model_loader()
        return self._model, self._tok

    def peft_model(self):
        """The one ``PeftModel`` holding every bank adapter (loaded on first use)."""
        model, _ = self.base()
        self._model = load_bank_into(model, self.bank.entries, progress=self.cfg.progress)
        return self._model

    def _base_generator(self):
        model, tok = self.base()
        if hasattr(model, "disable_adapter"):
            model = _NoAdapter(model)
        return model, tok, self.pf, f"{self.base_identity} (base, no adapter)"

    @property
    def computed_rationales(self) -> list[dict[str, Any]] | None:
        """The rationale rows if reasoning perplexity needed them, else ``None``."""
        return self._rationales

    def rationales(self) -> list[dict[str, Any]]:
        """One rationale row per K-shot item (see :mod:`kexpert.selection.experts.rationales`)."""
        if self._rationales is None:
            loader = self._rationale_loader or self._base_generator
            self._rationales = kshot_rationales(
                self.cfg.rationale,
                self.task,
                self.kshot,
                self.cache_dir,
                self.data_dir,
                loader,
                self._rationale_identity,
            )
        return self._rationales

    # ------------------------------------------------------------------ cache
    def _key(self, entry_id: str, signal: str, examples_tag: str, ids: list[str], mode: str) -> str:
        setting: dict[str, Any] = {
            "entry": entry_id,
            "base": self.base_identity,
            "task": self.task.name,
            "ids": ids,
            "signal": signal,
            "pf": vars(self.pf),
            "max_length": self.cfg.max_length,
            "examples": examples_tag,
        }
        if signal in ("accuracy", "eval_accuracy"):
            setting["mode"] = mode
            setting["prompt"] = [self.task.prompt_template, self.task.gen_prompt_template, self.task.max_new_tokens]
        elif signal == "ppl":
            setting["target"] = self.task.response_key()
        else:
            setting["rationales"] = sha1_of([r["rationale"] for r in self.rationales()])
            setting["target"] = self.task.response_key(rationale=True)
        return sha1_of(setting)

    def _cache_path(self, signal: str, name: str, key: str) -> Path:
        return (
            self.cache_dir
            / "expert_signals"
            / self.task.name
            / signal
            / f"{re.sub(r'[^0-9A-Za-z_.-]', '_', name)}-{key}.json"
        )

    def _entry_id(self, name: str) -> str:
        return f"base:{self.base_identity}" if name == BASE else self.bank[name].sha256

    # ---------------------------------------------------------------- signals
    def compute(self, signal: str, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Signal values of the named entries (``__base__`` = the base model): ``{name: {value, per_example}}``.

        Args:
            signal: ``accuracy``, ``ppl`` or ``reasoning_ppl``.
            names: Entry names.
        """
        return self._compute(signal, names, self.kshot, "kshot")

    def eval_accuracy(self, names: Sequence[str], examples: list[Example], mode: str | None = None) -> dict[str, dict]:
        """Accuracy of each entry on evaluation items (the oracle / Source Best and the signal study).

        Args:
            names: Entry names.
            examples: Evaluation items.
            mode: ``generate`` / ``loglikelihood``; default the task's eval mode (how the task is reported).
        """
        return self._compute("eval_accuracy", names, examples, "eval", mode or self.task.eval_mode)

    def _compute(
        self, signal: str, names: Sequence[str], examples: list[Example], tag: str, mode: str | None = None
    ) -> dict[str, dict]:
        if signal not in (*SIGNALS, "eval_accuracy"):
            raise ConfigError(f"unknown signal {signal!r} (expected one of {list(SIGNALS)})")
        ids = [ex.id for ex in examples]
        out: dict[str, dict[str, Any]] = {}
        todo: list[str] = []
        mode = mode or self.cfg.accuracy_mode or self.task.eval_mode
        keys = {n: self._key(self._entry_id(n), signal, tag, ids, mode) for n in names}
        for n in names:
            path = self._cache_path(signal, n, keys[n])
            if self.cfg.cache and path.exists():
                out[n] = read_json(path)
            else:
                todo.append(n)
        if todo:
            start = time.perf_counter()
            if signal in ("accuracy", "eval_accuracy"):
                fresh = self._accuracy(todo, examples, mode)
            else:
                fresh = self._perplexity(todo, signal)
            self.timings[signal] = self.timings.get(signal, 0.0) + time.perf_counter() - start
            for n, value in fresh.items():
                value.update(entry=n, signal=signal, key=keys[n])
                write_json(self._cache_path(signal, n, keys[n]), value)
                out[n] = value
        return {n: out[n] for n in names}

    def _accuracy(self, names: list[str], examples: list[Example], mode: str) -> dict[str, dict[str, Any]]:
        model = self.peft_model()
        tok = self.base()[1]
        out = {}
        for n in tqdm(names, desc=f"{self.task.name} accuracy ({mode})", disable=not self.cfg.progress):
            kwargs = dict(
                mode=mode,
                batch_size=self.cfg.batch_size,
                generate_batch_size=self.cfg.generate_batch_size,
                max_length=self.cfg.max_length,
                progress=False,
            )
            if n == BASE:
                with model.disable_adapter():
                    res = evaluate(self.task, model, tok, self.pf, examples=examples, **kwargs)
            elif mode == "loglikelihood":
                res = evaluate(
                    self.task, model, tok, self.pf, examples=examples, adapter_name=adapter_name(n), **kwargs
                )
            else:
                model.set_adapter(adapter_name(n))
                res = evaluate(self.task, model, tok, self.pf, examples=examples, **kwargs)
            m = res.metrics
            out[n] = {
                "value": float(m[m["primary_metric"]]),
                "per_example": [bool(p["correct"]) for p in res.predictions],
                "mode": mode,
                "parsed_fraction": m.get("parsed_fraction"),
            }
        return out

    def pairs(self, signal: str) -> list[tuple[str, str]]:
        """The ``(context, response)`` pairs scored for ``ppl`` / ``reasoning_ppl``, one per K-shot item."""
        tok = self.base()[1]
        if signal == "ppl":
            responses = [self.task.target(ex) for ex in self.kshot]
        else:
            responses = [
                self.task.rationale_response(ex, r["rationale"]) for ex, r in zip(self.kshot, self.rationales())
            ]
        return [
            (self.pf.render(self.task.response_prompt(ex), tok), self.pf.response(resp))
            for ex, resp in zip(self.kshot, responses)
        ]

    def _perplexity(self, names: list[str], signal: str) -> dict[str, dict[str, Any]]:
        pairs = self.pairs(signal)
        model = self.peft_model()
        tok = self.base()[1]
        groups = [names] if self.cfg.mixed_batches else [[n] for n in names]
        out = {}
        for group in groups:
            all_pairs = [p for _ in group for p in pairs]
            adapters = [BASE if n == BASE else adapter_name(n) for n in group for _ in pairs]
            scores = score_continuations(
                model,
                tok,
                all_pairs,
                batch_size=self.cfg.batch_size,
                max_length=self.cfg.max_length,
                adapter_names=adapters,
                progress=f"{self.task.name} {signal} ({len(group)} adapters)" if self.cfg.progress else False,
            )
            for i, n in enumerate(group):
                chunk = scores[i * len(pairs) : (i + 1) * len(pairs)]
                ppls = [s.perplexity for s in chunk]
                out[n] = {
                    "value": float(np.mean(ppls)),
                    "per_example": ppls,
                    "mean_nll": float(np.mean([s.mean_nll for s in chunk])),
                    "num_tokens": [s.num_tokens for s in chunk],
                }
        return out


class _NoAdapter:
    """A view of a ``PeftModel`` with its adapters disabled (forward and generate; the base-model rationale model)."""

    def __init__(self, model) -> None:
        self._model = model

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        with self._model.disable_adapter():
            return self._model(*args, **kwargs)

    def generate(self, **kwargs):
        with self._model.disable_adapter():
            return self._model.generate(**kwargs)
