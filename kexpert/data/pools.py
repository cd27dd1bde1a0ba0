"""Open instruction pools: the files of ``shared/data/pool`` (and hub datasets) read as :class:`Instruction`.

The paper retrieves the MoE's extra training data from an open pool (docs/method.md §5). Each source schema has a
pool-row normalizer in :mod:`kexpert.data.formats.pools`, registered by name in
:data:`kexpert.data.formats.FORMATS`; :func:`load_pool_file` picks one from the file name (or the first
row's keys) and :func:`load_pool` reads a config listing several files, directories or hub datasets.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kexpert.data.formats import InstructionNormalizer, format_names, instruction_normalizer
from kexpert.data.records import Instruction
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.io import iter_jsonl
from kexpert.utils.logging import get_logger

log = get_logger(__name__)

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
        fmt: A pool format name; ``None`` sniffs it from the first row's keys.
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
    normalize: InstructionNormalizer | None = instruction_normalizer(fmt, where) if fmt else None
    for lineno, row in enumerate(rows, start=1):
        if limit is not None and len(out) >= limit:
            break
        if normalize is None:
            fmt = format_from_keys(row)
            if fmt is None:
                raise DataError(
                    f"{where}:{lineno}: cannot tell the pool format from the keys {sorted(row)}; "
                    f"set fmt to one of {format_names('pool')}"
                )
            normalize = instruction_normalizer(fmt, where)
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
        fmt: A pool format; ``None`` detects it from the file name, then the first row's keys.
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


_QA = re.compile(r"^Question: (?P<q>.*)\nAnswer:$", re.DOTALL)
_LABELS = "ABCDEFGHIJ"


def options_format(item: Instruction) -> Instruction:
    r"""A multiple-choice pool item in the paper's format: options listed in the prompt, ``"A. text"`` as output.

    ``"Question: <stem>\nAnswer:" -> "<text>"`` becomes ``"Question: <stem>\nA. <c1>\nB. <c2>\n...Answer:" ->
    "<label>. <text>"`` (the tasks' ``gen_prompt`` and ``options_target`` at ``scale=paper``). Items without
    choices (yes/no, math, free-form instructions) are returned unchanged.
    """
    choices, gold = item.meta.get("choices"), item.meta.get("gold_index")
    m = _QA.match(item.instruction)
    if not choices or gold is None or m is None or len(choices) > len(_LABELS):
        return item
    options = "".join(f"{lbl}. {text}\n" for lbl, text in zip(_LABELS, choices))
    return dataclasses.replace(
        item,
        instruction=f"Question: {m.group('q')}\n{options}Answer:",
        output=f"{_LABELS[int(gold)]}. {choices[int(gold)]}",
    )


def load_pool(spec: Any, data_dir: str | Path | None = None) -> list[Instruction]:
    """Read a pool made of several files, directories and hub datasets.

    ``spec`` is a path, a list of entries, or a mapping with ``sources: [...]`` (the ``pool`` config group),
    optionally ``dedup_exact`` (default true: drop exact duplicates of instruction + input + output) and
    ``mc_format`` (``text``, the default, or ``options``: multiple-choice items in the paper's format, see
    :func:`options_format`).
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
            instruction_normalizer(fmt, f"pool sources[{i}]")
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
    mc_format = spec.get("mc_format", "text") if isinstance(spec, Mapping) else "text"
    if mc_format not in ("text", "options"):
        raise ConfigError(f"pool.mc_format: expected text|options, got {mc_format!r}")
    if mc_format == "options":
        items = [options_format(it) for it in items]
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
