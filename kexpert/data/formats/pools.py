r"""Pool-row normalizers: one function per open-data schema, each mapping a raw row to a list of :class:`Instruction`.

The paper converts every open dataset to ``{instruction, input, output}`` (docs/method.md §2.3). The source
schemas of ``shared/data/pool`` differ per file, so each gets a normalizer here; the registry that names them
(the ``fmt`` of ``conf/pool/*.yaml``) is :data:`kexpert.data.formats.FORMATS` and the loader is
:mod:`kexpert.data.pools`.

Answer style: multiple-choice and yes/no pools come out exactly like the K-shot items our tasks train on
(``conf/task/*.yaml``): ``instruction = "Question: <stem>\nAnswer:"`` and ``output = <answer text>``. Math
pools come out like GSM8K: ``output = "<worked solution>\nThe answer is <number>."``. Instruction pools
(alpaca, GPTeacher, self-instruct, T0/P3) keep their own instruction / input / output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from kexpert.data.formats.tasks import arc_llm_adapters
from kexpert.data.numbers import canonical_number
from kexpert.data.records import Instruction

InstructionNormalizer = Callable[[dict[str, Any]], list[Instruction]]
"""A normalizer maps one raw row to zero or more instructions (``source`` is filled in by the loader).

It raises ``KeyError``/``ValueError``/``TypeError`` on a row that does not fit; the loader turns that into
a :class:`DataError` naming the file and line.
"""

_QA_PROMPT = "Question: {question}\nAnswer:"
_T0_EOS = "<|endoftext|>"


# ----------------------------------------------------------------------------------------------- helpers
def _text(value: Any, field: str) -> str:
    if value is None:
        raise KeyError(field)
    if not isinstance(value, str | int | float):
        raise TypeError(f"field {field!r} must be a string, got {type(value).__name__}")
    return str(value).strip()


def _qa(question: str, answer: str, /, **meta: Any) -> Instruction:
    r"""A question-answer item in the task answer style (prompt ``Question: ...\nAnswer:``, output the text)."""
    question, answer = question.strip(), answer.strip()
    if not question or not answer:
        raise ValueError("empty question or answer")
    return Instruction(instruction=_QA_PROMPT.format(question=question), output=answer, meta=meta)


def _mc(question: str, choices: Sequence[str], gold_index: int, /, **meta: Any) -> Instruction:
    choices = [str(c).strip() for c in choices]
    if not 0 <= gold_index < len(choices):
        raise ValueError(f"gold index {gold_index} is not in 0..{len(choices) - 1}")
    return _qa(question, choices[gold_index], choices=choices, gold_index=gold_index, **meta)


def _tidy_number_text(expr: str) -> str:
    """``"( 76.0 - 25.0 )"`` -> ``"(76 - 25)"``: drop ``.0`` and the spaces inside parentheses."""
    expr = re.sub(r"(\d+)\.0\b", r"\1", expr)
    expr = re.sub(r"\(\s+", "(", expr)
    expr = re.sub(r"\s+\)", ")", expr)
    return re.sub(r"\s+", " ", expr).strip()


def _number(value: Any, field: str) -> str:
    s = _text(value, field)
    num = canonical_number(s)
    if num is None:
        raise ValueError(f"field {field!r} is not a number: {s!r}")
    return num


def _math(question: str, rationale: str, answer: str, /, **meta: Any) -> Instruction:
    r"""A math item in the GSM8K answer style (``<rationale>\nThe answer is <answer>.``)."""
    rationale = rationale.strip()
    output = f"{rationale}\nThe answer is {answer}." if rationale else f"The answer is {answer}."
    return _qa(question, output, answer=answer, **meta)


def _join(*parts: str) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


# ------------------------------------------------------------------------------------------- normalizers
def alpaca(row: dict[str, Any]) -> list[Instruction]:
    """Alpaca layout: ``instruction``, ``input`` (optional), ``output`` (Code Alpaca, alpaca_en_demo)."""
    return [
        Instruction(
            instruction=_text(row.get("instruction"), "instruction"),
            input=str(row.get("input") or "").strip(),
            output=_text(row.get("output"), "output"),
        )
    ]


def gpteacher(row: dict[str, Any]) -> list[Instruction]:
    """GPTeacher: ``instruction``, ``input``, ``response``."""
    return [
        Instruction(
            instruction=_text(row.get("instruction"), "instruction"),
            input=str(row.get("input") or "").strip(),
            output=_text(row.get("response"), "response"),
        )
    ]


def commonsense_qa(row: dict[str, Any]) -> list[Instruction]:
    """CommonsenseQA: ``question: {stem, choices: [{label, text}]}``, ``answerKey``."""
    q = row["question"]
    labels = [str(c["label"]).strip() for c in q["choices"]]
    key = str(row["answerKey"]).strip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the labels {labels}")
    return [_mc(q["stem"], [c["text"] for c in q["choices"]], labels.index(key), id=row.get("id"))]


def commonsense_qa_hf(row: dict[str, Any]) -> list[Instruction]:
    """CommonsenseQA on the hub (``tau/commonsense_qa``): ``question``, ``choices: {label, text}``, ``answerKey``."""
    labels = [str(lbl).strip() for lbl in row["choices"]["label"]]
    key = str(row["answerKey"]).strip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the labels {labels}")
    return [_mc(_text(row.get("question"), "question"), row["choices"]["text"], labels.index(key), id=row.get("id"))]


def social_i_qa(row: dict[str, Any]) -> list[Instruction]:
    """Social IQa (``allenai/social_i_qa``): ``context``, ``question``, ``answerA..C``, ``label`` ``"1"..."3"``."""
    stem = f"{_text(row.get('context'), 'context')} {_text(row.get('question'), 'question')}"
    choices = [_text(row.get(f"answer{c}"), f"answer{c}") for c in "ABC"]
    return [_mc(stem, choices, int(str(row["label"]).strip()) - 1)]


def csqa2(row: dict[str, Any]) -> list[Instruction]:
    """CommonsenseQA 2.0: ``question`` (a statement or yes/no question), ``answer`` ``yes``/``no``."""
    answer = _text(row.get("answer"), "answer").lower()
    if answer not in ("yes", "no"):
        raise ValueError(f"answer must be 'yes' or 'no', got {answer!r}")
    return [_qa(_text(row.get("question"), "question"), answer, id=row.get("id"))]


def qasc_mcq(row: dict[str, Any]) -> list[Instruction]:
    """QASC in TEAM's MCQ schema: ``context`` (the question), ``choice0`` .. ``choiceN``, ``label`` (index)."""
    choices = []
    while f"choice{len(choices)}" in row:
        choices.append(_text(row[f"choice{len(choices)}"], f"choice{len(choices)}"))
    if len(choices) < 2:
        raise KeyError("choice0, choice1, ...")
    return [_mc(_text(row.get("context"), "context"), choices, int(row["label"]))]


