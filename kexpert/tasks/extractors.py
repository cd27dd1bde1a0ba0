"""Answer extraction: turn a free-form generation into an answer that can be compared with the gold.

Each function is pure and table-tested (``tests/unit/test_extractors.py``). The multiple-choice rules
follow OpenCompass' ``first_option_postprocess``, which the paper's numbers come from (docs/method.md §3.1).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from kexpert.data.numbers import canonical_number

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?"


def first_option_letter(text: str, labels: tuple[str, ...] | list[str] = ("A", "B", "C", "D")) -> str | None:
    """The first answer option named in ``text``.

    Patterns are tried in order of how explicit they are: "answer is (B)", "Answer: B", a line that starts
    with "B." / "(B)" / "B)", and finally the first standalone option label anywhere.

    Args:
        text: The model's generation.
        labels: The allowed option labels (``A``-``D``, or ``1``-``4`` for some ARC items).

    Returns:
        One of ``labels`` or ``None`` when no option is named.
    """
    opts = "|".join(re.escape(str(lbl)) for lbl in labels)
    patterns = [
        rf"answer\s+is\s*[:：]?\s*\(?\s*({opts})\b",
        rf"answer\s*[:：]\s*\(?\s*({opts})\b",
        rf"(?:^|\n)\s*\(?({opts})\s*[\.\)\]:：]",
        rf"(?:^|\n)\s*\(?({opts})\s*$",
        rf"(?:^|[\s\(\[])({opts})(?=$|[\s\.\)\],:;])",
    ]
    for pat in patterns:
        m = re.search(pat, text, flags=re.IGNORECASE if not opts.isdigit() else 0)
        if m:
            found = m.group(1)
            for lbl in labels:
                if str(lbl).lower() == found.lower():
                    if str(lbl).isalpha() and found != str(lbl) and pat is patterns[-1]:
                        continue  # a lowercase "a" in running text is an article, not option A
                    return str(lbl)
    return None


def match_option_text(text: str, choices: tuple[str, ...] | list[str]) -> int | None:
    """Index of the option whose text the generation starts with or contains first, else ``None``."""
    norm = _norm_text(text)
    if not norm:
        return None
    best: tuple[int, int] | None = None  # (position, -length)
    for i, choice in enumerate(choices):
        c = _norm_text(choice)
        if not c:
            continue
        pos = norm.find(c)
        if pos >= 0 and (best is None or (pos, -len(c)) < best[:2]):
            best = (pos, -len(c), i)  # type: ignore[assignment]
    return None if best is None else best[2]  # type: ignore[misc]


def _norm_text(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", s.lower())).strip()


def yes_no(text: str) -> str | None:
    """``"yes"`` / ``"no"`` from a BoolQ generation ("Yes", "true", "A" for the paper's "A. Yes B. No" format).

    Returns:
        ``"yes"``, ``"no"`` or ``None``.
    """
    m = re.search(r"\b(yes|no|true|false)\b", text, flags=re.IGNORECASE)
    if m:
        return "yes" if m.group(1).lower() in ("yes", "true") else "no"
    letter = first_option_letter(text, ("A", "B"))
    if letter is not None:
        return "yes" if letter == "A" else "no"
    return None


def gsm8k_number(text: str) -> str | None:
    """The final numeric answer of a math solution.

    Order: the number after ``####``, then after "The answer is", else the last number in the text.
    Commas, ``$`` and a trailing period are dropped; the result is canonical (``"18"``, ``"0.5"``, ``"-3"``).
    """
    for pat in (rf"####\s*({_NUMBER})", rf"answer\s+is\s*[:：]?\s*({_NUMBER})"):
        m = re.search(pat, text, flags=re.IGNORECASE)
        if m:
            return canonical_number(m.group(1))
    nums = re.findall(_NUMBER, text)
    return canonical_number(nums[-1]) if nums else None


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Numeric equality of two canonical numbers (``"18"`` == ``"18.0"``)."""
    if a is None or b is None:
        return False
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return a.strip() == b.strip()


def extract_code(text: str) -> str:
    """Python code from an MBPP generation.

    Takes, in order: the text between ``[BEGIN]`` and ``[DONE]``, a fenced ```python block, or everything from
    the first ``def``/``import``/``from``/``class`` line on, cut at a line that looks like prose after the code.
    """
    m = re.search(r"\[BEGIN\]\s*'?(.*?)'?\s*(?:\[DONE\]|$)", text, flags=re.DOTALL)
    if m and m.group(1).strip():
        return m.group(1).strip().strip("'")
    m = re.search(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", text, flags=re.DOTALL)
    if m and m.group(1).strip():
        return m.group(1).strip()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*(def |import |from |class |@)", line):
            body = []
            for ln in lines[i:]:
                if (
                    body
                    and ln
                    and not ln[0].isspace()
                    and not re.match(r"(def |import |from |class |@|#|\w+\s*=)", ln)
                ):
                    break
                body.append(ln)
            return "\n".join(body).strip()
    return text.strip()
