"""A task: where its splits come from, how its prompts look, and how an answer is judged.

One :class:`Task` class serves all six tasks; everything task-specific is configuration
(``conf/task/*.yaml``): the split sources and row formats (read by :mod:`kexpert.tasks.sources`), prompt
templates, the evaluation mode, and the answer kind (multiple choice, yes/no, number, code). Nothing here
hard-codes a chat template: that is the base model's :class:`~kexpert.data.prompts.PromptFormat`.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from kexpert.data.records import Example, Instruction
from kexpert.tasks import extractors
from kexpert.tasks.sources import SplitSource, read_hub, read_local, resolve_data_dir
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.logging import get_logger

log = get_logger(__name__)

AnswerKind = Literal["multiple_choice", "yes_no", "number", "code"]
EvalMode = Literal["loglikelihood", "generate"]
ResponseFormat = Literal["text", "options"]


class Task:
    """A configured evaluation task.

    Args:
        name: Short task name (``arc_e``).
        answer_kind: How answers are judged.
        eval_split: Source of the evaluation split.
        kshot_split: Source of the K-shot pool (the task's train split); ``None`` or missing in the chosen
            source means the K-shot pool is a seeded hold-out slice of the eval split (``kshot_holdout`` rows)
            that is then excluded from evaluation.
        prompt: Prompt template for log-likelihood scoring and SFT; fields ``{question}``, ``{context}``,
            ``{options}``, ``{tests}``.
        target: Response template (``{text}``, ``{label}``, ``{answer}``, ``{rationale}``); the scored
            continuation for multiple choice and the SFT target.
        eval_mode: ``loglikelihood`` (multiple choice only) or ``generate``.
        gen_prompt: Prompt template for generation mode (defaults to ``prompt``).
        option_format: How one option renders inside ``{options}``.
        data_dir: Local data dir; ``None`` falls back to ``$KEXPERT_DATA_DIR``.
        source: ``auto`` (local if a data dir is set, else hub), ``local`` or ``hub``.
        num_choices: Keep only multiple-choice items with exactly this many options (OpenCompass drops
            non-4-option ARC items); ``None`` keeps all.
        kshot_holdout: Size of the hold-out K-shot pool when no train split is available.
        holdout_seed: Seed of the hold-out draw (fixed, independent of ``data_seed``).
        max_new_tokens: Generation budget.
        stop: Stop strings that end a generation.
        fewshot_split: Optional split whose first ``num_fewshot`` items are prepended as demonstrations.
        num_fewshot: Number of demonstrations.
        rationale_target: Response template with a rationale (reasoning perplexity); ``{rationale}``.
        primary_metric: The metric name reported as the task's score.
        response_format: How a multiple-choice item is written as an SFT item and as a perplexity pair.
            ``text`` (``scale=cpu``): the ``prompt`` without options, the answer text as response (a 135M model
            answers letters at chance). ``options`` (``scale=paper``, the paper's format): ``gen_prompt`` with the
            options listed, ``options_target`` (``" A. dry palms"``) as response. Tasks without choices ignore it.
        options_target: Response template of the ``options`` format.
        options_rationale_target: Response template with a rationale in the ``options`` format.
    """

    def __init__(
        self,
        name: str,
        answer_kind: AnswerKind,
        eval_split: Any,
        prompt: str,
        target: str,
        kshot_split: Any = None,
        eval_mode: EvalMode = "loglikelihood",
        gen_prompt: str | None = None,
        option_format: str = "{label}. {text}\n",
        data_dir: str | None = None,
        source: Literal["auto", "local", "hub"] = "auto",
        num_choices: int | None = None,
        kshot_holdout: int = 200,
        holdout_seed: int = 1234,
        max_new_tokens: int = 32,
        stop: list[str] | None = None,
        fewshot_split: Any = None,
        num_fewshot: int = 0,
        rationale_target: str = "{answer}\n\n{rationale}",
        primary_metric: str | None = None,
        response_format: ResponseFormat = "text",
        options_target: str = " {label}. {text}",
        options_rationale_target: str = " {label}. {text}\n\n{rationale}",
    ) -> None:
        if answer_kind not in ("multiple_choice", "yes_no", "number", "code"):
            raise ConfigError(f"task.answer_kind: expected multiple_choice|yes_no|number|code, got {answer_kind!r}")
        if eval_mode not in ("loglikelihood", "generate"):
            raise ConfigError(f"task.eval_mode: expected loglikelihood|generate, got {eval_mode!r}")
        if eval_mode == "loglikelihood" and answer_kind not in ("multiple_choice", "yes_no"):
            raise ConfigError(f"task.eval_mode=loglikelihood needs choices; task {name} is {answer_kind}")
        if response_format not in ("text", "options"):
            raise ConfigError(f"task.response_format: expected text|options, got {response_format!r}")
        if source not in ("auto", "local", "hub"):
            raise ConfigError(f"task.source: expected auto|local|hub, got {source!r}")
        self.name = name
        self.answer_kind = answer_kind
        self.eval_source = SplitSource.build(eval_split)
        self.kshot_source = SplitSource.build(kshot_split)
        self.fewshot_source = SplitSource.build(fewshot_split)
        self.prompt_template = prompt
        self.gen_prompt_template = gen_prompt or prompt
        self.target_template = target
        self.rationale_template = rationale_target
        self.option_format = option_format
        self.response_format: ResponseFormat = response_format
        self.options_target = options_target
        self.options_rationale_target = options_rationale_target
        self.eval_mode: EvalMode = eval_mode
        self.data_dir = data_dir
        self.source = source
        self.num_choices = num_choices
        self.kshot_holdout = kshot_holdout
        self.holdout_seed = holdout_seed
        self.max_new_tokens = max_new_tokens
        self.stop = list(stop or [])
        self.num_fewshot = num_fewshot
        self.primary_metric = primary_metric or {"code": "pass@1"}.get(answer_kind, "acc")
        self._cache: dict[str, list[Example]] = {}
        self._origin: Task | None = None  # set on a with_eval_split copy: the task whose K-shot pool it keeps
        self._fixed_holdout: set[str] | None = None  # ... and that task's hold-out ids

    def with_eval_split(self, override: Mapping[str, Any], key: str = "eval.split") -> Task:
        """This task evaluated on another split, e.g. ARC's test split instead of Dev.

        Only evaluation changes: the K-shot pool, and the hold-out excluded from evaluation when the K-shot is
        drawn from the eval split, stay this task's, so artifacts trained for it are reused unchanged.

        Args:
            override: Keys of ``eval_split`` (``local``, ``local_format``, ``hub``, ``hub_format``) merged over
                it; a ``hub`` mapping is merged key by key, so ``{hub: {split: test}}`` keeps path and name.
            key: Config key named in errors.

        Raises:
            ConfigError: An unknown key, or a task without an eval split.
        """
        if self.eval_source is None:
            raise ConfigError(f"{key}: task {self.name} has no eval_split to override")
        source = self.eval_source.merged(override, key)
        held = self._holdout_ids()
        other = copy.copy(self)
        other.eval_source = source
        other._cache = {k: v for k, v in self._cache.items() if not k.startswith("eval:")}
        other._origin = self._origin or self
        other._fixed_holdout = held
        return other

    # ------------------------------------------------------------------ data
    def resolved_source(self) -> Literal["local", "hub"]:
        """``local`` or ``hub``, after resolving ``auto`` (local when a data dir is configured)."""
        if self.source != "auto":
            return self.source  # type: ignore[return-value]
        return "local" if self._data_dir() is not None else "hub"

    def _data_dir(self) -> Path | None:
        return resolve_data_dir(self.data_dir)

    def _load(self, src: SplitSource, what: str) -> list[Example]:
        key = f"{what}:{self.resolved_source()}"
        if key in self._cache:
            return self._cache[key]
        load = self._load_local if self.resolved_source() == "local" else self._load_hub
        rows = load(src, what)
        if self.num_choices is not None and self.answer_kind == "multiple_choice":
            before = len(rows)
            rows = [r for r in rows if r.choices is not None and len(r.choices) == self.num_choices]
            if len(rows) < before:
                log.info(
                    "%s/%s: kept %d of %d items with %d options", self.name, what, len(rows), before, self.num_choices
                )
        if not rows:
            where = src.local if self.resolved_source() == "local" else src.hub
            why = f" with {self.num_choices} options" if self.num_choices is not None else ""
            raise DataError(f"task {self.name}: split {what!r} ({where}) has no items{why}")
        self._cache[key] = rows
        return rows

    def _load_local(self, src: SplitSource, what: str) -> list[Example]:
        return read_local(self.name, src, what, self._data_dir())

    def _load_hub(self, src: SplitSource, what: str) -> list[Example]:
        return read_hub(self.name, src, what)

    def _has_kshot_split(self) -> bool:
        src = self.kshot_source
        if src is None:
            return False
        return (src.local is not None) if self.resolved_source() == "local" else (src.hub is not None)

    def _holdout_ids(self) -> set[str]:
        if self._fixed_holdout is not None:
            return self._fixed_holdout
        if self._has_kshot_split():
            return set()
        rows = self._load(self.eval_source, "eval")  # type: ignore[arg-type]
        n = min(self.kshot_holdout, len(rows) // 2)
        rng = random.Random(self.holdout_seed)
        return {rows[i].id for i in rng.sample(range(len(rows)), n)}

    @property
    def kshot_pool_source(self) -> str:
        """``train`` or ``holdout:<n>`` (the K-shot pool is a held-out slice of the eval split)."""
        return "train" if self._has_kshot_split() else f"holdout:{len(self._holdout_ids())}"

    def eval_examples(self, limit: int | None = None, seed: int = 0) -> list[Example]:
        """The evaluation split (minus any hold-out K-shot pool), optionally a deterministic subset.

        Args:
            limit: Evaluate at most this many items, a ``random.Random(seed).sample`` of the indices kept in file
                order. A larger limit is a fresh sample, not a superset of a smaller one: ``random.sample`` switches
                algorithm with the sample size, so e.g. 290 of BoolQ's 300-item subset are in its 600-item one.
            seed: Seed of that draw.

        Raises:
            ConfigError: ``limit`` is zero or negative (it would select nothing).
            DataError: the split is empty (or nothing is left after the hold-out).
        """
        if self.eval_source is None:
            raise ConfigError(f"task {self.name}: eval_split is not configured")
        if limit is not None and limit <= 0:
            raise ConfigError(f"eval.limit={limit} selects no items (a positive number, or null for the whole split)")
        held = self._holdout_ids()
        rows = [r for r in self._load(self.eval_source, "eval") if r.id not in held]
        if not rows:
            raise DataError(f"task {self.name}: no eval items left after the {len(held)}-item K-shot hold-out")
        if limit is not None and 0 < limit < len(rows):
            keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
            rows = [rows[i] for i in keep]
        return rows

    def kshot_pool(self) -> list[Example]:
        """The pool the K-shot is drawn from: the train split, or the hold-out slice of the eval split."""
        if self._origin is not None:
            return self._origin.kshot_pool()
        if self._has_kshot_split():
            return self._load(self.kshot_source, "kshot")  # type: ignore[arg-type]
        held = self._holdout_ids()
        return [r for r in self._load(self.eval_source, "eval") if r.id in held]  # type: ignore[arg-type]

    def fewshot_examples(self) -> list[Example]:
        """Fixed demonstrations for the prompt (first ``num_fewshot`` of ``fewshot_split``)."""
        if self.num_fewshot <= 0 or self.fewshot_source is None:
            return []
        return self._load(self.fewshot_source, "fewshot")[: self.num_fewshot]

    # --------------------------------------------------------------- prompts
    def _fields(self, ex: Example) -> dict[str, str]:
        options = ""
        if ex.choices is not None and ex.choice_labels is not None:
            options = "".join(
                self.option_format.format(label=lbl, text=txt) for lbl, txt in zip(ex.choice_labels, ex.choices)
            )
        return {
            "question": ex.question,
            "context": ex.context or "",
            "options": options,
            "tests": "\n".join(ex.tests or ()),
            "first_test": (ex.tests or ("",))[0],
        }

    def prompt(self, ex: Example, mode: EvalMode | None = None, fewshot: bool = True) -> str:
        """The task prompt (before the model's prompt format).

        Args:
            ex: The example.
            mode: Which template (``generate`` uses ``gen_prompt``); default the task's eval mode.
            fewshot: Prepend the fixed demonstrations (evaluation); SFT items leave them out.
        """
        generate = (mode or self.eval_mode) == "generate"
        template = self.gen_prompt_template if generate else self.prompt_template
        demos = "".join(
            template.format(**self._fields(d))
            + (self.target(d) if generate else self.target_template.format(**self._target_fields(d)))
            + "\n\n"
            for d in (self.fewshot_examples() if fewshot else [])
            if d.id != ex.id
        )
        return demos + template.format(**self._fields(ex))

    def _target_fields(self, ex: Example, text: str | None = None, label: str | None = None) -> dict[str, str]:
        answer = ex.gold
        if ex.choices is not None:
            text = ex.gold_text if text is None else text
            label = ex.gold if label is None else label
            answer = f"{label}. {text}"
        return {
            "text": text or "",
            "label": label or "",
            "answer": answer,
            "rationale": ex.rationale or "",
            "code": ex.gold if self.answer_kind == "code" else "",
        }

    def _options(self, ex: Example) -> bool:
        """Whether ``ex`` is written in the ``options`` response format (a choice item under that format)."""
        return self.response_format == "options" and ex.choices is not None and ex.choice_labels is not None

    def response_prompt(self, ex: Example) -> str:
        """The prompt of ``ex`` as an SFT item and a perplexity pair (no demonstrations; see ``response_format``)."""
        return self.prompt(ex, mode="generate" if self._options(ex) else self.eval_mode, fewshot=False)

    def response_key(self, rationale: bool = False) -> Any:
        """What determines :meth:`response_prompt` and the gold response, for cache keys.

        The ``text`` format returns the bare target template, as before the format existed, so cached signals
        computed in that format stay valid.
        """
        if self.response_format == "text":
            return self.rationale_template if rationale else self.target_template
        target = self.options_rationale_target if rationale else self.options_target
        prompt, option = self.gen_prompt_template, self.option_format
        return {"format": "options", "prompt": prompt, "option": option, "target": target}

    def target(self, ex: Example) -> str:
        """The gold response: the SFT target and the perplexity response (``options_target`` in that format)."""
        template = self.options_target if self._options(ex) else self.target_template
        return template.format(**self._target_fields(ex))

    def rationale_response(self, ex: Example, rationale: str | None = None) -> str:
        """Gold answer expanded with a rationale (the paper's reasoning-perplexity target, answer first)."""
        fields = self._target_fields(ex)
        if rationale is not None:
            fields["rationale"] = rationale
        if not fields["rationale"]:
            raise DataError(f"task {self.name}: example {ex.id} has no rationale")
        template = self.options_rationale_target if self._options(ex) else self.rationale_template
        return template.format(**fields)

    def continuations(self, ex: Example) -> list[str]:
        """One scored continuation per option (log-likelihood mode)."""
        if ex.choices is None or ex.choice_labels is None:
            raise ConfigError(f"task {self.name}: log-likelihood scoring needs choices")
        return [
            self.target_template.format(**self._target_fields(ex, text=t, label=lbl))
            for lbl, t in zip(ex.choice_labels, ex.choices)
        ]

    def to_instruction(self, ex: Example, with_rationale: bool = False) -> Instruction:
        """The example as an SFT item: instruction = task prompt, output = gold target."""
        output = self.rationale_response(ex) if with_rationale else self.target(ex)
        return Instruction(
            instruction=self.response_prompt(ex),
            output=output.strip(),
            source=f"kshot:{self.name}",
            meta={"id": ex.id},
        )

    # --------------------------------------------------------------- judging
    def extract(self, generation: str, ex: Example) -> str | None:
        """The answer named by a generation, in the gold's vocabulary (label / number / code)."""
        for s in self.stop:
            if s and s in generation:
                generation = generation.split(s, 1)[0]
        if self.answer_kind == "code":
            return extractors.extract_code(generation)
        if self.answer_kind == "number":
            return extractors.gsm8k_number(generation)
        if self.answer_kind == "yes_no":
            yn = extractors.yes_no(generation)
            return None if yn is None else ("A" if yn == "yes" else "B")
        labels = ex.choice_labels or ()
        letter = extractors.first_option_letter(generation, labels)
        if letter is None and ex.choices is not None:
            idx = extractors.match_option_text(generation, ex.choices)
            letter = None if idx is None else labels[idx]
        return letter

    def is_correct(self, prediction: str | None, ex: Example) -> bool:
        """Exact match against the gold (numeric equality for numbers). Code is judged by the sandbox."""
        if prediction is None:
            return False
        if self.answer_kind == "number":
            return extractors.numbers_equal(prediction, ex.gold)
        if self.answer_kind == "code":
            raise ConfigError("code answers are judged by running their tests (kexpert.eval.sandbox)")
        return prediction == ex.gold

    def info(self) -> dict[str, Any]:
        """Provenance recorded in metrics.json."""
        src = self.eval_source
        where = src.local if self.resolved_source() == "local" else src.hub  # type: ignore[union-attr]
        return {
            "task": self.name,
            "source": self.resolved_source(),
            "eval_split": where,
            "kshot_pool": self.kshot_pool_source,
            "eval_mode": self.eval_mode,
            "response_format": self.response_format,
        }
