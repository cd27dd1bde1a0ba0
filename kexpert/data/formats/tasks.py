"""Task-row normalizers: one function per task source schema, each mapping a raw row to an :class:`Example`.

Local files (the layout of ``shared/data``) and hub datasets (``datasets.load_dataset``) go through the
same functions, so both sources give identical records for the same split. Every normalizer raises
``KeyError``/``ValueError`` on a row that does not fit; the loader turns that into an error naming the
file and line. The registry that names them (the ``local_format`` / ``hub_format`` of ``conf/task/*.yaml``)
is :data:`kexpert.data.formats.FORMATS`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from kexpert.data.numbers import canonical_number
from kexpert.data.records import Example

ExampleNormalizer = Callable[[dict[str, Any], str, int], Example]
"""A task-row normalizer: ``(row, task name, row index) -> Example``."""

_LETTERS = "ABCDEFGHIJ"


def _content_id(prefix: str, text: str) -> str:
    return f"{prefix}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def _mc(task: str, rid: str, question: str, texts: list[str], labels: list[str], answer_key: str) -> Example:
    labels = [str(lbl).strip() for lbl in labels]
    key = str(answer_key).strip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the labels {labels}")
    return Example(
        id=str(rid),
        task=task,
        question=question.strip(),
        choices=tuple(t.strip() for t in texts),
        choice_labels=tuple(labels),
        gold=key,
        gold_index=labels.index(key),
    )


def arc_ai2(row: dict[str, Any], task: str, index: int) -> Example:
    """AI2 ARC schema: ``question: {stem, choices: [{text, label}]}``, ``answerKey``."""
    q = row["question"]
    return _mc(
        task,
        row["id"],
        q["stem"],
        [c["text"] for c in q["choices"]],
        [c["label"] for c in q["choices"]],
        row["answerKey"],
    )


def arc_hf(row: dict[str, Any], task: str, index: int) -> Example:
    """HF ``allenai/ai2_arc`` schema: ``question``, ``choices: {text: [...], label: [...]}``, ``answerKey``."""
    return _mc(task, row["id"], row["question"], row["choices"]["text"], row["choices"]["label"], row["answerKey"])


_LLMA_CHOICES = re.compile(r"Answer(\d+):\s*(.*?)(?=\s*Answer\d+:|\n\nAnswer format:|$)", re.DOTALL)


def arc_llm_adapters(row: dict[str, Any], task: str, index: int) -> Example:
    """LLM-Adapters' reworded ARC: ``instruction`` holding ``Answer1: .. Answer2: ..``, gold ``answer`` = ``answerN``.

    The source has no ids, so the id is a hash of the question; option labels are A, B, C, ... by position.
    """
    instr = row["instruction"]
    m = re.search(r"question:\s*(.*?)\n\nAnswer1:", instr, flags=re.DOTALL)
    if not m:
        raise ValueError("instruction does not contain 'question: ... \\n\\nAnswer1:'")
    question = m.group(1).strip()
    opts = _LLMA_CHOICES.findall(instr[m.end() - len("Answer1:") :])
    if len(opts) < 2:
        raise ValueError("could not parse the AnswerN options")
    numbers = [int(n) for n, _ in opts]
    if numbers != list(range(1, len(opts) + 1)):
        raise ValueError(f"options are not numbered 1..n: {numbers}")
    gold_n = int(str(row["answer"]).strip().lower().removeprefix("answer"))
    labels = list(_LETTERS[: len(opts)])
    return _mc(task, _content_id(task, question), question, [t for _, t in opts], labels, labels[gold_n - 1])


def piqa(row: dict[str, Any], task: str, index: int) -> Example:
    """PIQA (official jsonl + ``label``, or ``ybisk/piqa``): ``goal``, ``sol1``, ``sol2``, ``label``; id = index."""
    label = int(row["label"])
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label}")
    rid = row.get("id") or f"{task}-{index}"  # PIQA has no ids and repeats some goals: the row index is stable
    return _mc(task, rid, row["goal"], [row["sol1"], row["sol2"]], ["A", "B"], "AB"[label])


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bool(value)
    s = str(value).strip().lower()
    if s in ("true", "yes", "1"):
        return True
    if s in ("false", "no", "0"):
        return False
    raise ValueError(f"not a boolean label: {value!r}")


def _boolq(task: str, rid: str, question: str, passage: str, answer: bool) -> Example:
    return Example(
        id=str(rid),
        task=task,
        question=question.strip(),
        context=passage.strip(),
        choices=("yes", "no"),
        choice_labels=("A", "B"),
        gold="A" if answer else "B",
        gold_index=0 if answer else 1,
    )


def boolq_superglue(row: dict[str, Any], task: str, index: int) -> Example:
    """SuperGLUE BoolQ (local copy has string labels ``"true"``/``"false"``; hub ``super_glue`` has 0/1)."""
    rid = row.get("idx", index)
    return _boolq(task, f"boolq-{rid}", row["question"], row["passage"], _bool(row["label"]))


def boolq_google(row: dict[str, Any], task: str, index: int) -> Example:
    """``google/boolq``: ``question``, ``answer`` (bool), ``passage``; no ids, so the row index is used."""
    return _boolq(task, f"boolq-{index}", row["question"], row["passage"], _bool(row["answer"]))


def _strip_calculator(text: str) -> str:
    return re.sub(r"<<[^>]*>>", "", text)


def gsm8k(row: dict[str, Any], task: str, index: int) -> Example:
    """OpenAI GSM8K: ``question``, ``answer`` = solution then ``#### <number>``.

    The rationale is the solution without calculator annotations (``<<48/2=24>>``).
    """
    answer = row["answer"]
    if "####" not in answer:
        raise ValueError("answer has no '#### <number>' line")
    solution, final = answer.rsplit("####", 1)
    gold = canonical_number(final.strip())
    if gold is None:
        raise ValueError(f"final answer is not a number: {final.strip()!r}")
    return Example(
        id=_content_id(task, row["question"]),
        task=task,
        question=row["question"].strip(),
        gold=gold,
        rationale=_strip_calculator(solution).strip(),
    )


def mbpp(row: dict[str, Any], task: str, index: int) -> Example:
    """MBPP (full or sanitized): ``task_id``, ``text``/``prompt``, ``code``, ``test_list``, ``test_setup_code``."""
    text = row.get("text") or row.get("prompt")
    if not text:
        raise KeyError("text")
    tests = row["test_list"]
    if not isinstance(tests, list) or not tests:
        raise ValueError("test_list must be a non-empty list")
    return Example(
        id=f"mbpp-{row['task_id']}",
        task=task,
        question=text.strip(),
        gold=row["code"].replace("\r\n", "\n"),
        tests=tuple(tests),
        test_setup=row.get("test_setup_code") or "",
    )
