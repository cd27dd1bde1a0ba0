"""Rewrite references to the private ``METHOD.md`` into references to ``docs/method.md``.

``docs/method.md`` keeps METHOD.md's section numbers, so the rewrite is mechanical:

* ``METHOD.md §5`` -> ``docs/method.md §5`` (anything after ``§`` is kept as written);
* ``METHOD.md section 3`` -> ``docs/method.md §3``; ``METHOD.md sections 8.2 and 9`` -> ``docs/method.md §8.2 and §9``;
* ``METHOD.md 3.4`` -> ``docs/method.md §3.4``; ``METHOD.md 3.4, 9`` -> ``docs/method.md §3.4, §9``;
  ranges keep one sign: ``METHOD.md 3.3-3.4`` -> ``docs/method.md §3.3-3.4``;
* any other ``METHOD.md`` (``METHOD.md Eq. 7``, a bare mention, a path such as ``../shared/METHOD.md``) ->
  ``docs/method.md``.

In Markdown files the rewritten reference also becomes a link to the section's stable anchor
(``[docs/method.md §5](../../docs/method.md#s5)``), except inside inline code or fenced code blocks; ``--no-links``
turns that off. The result contains no ``METHOD.md``, so a second run changes nothing (idempotent).

Usage (from anywhere; paths are relative to the repository root)::

    python scripts/rewrite_method_refs.py --dry-run            # what would change, per file
    python scripts/rewrite_method_refs.py --dry-run --diff     # ... with the changed lines
    python scripts/rewrite_method_refs.py                       # rewrite the default targets
    python scripts/rewrite_method_refs.py README.md experiments # only these files / directories
    python scripts/rewrite_method_refs.py --check              # exit 1 if any reference is left

Default targets: ``kexpert/``, ``conf/``, ``tests/``, ``experiments/``, ``scripts/``, ``README.md`` and the
top-level ``*.py`` files. This script never rewrites itself.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = "docs/method.md"
DEFAULT_DIRS = ("kexpert", "conf", "tests", "experiments", "scripts")
DEFAULT_FILES = ("README.md",)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".ini", ".sh", ".rst"}  # not data files
TEXT_NAMES = {"Makefile"}
SKIP_DIRS = {".git", ".venv", "__pycache__", "outputs", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache"}

_NUM = r"\d+(?:\.\d+)*[a-z]?"
_SEP = r"\s*(?:,|and|&|-|–)\s*"
_LIST = rf"{_NUM}(?:{_SEP}{_NUM})*"
# An optional path before the name (``../shared/METHOD.md``), then one of: "§..." (kept), "section(s) <list>",
# a bare dotted number list ("3.4", "3.3-3.4", "3.4, 9"), or nothing.
REF = re.compile(
    r"(?<![\w.\-/])(?:[\w.\-]+/)*METHOD\.md"
    rf"(?:(?P<word>\s+sections?\s+(?P<wlist>{_LIST}))"
    rf"|(?P<bare>\s+(?P<blist>\d+\.\d+[a-z]?(?:{_SEP}{_NUM})*))(?!\w)"
    r")?"
)
_LIST_ITEM = re.compile(rf"(?P<sep>^|{_SEP})(?P<num>{_NUM})")


def section_list(text: str) -> str:
    """``"8.2 and 9"`` -> ``"§8.2 and §9"``; the second end of a range gets no sign (``"§3.3-3.4"``)."""

    def one(m: re.Match) -> str:
        sep = m.group("sep")
        is_range = sep.strip() in ("-", "–")
        return f"{sep}{m.group('num')}" if is_range else f"{sep}§{m.group('num')}"

    return _LIST_ITEM.sub(one, text)


def first_anchor(rest: str) -> str | None:
    """The anchor of the first section named in ``rest`` (``"§10.6b ..."`` -> ``"#s10.6"``), if any."""
    m = re.match(r"\s*§\s*(\d+(?:\.\d+)*)", rest)
    return f"#s{m.group(1)}" if m else None


def replacement(m: re.Match) -> str:
    """The plain-text rewrite of one match."""
    if m.group("word"):
        return f"{DOC} {section_list(m.group('wlist'))}"
    if m.group("bare"):
        return f"{DOC} {section_list(m.group('blist'))}"
    return DOC


def _in_inline_code(line: str, col: int) -> bool:
    return line[:col].count("`") % 2 == 1


def rewrite_text(text: str, markdown: bool, link_base: str | None) -> tuple[str, int]:
    """Rewrite every reference in ``text``.

    Args:
        text: File contents.
        markdown: Whether the file is Markdown (references become links outside code).
        link_base: Relative path from the file's directory to ``docs/method.md`` (for links), or ``None``.

    Returns:
        ``(new text, number of references rewritten)``.
    """
    out: list[str] = []
    count = 0
    fenced = False
    for line in text.splitlines(keepends=True):
        if markdown and line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        pieces: list[str] = []
        pos = 0
        for m in REF.finditer(line):
            new = replacement(m)
            if markdown and link_base and not fenced and not _in_inline_code(line, m.start()):
                # a "§" reference keeps its text after the name; link the name plus the first section number
                tail = re.match(r"\s*§\s*\d+(?:\.\d+)*[a-z]?", line[m.end() :]) if new == DOC else None
                anchor = first_anchor(line[m.end() :]) if tail else first_anchor(new[len(DOC) :])
                if tail:
                    new = f"[{DOC}{tail.group(0)}]({link_base}{anchor or ''})"
                    pieces.append(line[pos : m.start()] + new)
                    pos = m.end() + tail.end()
                    count += 1
                    continue
                new = f"[{new}]({link_base}{anchor or ''})"
            pieces.append(line[pos : m.start()] + new)
            pos = m.end()
            count += 1
        pieces.append(line[pos:])
        out.append("".join(pieces))
    return "".join(out), count


def iter_files(targets: list[Path]):
    """Text files under the targets (files as given, directories walked), sorted, excluding this script."""
    me = Path(__file__).resolve()
    seen: set[Path] = set()
    for t in targets:
        if t.is_file():
            files = [t]
        elif t.is_dir():
            files = []
            for dirpath, dirnames, filenames in os.walk(t):
                dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
                files += [Path(dirpath) / f for f in sorted(filenames)]
        else:
            print(f"warning: {t} does not exist", file=sys.stderr)
            continue
        for f in files:
            r = f.resolve()
            if r == me or r in seen:
                continue
            if f.suffix in TEXT_SUFFIXES or f.name in TEXT_NAMES:
                seen.add(r)
                yield f


def default_targets() -> list[Path]:
    """The directories and files the lead engineer rewrites."""
    out = [ROOT / d for d in DEFAULT_DIRS] + [ROOT / f for f in DEFAULT_FILES]
    out += sorted(p for p in ROOT.glob("*.py"))
    return [p for p in out if p.exists()]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="files or directories (default: the standard targets)")
    ap.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    ap.add_argument("--diff", action="store_true", help="with --dry-run (or not): print each changed line")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if any reference would change")
    ap.add_argument("--no-links", action="store_true", help="plain text in Markdown files too")
    args = ap.parse_args(argv)

    targets = [Path(p) if Path(p).is_absolute() else ROOT / p for p in args.paths] or default_targets()
    write = not (args.dry_run or args.check)
    doc = ROOT / DOC
    total = files_changed = 0
    for f in iter_files(targets):
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if "METHOD.md" not in text:
            continue
        markdown = f.suffix == ".md"
        link_base = None if args.no_links else Path(os.path.relpath(doc, f.parent)).as_posix()
        new, n = rewrite_text(text, markdown, link_base)
        if n == 0 or new == text:
            continue
        rel = f.resolve().relative_to(ROOT) if f.resolve().is_relative_to(ROOT) else f
        total += n
        files_changed += 1
        print(f"{rel}: {n}")
        if args.diff:
            for a, b in zip(text.splitlines(), new.splitlines(), strict=False):
                if a != b:
                    print(f"  - {a.strip()}\n  + {b.strip()}")
        if write:
            f.write_text(new, encoding="utf-8")
    verb = "would rewrite" if not write else "rewrote"
    print(f"{verb} {total} reference(s) in {files_changed} file(s)")
    return 1 if args.check and total else 0


if __name__ == "__main__":
    sys.exit(main())