def llm_adapters_mc(row: dict[str, Any]) -> list[Instruction]:
    """LLM-Adapters multiple choice (OpenBookQA, ARC): ``instruction`` with ``Answer1: ..``, ``answer`` ``answerN``."""
    ex = arc_llm_adapters(row, "pool", 0)
    assert ex.choices is not None and ex.gold_index is not None
    return [_mc(ex.question, ex.choices, ex.gold_index)]


def math_cot(row: dict[str, Any]) -> list[Instruction]:
    """LLM-Adapters math_data: ``instruction`` (problem), ``output`` (``A: <steps> The answer is N.``), ``answer``."""
    out = _text(row.get("output"), "output")
    out = re.sub(r"^A:\s*", "", out)
    rationale = re.split(r"\s*The answer is\b", out)[0].strip()
    answer = canonical_number(str(row.get("answer", ""))) or _text(row.get("answer"), "answer")
    return [_math(_text(row.get("instruction"), "instruction"), rationale, answer)]


def mawps(row: dict[str, Any]) -> list[Instruction]:
    """MAWPS: ``original_text``, ``equation`` (``X=((22.0-14.0)/4.0)``), ``ans``."""
    answer = _number(row.get("ans"), "ans")
    expr = _text(row.get("equation"), "equation").split("=", 1)[-1]
    return [
        _math(
            _text(row.get("original_text"), "original_text"),
            f"{_tidy_number_text(expr)} = {answer}",
            answer,
            id=row.get("id"),
        )
    ]


