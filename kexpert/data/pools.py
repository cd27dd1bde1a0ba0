r"""Open instruction pools: every file of ``shared/data/pool`` normalized to :class:`Instruction`.

The paper converts every open dataset to ``{instruction, input, output}`` (METHOD.md §2.3) and retrieves
the MoE's extra training data from such a pool (METHOD.md §5). The source schemas differ per file, so each
gets a normalizer in :data:`POOL_FORMATS`; :func:`load_pool_file` picks one from the file name (or the
first row's keys) and :func:`load_pool` reads a config listing several files, directories or hub datasets.

Answer style: multiple-choice and yes/no pools come out exactly like the K-shot items our tasks train on
(``conf/task/*.yaml``): ``instruction = "Question: <stem>\nAnswer:"`` and ``output = <answer text>``. Math
pools come out like GSM8K: ``output = "<worked solution>\nThe answer is <number>."``. Instruction pools
(alpaca, GPTeacher, self-instruct, T0/P3) keep their own instruction / input / output.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kexpert.data.records import Instruction
from kexpert.tasks.extractors import canonical_number
from kexpert.tasks.normalizers import arc_llm_adapters
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.io import iter_jsonl
from kexpert.utils.logging import get_logger

log = get_logger(__name__)

PoolNormalizer = Callable[[dict[str, Any]], list[Instruction]]
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


POOL_FORMATS: dict[str, PoolNormalizer] = {
    "alpaca": alpaca,
    "gpteacher": gpteacher,
    "commonsense_qa": commonsense_qa,
    "csqa2": csqa2,
    "qasc_mcq": qasc_mcq,
    "llm_adapters_mc": llm_adapters_mc,
    "math_cot": math_cot,
    "mawps": mawps,
    "svamp": svamp,
    "asdiv": asdiv,
    "aqua_rat": aqua_rat,
    "self_instruct_seed": self_instruct_seed,
    "t0_p3": prompt_completion,
    "prompt_completion": prompt_completion,
    "gsm8k": gsm8k,
}
"""Pool schema name -> normalizer."""

# File-name patterns (of the name without ``.jsonl[.gz]``) -> format, for the files of shared/data/pool.
_NAME_FORMATS: list[tuple[str, str]] = [
    ("commonsense_qa", "commonsense_qa"),
    ("csqa2", "csqa2"),
    ("qasc_mcq", "qasc_mcq"),
    ("openbookqa", "llm_adapters_mc"),
    ("math_cot*", "math_cot"),
    ("mawps", "mawps"),
    ("svamp", "svamp"),
    ("asdiv", "asdiv"),
    ("aqua_rat*", "aqua_rat"),
    ("gpteacher*", "gpteacher"),
    ("*alpaca*", "alpaca"),
    ("self_instruct_seed*", "self_instruct_seed"),
    ("gsm8k*", "gsm8k"),
]

# First-row keys -> format, for files whose name says nothing.
_KEY_FORMATS: list[tuple[frozenset[str], str]] = [
    (frozenset({"prompt", "completion"}), "prompt_completion"),
    (frozenset({"instruction", "instances"}), "self_instruct_seed"),
    (frozenset({"instruction", "response"}), "gpteacher"),
    (frozenset({"instruction", "output"}), "alpaca"),
    (frozenset({"answerKey", "question"}), "commonsense_qa"),
    (frozenset({"context", "choice0", "label"}), "qasc_mcq"),
    (frozenset({"question", "options", "correct"}), "aqua_rat"),
    (frozenset({"original_text", "equation", "ans"}), "mawps"),
    (frozenset({"Body", "Question", "Equation"}), "svamp"),
    (frozenset({"Body", "Question", "Formula"}), "asdiv"),
]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl.gz", ".jsonl", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def format_from_keys(row: Mapping[str, Any]) -> str | None:
    """The pool format whose required keys the row has, or ``None``."""
    keys = set(row)
    for needed, fmt in _KEY_FORMATS:
        if needed <= keys:
            return fmt
    return None


def detect_format(path: str | Path) -> str | None:
    """The pool format of a file from its name (``t0_p3/*`` -> ``t0_p3``), or ``None`` if the name is unknown."""
    path = Path(path)
    if path.parent.name == "t0_p3":
        return "t0_p3"
    stem = _stem(path)
    for pattern, fmt in _NAME_FORMATS:
        if fnmatch.fnmatch(stem, pattern):
            return fmt
    return None


def default_source(path: str | Path, fmt: str | None = None) -> str:
    """Source name of a pool file: the file name without extension, ``t0_p3/<name>`` for T0/P3 files."""
    path = Path(path)
    stem = _stem(path)
    return f"t0_p3/{stem}" if path.parent.name == "t0_p3" or fmt == "t0_p3" else stem


def _check_fmt(fmt: str, where: str) -> PoolNormalizer:
    if fmt not in POOL_FORMATS:
        raise ConfigError(f"{where}: unknown pool format {fmt!r}; expected one of {sorted(POOL_FORMATS)}")
    return POOL_FORMATS[fmt]


def normalize_rows(
    rows: Iterable[dict[str, Any]],
    fmt: str | None,
    source: str,
    where: str,
    limit: int | None = None,
) -> list[Instruction]:
    """Normalize raw rows with a pool format, tagging each item with its source and a stable id.

    Args:
        rows: Raw rows (line numbers in errors count from 1).
        fmt: A key of :data:`POOL_FORMATS`; ``None`` sniffs it from the first row's keys.
        source: Source name stored in every item.
        where: File path or hub spec, used in error messages.
        limit: Stop after this many items.

    Returns:
        The normalized items; ``meta["id"]`` is the row's own id or ``<source>:<line>``.

    Raises:
        DataError: a row does not fit the format, or the format cannot be told from the first row.
    """
    out: list[Instruction] = []
    skipped = 0
    normalize: PoolNormalizer | None = _check_fmt(fmt, where) if fmt else None
    for lineno, row in enumerate(rows, start=1):
        if limit is not None and len(out) >= limit:
            break
        if normalize is None:
            fmt = format_from_keys(row)
            if fmt is None:
                raise DataError(
                    f"{where}:{lineno}: cannot tell the pool format from the keys {sorted(row)}; "
                    f"set fmt to one of {sorted(POOL_FORMATS)}"
                )
            normalize = POOL_FORMATS[fmt]
        try:
            items = normalize(row)
        except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise DataError(f"{where}:{lineno}: not a valid {fmt} row ({type(e).__name__}: {e})") from e
        skipped += not items
        for k, item in enumerate(items):
            rid = item.meta.get("id")
            meta = {key: v for key, v in item.meta.items() if v is not None}
            meta["id"] = str(rid) if rid is not None else f"{source}:{lineno}" + (f"#{k}" if len(items) > 1 else "")
            out.append(dataclasses.replace(item, source=source, meta=meta))
    if skipped:
        log.warning("%s: skipped %d rows with an empty answer", where, skipped)
    return out[:limit] if limit is not None else out


def load_pool_file(
    path: str | Path,
    fmt: str | None = None,
    source: str | None = None,
    limit: int | None = None,
) -> list[Instruction]:
    """Read one pool file (``.jsonl`` or ``.jsonl.gz``) into instructions.

    Args:
        path: The file.
        fmt: A key of :data:`POOL_FORMATS`; ``None`` detects it from the file name, then the first row's keys.
        source: Source name stored in each item; default :func:`default_source`.
        limit: Read at most this many items.

    Returns:
        The normalized items, in file order.

    Raises:
        DataError: the file is missing or a row is malformed (the message names file and line).
        ConfigError: ``fmt`` is not a known format.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: pool file not found")
    fmt = fmt or detect_format(path)
    items = normalize_rows(iter_jsonl(path), fmt, source or default_source(path, fmt), str(path), limit)
    if not items:
        log.warning("%s: pool file has no rows", path)
    return items


def _pool_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        raise DataError(f"{directory}: pool directory has no .jsonl or .jsonl.gz files")
    return files


def _load_hub(hub: Mapping[str, Any], fmt: str | None, source: str | None, limit: int | None) -> list[Instruction]:
    hub = dict(hub)
    if "path" not in hub:
        raise ConfigError(f"pool hub entry {hub}: needs 'path' (and optionally 'name', 'split')")
    hub.setdefault("split", "train")
    where = f"hub:{hub['path']}" + (f"/{hub['name']}" if hub.get("name") else "") + f"[{hub['split']}]"
    try:
        import datasets

        ds = datasets.load_dataset(**hub)
    except Exception as e:  # network, auth, missing dataset: one clear line
        raise DataError(f"{where}: could not load the dataset ({type(e).__name__}: {e})") from e
    return normalize_rows((dict(r) for r in ds), fmt, source or str(hub["path"]).split("/")[-1], where, limit)


def _entries(spec: Any) -> list[Any]:
    if isinstance(spec, str | Path):
        return [spec]
    if isinstance(spec, Mapping):
        if "sources" in spec:
            return list(spec["sources"] or [])
        return [spec]
    if isinstance(spec, Sequence):
        return list(spec)
    raise ConfigError(f"pool spec must be a path, a mapping with 'sources', or a list; got {type(spec).__name__}")


def load_pool(spec: Any, data_dir: str | Path | None = None) -> list[Instruction]:
    """Read a pool made of several files, directories and hub datasets.

    ``spec`` is a path, a list of entries, or a mapping with ``sources: [...]`` (the ``pool`` config group)
    and optionally ``dedup_exact`` (default true: drop exact duplicates of instruction + input + output).
    An entry is a path or a mapping with one of ``path`` (file or directory, relative to ``data_dir``) or
    ``hub`` (``datasets.load_dataset`` arguments), and optional ``fmt``, ``source``, ``limit``.

    Args:
        spec: The pool spec.
        data_dir: Base for relative paths.

    Returns:
        All items, in entry order.

    Raises:
        ConfigError: an entry is malformed.
        DataError: a file is missing or a row is malformed.
    """
    base = Path(data_dir).expanduser() if data_dir else None
    items: list[Instruction] = []
    for i, entry in enumerate(_entries(spec)):
        entry = {"path": str(entry)} if isinstance(entry, str | Path) else dict(entry)
        unknown = set(entry) - {"path", "hub", "fmt", "source", "limit"}
        if unknown or ("path" in entry) == ("hub" in entry):
            raise ConfigError(
                f"pool sources[{i}] = {entry}: expected exactly one of 'path' or 'hub', plus optional "
                f"'fmt', 'source', 'limit' (unknown keys: {sorted(unknown)})"
            )
        fmt, source, limit = entry.get("fmt"), entry.get("source"), entry.get("limit")
        if fmt is not None:
            _check_fmt(fmt, f"pool sources[{i}]")
        if "hub" in entry:
            items.extend(_load_hub(entry["hub"], fmt, source, limit))
            continue
        path = Path(entry["path"]).expanduser()
        if not path.is_absolute():
            if base is None:
                raise ConfigError(f"pool sources[{i}]: relative path {path} needs paths.data_dir")
            path = base / path
        if path.is_dir():
            for f in _pool_files(path):
                items.extend(load_pool_file(f, fmt, source, limit))
        else:
            items.extend(load_pool_file(path, fmt, source, limit))
    dedup = spec.get("dedup_exact", True) if isinstance(spec, Mapping) else True
    if dedup:
        seen: set[tuple[str, str, str]] = set()
        unique = []
        for it in items:
            key = (it.instruction, it.input, it.output)
            if key not in seen:
                seen.add(key)
                unique.append(it)
        if len(unique) < len(items):
            log.info("pool: dropped %d exact duplicates of %d items", len(items) - len(unique), len(items))
        items = unique
    return items
