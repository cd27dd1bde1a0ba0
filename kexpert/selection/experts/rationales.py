"""Rationales for reasoning perplexity (docs/method.md §3.2, Eqs. 2-3 and the Fig. 3 prompt).

Reasoning perplexity scores the gold answer expanded with a chain-of-thought rationale. For each K-shot item the
rationale comes from, in order:

1. ``record``: the item's own rationale (GSM8K worked solutions);
2. ``cot_file``: a CoT file of the task (``rocket/arc-c_cot_50shot.jsonl`` for ARC-C: the paper's 50 answer-first
   CoT outputs), matched to the item by normalised question text;
3. ``generated``: a configurable rationale model given the question and the gold answer with the paper's Fig. 3
   prompt, greedy decoding.

Generated rationales are cached as JSON Lines keyed by the generator, the prompt and the item, and every
rationale used is written next to ``experts.json`` so it can be inspected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kexpert.data.prompts import PromptFormat
from kexpert.data.records import Example
from kexpert.eval.generation import generate_greedy
from kexpert.tasks.task import Task
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.io import iter_jsonl, read_jsonl, sha1_of, write_jsonl
from kexpert.utils.logging import get_logger

log = get_logger(__name__)

#: The paper's Fig. 3 prompt, verbatim.
FIG3_PROMPT = (
    "Read the question and answer. According to the answer, present your thought about the solution.\n"
    "- Please think step by step and provide the answer first then with its explanation.\n"
    "- Your explanation should not exceed three sentences.\n\n"
    "Question: {question} Answer: {answer}."
)


@dataclass
class RationaleConfig:
    """Where rationales come from (``expert_selection.signals.rationale``).

    Attributes:
        sources: Sources tried in order: ``record``, ``cot_file``, ``generated``.
        cot_files: Task name -> CoT file relative to the data dir (JSON Lines with ``instruction``/``output``,
            output = answer first, then the rationale).
        generator: A ``BaseModelSpec`` config for the rationale model (the ``rationale_generator`` config group);
            ``None`` or ``{name: base}`` uses the base model (no adapter).
        prompt: Rationale prompt with ``{question}`` and ``{answer}`` (default: Fig. 3).
        chat_template: Wrap the prompt in the generator tokenizer's chat template when it has one.
        max_new_tokens: Generation budget per rationale.
        batch_size: Prompts per generation batch.
    """

    sources: list[str] = field(default_factory=lambda: ["record", "cot_file", "generated"])
    cot_files: dict[str, str] = field(default_factory=lambda: {"arc_c": "rocket/arc-c_cot_50shot.jsonl"})
    generator: Any = None
    prompt: str = FIG3_PROMPT
    chat_template: bool = True
    max_new_tokens: int = 160
    batch_size: int = 8

    def __post_init__(self) -> None:
        self.sources = list(self.sources)
        self.cot_files = dict(self.cot_files or {})
        bad = [s for s in self.sources if s not in ("record", "cot_file", "generated")]
        if bad or not self.sources:
            raise ConfigError(
                f"expert_selection.signals.rationale.sources: expected a non-empty list of record|cot_file|generated, "
                f"got {self.sources}"
            )
        if "{question}" not in self.prompt or "{answer}" not in self.prompt:
            raise ConfigError("expert_selection.signals.rationale.prompt must contain {question} and {answer}")


def _setting(generator: Any, key: str) -> Any:
    """``key`` of a generator setting: a config mapping or an instantiated ``BaseModelSpec``."""
    return generator.get(key) if isinstance(generator, Mapping) else getattr(generator, key, None)


def uses_base_model(generator: Any) -> bool:
    """Whether a ``generator`` setting means the base model itself (``None``, or ``{name: base}`` without a target)."""
    return generator is None or (_setting(generator, "_target_") is None and _setting(generator, "name") == "base")


def normalize_question(text: str) -> str:
    """Lower-case, collapse whitespace and drop punctuation at the ends (for matching questions across files)."""
    return re.sub(r"\s+", " ", text).strip().strip(".?!:").lower()


_COT_QUESTION = re.compile(r"^\s*Question:\s*(?P<q>.*?)\s+(?:A|1)\.\s", re.DOTALL)  # ARC items may use 1-4


def read_cot_file(path: Path) -> dict[str, str]:
    """Normalised question -> rationale, from an answer-first CoT file (Rocket's ``arc-c_cot_50shot``).

    The question is the instruction's text between ``Question:`` and the first option (``A.`` or ``1.``); the
    rationale is the output after its first line (the answer).

    Raises:
        DataError: a row without that shape (the message names file and line).
    """
    out: dict[str, str] = {}
    for lineno, row in enumerate(iter_jsonl(path), start=1):
        m = _COT_QUESTION.match(str(row.get("instruction", "")))
        output = str(row.get("output", ""))
        if m is None or "\n" not in output.strip():
            raise DataError(f"{path}:{lineno}: expected instruction 'Question: ... A. ...' and output 'answer\\n...'")
        out[normalize_question(m.group("q"))] = output.strip().split("\n", 1)[1].strip()
    return out


def rationale_question(task: Task, ex: Example) -> str:
    """The question as the rationale model sees it: question, then the options on one line each."""
    text = ex.question if not ex.context else f"{ex.context}\n{ex.question}"
    if ex.choices is not None and ex.choice_labels is not None:
        text += " " + "".join(
            task.option_format.format(label=lbl, text=t) for lbl, t in zip(ex.choice_labels, ex.choices)
        )
    return text.strip()


def rationale_answer(ex: Example) -> str:
    """The gold answer given to the rationale model (``A. dry palms`` for multiple choice)."""
    return f"{ex.gold}. {ex.gold_text}" if ex.choices is not None else ex.gold


def clean_generated(text: str, ex: Example) -> str:
    """Drop a first line that only restates the answer (the Fig. 3 prompt asks for the answer first)."""
    text = text.strip()
    first, _, rest = text.partition("\n")
    answer = rationale_answer(ex).lower()
    restates = answer in first.lower() or first.strip().lower().startswith(f"{ex.gold.lower()}.")
    if restates and rest.strip() and len(first) <= len(answer) + 40:
        return rest.strip()
    return text


def _generate(cfg: RationaleConfig, task: Task, items: list[Example], model, tokenizer, pf: PromptFormat) -> list[str]:

    prompts = []
    for ex in items:
        body = cfg.prompt.format(question=rationale_question(task, ex), answer=rationale_answer(ex))
        if cfg.chat_template and getattr(tokenizer, "chat_template", None):
            prompts.append(PromptFormat(chat_template=True).render(body, tokenizer))
        else:
            prompts.append(pf.render(body, tokenizer))
    return generate_greedy(
        model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress="rationales"
    )


def kshot_rationales(
    cfg: RationaleConfig,
    task: Task,
    kshot: list[Example],
    cache_dir: Path,
    data_dir: str | None,
    generator_loader,
    generator_identity: str,
) -> list[dict[str, Any]]:
    """One rationale row per K-shot item: ``{id, source, rationale, question, answer, generator}``.

    Args:
        cfg: Rationale settings.
        task: The task.
        kshot: The K-shot items.
        cache_dir: Root of the generated-rationale cache.
        data_dir: Data dir the CoT files are relative to (``None``: no CoT file).
        generator_loader: ``() -> (model, tokenizer, prompt_format, identity)`` of the rationale model, called
            only when something must be generated.
        generator_identity: What the rationale model's weights are (``BaseModelSpec.identity``, of the base model
            when it writes its own rationales): part of the cache key, so two generators never share rationales.

    Raises:
        DataError: an item gets no rationale from any configured source.
    """
    rows: dict[str, dict[str, Any]] = {}
    cot: dict[str, str] = {}
    cot_rel = cfg.cot_files.get(task.name)
    if "cot_file" in cfg.sources and cot_rel and data_dir and (Path(data_dir) / cot_rel).exists():
        cot = read_cot_file(Path(data_dir) / cot_rel)
    pending: list[Example] = []
    for ex in kshot:
        base = {"id": ex.id, "question": rationale_question(task, ex), "answer": rationale_answer(ex)}
        for source in cfg.sources:
            if source == "record" and ex.rationale:
                rows[ex.id] = {**base, "source": "record", "rationale": ex.rationale, "generator": None}
                break
            if source == "cot_file" and normalize_question(ex.question) in cot:
                rows[ex.id] = {
                    **base,
                    "source": f"cot_file:{cot_rel}",
                    "rationale": cot[normalize_question(ex.question)],
                    "generator": None,
                }
                break
            if source == "generated":
                pending.append(ex)
                break
    if pending:
        rows.update(_cached_generation(cfg, task, pending, cache_dir, generator_loader, generator_identity))
    missing = [ex.id for ex in kshot if ex.id not in rows]
    if missing:
        raise DataError(
            f"task {task.name}: no rationale for K-shot item(s) {', '.join(missing[:5])} from sources {cfg.sources} "
            "(add 'generated' to expert_selection.signals.rationale.sources)"
        )
    counts: dict[str, int] = {}
    for r in rows.values():
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    log.info("rationales for %d K-shot items: %s", len(kshot), counts)
    return [rows[ex.id] for ex in kshot]


def _cached_generation(cfg, task, pending, cache_dir, generator_loader, generator_identity) -> dict[str, dict]:
    key = sha1_of(
        {
            "generator": generator_identity,
            "prompt": cfg.prompt,
            "chat": cfg.chat_template,
            "max_new_tokens": cfg.max_new_tokens,
            "task": task.name,
        }
    )
    name = "base" if uses_base_model(cfg.generator) else str(_setting(cfg.generator, "name"))
    path = Path(cache_dir) / "rationales" / task.name / f"{re.sub(r'[^0-9A-Za-z_.-]', '_', name)}-{key}.jsonl"
    cached = {r["id"]: r for r in read_jsonl(path)} if path.exists() else {}
    todo = [ex for ex in pending if ex.id not in cached]
    if todo:
        model, tok, pf, identity = generator_loader()
        log.info("generating %d rationales with %s (cached in %s)", len(todo), identity, path)
        texts = _generate(cfg, task, todo, model, tok, pf)
        for ex, text in zip(todo, texts):
            cached[ex.id] = {
                "id": ex.id,
                "question": rationale_question(task, ex),
                "answer": rationale_answer(ex),
                "source": "generated",
                "rationale": clean_generated(text, ex),
                "raw": text,
                "generator": identity,
            }
            if not cached[ex.id]["rationale"]:
                cached[ex.id]["rationale"] = rationale_answer(ex)
        write_jsonl(path, list(cached.values()))
    return {ex.id: cached[ex.id] for ex in pending}