def svamp(row: dict[str, Any]) -> list[Instruction]:
    """SVAMP: ``Body``, ``Question``, ``Equation`` (``( 76.0 - 25.0 )``), ``Answer``."""
    answer = _number(row.get("Answer"), "Answer")
    expr = _tidy_number_text(_text(row.get("Equation"), "Equation"))
    question = _join(_text(row.get("Body"), "Body").rstrip(".") + ".", _text(row.get("Question"), "Question"))
    return [_math(question, f"{expr} = {answer}", answer, id=row.get("ID"))]


def asdiv(row: dict[str, Any]) -> list[Instruction]:
    """ASDiv (XML fields): ``Body``, ``Question``, ``Formula`` (``7+2=9``), ``Answer`` (``9 (apples)``)."""
    raw = _text(row.get("Answer"), "Answer")
    head = raw.split(" (", 1)[0].strip()
    answer = canonical_number(head) or head
    formula = str(row.get("Formula") or "").strip()
    question = _join(_text(row.get("Body"), "Body"), _text(row.get("Question"), "Question"))
    return [_math(question, formula, answer, id=row.get("ID"))]


def aqua_rat(row: dict[str, Any]) -> list[Instruction]:
    """AQuA-RAT: ``question``, ``options`` (``["A)32400", ...]``), ``rationale``, ``correct`` (letter)."""
    options = [str(o).strip() for o in row["options"]]
    letters = [o.split(")", 1)[0].strip() for o in options]
    correct = _text(row.get("correct"), "correct")
    if correct not in letters:
        raise ValueError(f"correct {correct!r} is not one of the option letters {letters}")
    listed = " ".join(f"({o.split(')', 1)[0]}) {o.split(')', 1)[-1].strip()}" for o in options)
    question = f"{_text(row.get('question'), 'question')}\nAnswer Choices: {listed}"
    return [_math(question, str(row.get("rationale") or ""), correct)]


def self_instruct_seed(row: dict[str, Any]) -> list[Instruction]:
    """Self-instruct seed tasks: ``instruction``, ``instances: [{input, output}]`` (one item per instance)."""
    instruction = _text(row.get("instruction"), "instruction")
    instances = row["instances"]
    if not isinstance(instances, list) or not instances:
        raise ValueError("instances must be a non-empty list")
    return [
        Instruction(
            instruction=instruction,
            input=str(inst.get("input") or "").strip(),
            output=_text(inst.get("output"), "instances[].output"),
            meta={"id": f"{row.get('id', '')}#{i}" if row.get("id") else None, "name": row.get("name")},
        )
        for i, inst in enumerate(instances)
    ]


def prompt_completion(row: dict[str, Any]) -> list[Instruction]:
    """T0/P3 sample (self-instruct): ``prompt``, ``completion`` ending ``<|endoftext|>`` (stripped), ``template``."""
    completion = _text(row.get("completion"), "completion").removesuffix(_T0_EOS).strip()
    if not completion:  # e.g. every row of t0_p3/trec: nothing to learn from, skipped (and counted)
        return []
    return [
        Instruction(
            instruction=_text(row.get("prompt"), "prompt"),
            output=completion,
            meta={"template": row.get("template")} if row.get("template") else {},
        )
    ]


def gsm8k(row: dict[str, Any]) -> list[Instruction]:
    """OpenAI GSM8K: ``question``, ``answer`` = solution then ``#### <number>`` (calculator marks dropped)."""
    answer = _text(row.get("answer"), "answer")
    if "####" not in answer:
        raise ValueError("answer has no '#### <number>' line")
    solution, final = answer.rsplit("####", 1)
    return [_math(_text(row.get("question"), "question"), re.sub(r"<<[^>]*>>", "", solution), _number(final, "####"))]
