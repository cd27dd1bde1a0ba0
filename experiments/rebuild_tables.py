"""Rebuild the committed report tables and paired tables from the archived runs, and compare (or write) them.

The per-run files of the study's sweeps are committed as archives (``runs.tar.xz``, ``tables.tar.xz``...; see
``pack_runs.py``), each listed with its sha256 in ``experiments/archives.sha256``. This script

1. checks every archive against its sha256 (and that every archive is listed, and each README's Archives table);
2. unpacks the ``runs.tar.xz`` archives into a temporary tree laid out like the repository (plus, for a table
   that was written before its runs were archived, a copy at the ``outputs/sweeps/...`` path it was written from);
3. re-runs, in that tree, the commands that wrote the committed tables (study README): ``python -m kexpert.report
   <runs> --out <report dir>`` (``kexpert.report.build.build_report``) and ``experiments/study_smollm2/paired.py``;
4. compares what they write with the committed ``report.md``, the members of the report's ``tables.tar.xz`` and
   the committed ``paired_*.md`` (``--check``, the default; exit code 1 on any difference), or writes them back
   (``--write``).

Everything compared is compared byte for byte. Not compared: the plots (PNG renders depend on the matplotlib and
FreeType versions; the numbers they draw are in the compared tables) and, for the few reports listed in
``REPORTS`` with a reason, tables that the archived runs cannot give (runs archived before ``archive_runs.py``
kept ``routing.json``) or that were kept by hand from an earlier report. The other tables of the study (sweeps
whose runs were not archived) are verified by their archive's sha256 only.

    python experiments/rebuild_tables.py                 # --check: verify and compare, print differences
    python experiments/rebuild_tables.py --write         # write rebuilt tables back (repacks tables.tar.xz)
    python experiments/rebuild_tables.py --only lorahub  # the reports / paired tables whose path contains it
    python experiments/rebuild_tables.py --unpack experiments/study_smollm2/lorahub/runs.tar.xz /tmp/lorahub
    python experiments/rebuild_tables.py --unpack-all    # every archive, in place (runs/, tables/... git-ignored)
    python experiments/rebuild_tables.py --pack experiments/study_smollm2/<sweep>/runs   # = pack_runs.py
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import glob
import io
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pack_runs
from pack_runs import EXPERIMENTS, REPO, ArchiveError

STUDY = EXPERIMENTS / "study_smollm2"
S = "experiments/study_smollm2"
E = f"{S}/main_table_large"
TABLES = "tables"
NO_ROUTING = (
    "its MoE runs were archived before archive_runs.py kept routing/routing.json, so the archived runs have no "
    "routing to rebuild the expert-activation table from"
)
ROUTING_SECTION = "Expert activation (Fig. 7)"


@dataclass(frozen=True)
class Alias:
    """A copy of an unpacked folder at the path a table was written from (before its runs were archived).

    ``renames`` maps run dirs inside the copy to the names they had there (``archive_runs.py`` target folders).
    """

    src: str
    dst: str
    renames: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ReportSpec:
    """One committed report: ``python -m kexpert.report <source> --out <out>``, as its ``report.md`` records."""

    source: str  # the sweep dir, as the command named it (relative to the temporary tree)
    out: str  # the committed report dir (relative to the repository)
    command: str = ""  # the command line report.md records (default: the one above)
    not_rebuilt: dict[str, str] = field(default_factory=dict)  # tables.tar.xz member -> why it is not rebuilt
    drop_sections: tuple[str, ...] = ()  # report.md "## " sections the archived runs cannot give

    @property
    def cmd(self) -> str:
        return self.command or f"python -m kexpert.report {self.source} --out {self.out}"


@dataclass(frozen=True)
class PairedSpec:
    """One committed paired table: ``python experiments/study_smollm2/paired.py <args> --out <out>``."""

    out: str
    args: tuple[str, ...]  # shell globs are expanded (sorted) in the temporary tree, as the shell did

    @property
    def cmd(self) -> str:
        return f"python {S}/paired.py {' '.join(self.args)} --out {self.out}"


ALIASES = (
    Alias(
        f"{S}/lorahub/runs",
        "outputs/sweeps/lorahub",
        # ROCKET's PIQA draw 2 ran as a sweep of its own (study README, "LoRAHub† on PIQA")
        renames=(
            (
                "rocket_piqa/0_data_seed=2,method=rocket,oracle_selection.eval_limit=100,task=piqa",
                "rocket_piqa_2/0_data_seed=2,method=rocket,oracle_selection.eval_limit=100,task=piqa",
            ),
        ),
    ),
    Alias(f"{S}/ablate_data_selection_arc_c/runs", "outputs/sweeps/ablate_data_selection_arc_c_more"),
    Alias(f"{S}/main_table_boolq/runs/rest", "outputs/sweeps/main_table_boolq_rest"),
    Alias(f"{S}/main_table_boolq/runs/lorahub_data", "outputs/sweeps/main_table_boolq/lorahub_data"),
)

_EARLIER = "kept from the first session's report (study README); "
REPORTS = (
    ReportSpec(
        f"{S}/main_table_gsm8k/runs",
        f"{S}/main_table_gsm8k",
        not_rebuilt={
            "tables/table1_method.md": _EARLIER + "the rebuilt report names its results table by its two factors",
            "tables/table1_method.csv": _EARLIER + "the rebuilt report names its results table by its two factors",
            "tables/routing_mean_earlier_sessions.md": "kept by hand from the earlier report (runs/NOTES.md): "
            + NO_ROUTING,
            "tables/routing_mean_earlier_sessions.csv": "kept by hand from the earlier report (runs/NOTES.md): "
            + NO_ROUTING,
        },
    ),
    ReportSpec(f"{E}/arc_c_test/runs", f"{E}/arc_c_test/all_methods"),
    ReportSpec(f"{E}/arc_e_dev/runs", f"{E}/arc_e_dev/all_methods"),
    ReportSpec(f"{E}/boolq/runs", f"{E}/boolq"),
    ReportSpec(f"{E}/piqa/runs", f"{E}/piqa/more"),
    ReportSpec(
        "outputs/sweeps/lorahub",
        f"{S}/lorahub",
        command="python -m kexpert.report outputs/sweeps/lorahub --no-progress",
        not_rebuilt={"tables/routing_mean.md": NO_ROUTING, "tables/routing_mean.csv": NO_ROUTING},
        drop_sections=(ROUTING_SECTION,),
    ),
    ReportSpec(
        "outputs/sweeps/ablate_data_selection_arc_c_more",
        f"{S}/ablate_data_selection_arc_c/more",
        command="python -m kexpert.report outputs/sweeps/ablate_data_selection_arc_c_more --no-progress",
        not_rebuilt={"tables/routing_mean.md": NO_ROUTING, "tables/routing_mean.csv": NO_ROUTING},
        drop_sections=(ROUTING_SECTION,),
    ),
    ReportSpec(
        "outputs/sweeps/main_table_boolq_rest",
        f"{S}/main_table_boolq/rest",
        command="python -m kexpert.report outputs/sweeps/main_table_boolq_rest --no-progress",
        not_rebuilt={"tables/routing_mean.md": NO_ROUTING, "tables/routing_mean.csv": NO_ROUTING},
        drop_sections=(ROUTING_SECTION,),
    ),
    ReportSpec(
        "outputs/sweeps/main_table_boolq/lorahub_data",
        f"{S}/main_table_boolq/lorahub_data",
        command="python -m kexpert.report outputs/sweeps/main_table_boolq/lorahub_data --no-progress",
    ),
)


def _paired_specs() -> tuple[PairedSpec, ...]:
    R, L = f"{S}/lorahub/runs", "outputs/sweeps/lorahub"
    B, D = f"{S}/main_table_boolq", f"{S}/ablate_data_selection_arc_c"
    specs = [
        (f"{E}/arc_c_test/all_methods/paired_vs_base.md", f"{E}/arc_c_test/runs --baseline base"),
        (f"{E}/arc_c_test/all_methods/paired_vs_lorahub.md", f"{E}/arc_c_test/runs --baseline lorahub"),
        (f"{E}/arc_e_dev/all_methods/paired_vs_base.md", f"{E}/arc_e_dev/runs --baseline base"),
        (f"{E}/arc_e_dev/all_methods/paired_vs_lorahub.md", f"{E}/arc_e_dev/runs --baseline lorahub"),
        (f"{E}/piqa/more/paired_vs_base.md", f"{E}/piqa/runs --baseline base"),
        (f"{E}/piqa/more/paired_vs_lorahub.md", f"{E}/piqa/runs --baseline lorahub"),
        (f"{E}/boolq/paired_vs_base.md", f"{E}/boolq/runs --baseline base"),
        (f"{E}/boolq/paired_vs_rocket.md", f"{E}/boolq/runs --baseline rocket"),
        (f"{E}/boolq/paired_vs_lorahub.md", f"{E}/boolq/runs --baseline lorahub"),
        # written in the first BoolQ-600 session, when runs/ held only these two sweeps
        (f"{E}/boolq/paired_vs_random_data.md", f"{E}/boolq/runs/rocket {E}/boolq/runs/rest --baseline random_data"),
        (
            f"{E}/boolq/paired_vs_source_best_sft.md",
            f"{E}/boolq/runs/rocket {E}/boolq/runs/rest --baseline source_best_sft",
        ),
        (f"{S}/main_table_gsm8k/paired_vs_base.md", f"{S}/main_table_gsm8k/runs --baseline base"),
        (f"{B}/paired_lorahub_data_vs_base.md", f"{B}/runs/lorahub_data --baseline-dir {B}/runs/rest/base"),
        (
            f"{B}/paired_lorahub_data_vs_lorahub.md",
            f"{B}/runs/lorahub_data --baseline-dir {B}/runs/rest/*method=lorahub,* --key method --baseline lorahub",
        ),
        (f"{B}/paired_rest_vs_base.md", "outputs/sweeps/main_table_boolq_rest --baseline base"),
        (f"{D}/more/paired_vs_sim_div.md", f"{D}/runs --key data_selection --baseline sim_div"),
        (f"{D}/more/paired_vs_base.md", f"{D}/runs --baseline-dir {R}/base/*task=arc_c"),
    ]
    for t in ("arc_e", "arc_c", "piqa"):  # written from the sweep before it was archived
        specs.append(
            (f"{S}/lorahub/paired_vs_base_{t}.md", f"{L}/*method=lorahub*task={t} --baseline-dir {L}/base/*task={t}")
        )
    rocket = {"piqa": f"{R}/rocket_piqa", "arc_e": f"{R}/rocket_arc_e", "arc_c": f"{D}/runs/*sim_div*"}
    for t, where in rocket.items():
        specs.append(
            (
                f"{S}/lorahub/paired_lorahub_vs_rocket_{t}.md",
                f"{R}/*method=lorahub,*task={t} --baseline-dir {where} --key method --baseline rocket",
            )
        )
    hub = "--key method --baseline lorahub"
    specs += [
        (f"{S}/lorahub/paired_lorahub_data_vs_base_arc_e.md", f"{L}/lorahub_data --baseline-dir {L}/base/*task=arc_e"),
        (
            f"{S}/lorahub/paired_lorahub_data_vs_lorahub_arc_e.md",
            f"{L}/lorahub_data {L}/*method=lorahub,*task=arc_e {hub}",
        ),
        (
            f"{S}/lorahub/paired_lorahub_data_vs_rocket_arc_e.md",
            f"{R}/lorahub_data --baseline-dir {R}/rocket_arc_e --key method --baseline rocket",
        ),
    ]
    for t in ("arc_c", "piqa"):
        runs = f"{R}/lorahub_data_{t}"
        specs += [
            (f"{S}/lorahub/paired_lorahub_data_vs_base_{t}.md", f"{runs} --baseline-dir {R}/base/*task={t}"),
            (
                f"{S}/lorahub/paired_lorahub_data_vs_lorahub_{t}.md",
                f"{runs} --baseline-dir {R}/*method=lorahub,*task={t} {hub}",
            ),
            (
                f"{S}/lorahub/paired_lorahub_data_vs_rocket_{t}.md",
                f"{runs} --baseline-dir {rocket[t]} --key method --baseline rocket",
            ),
        ]
    return tuple(PairedSpec(out, tuple(args.split())) for out, args in specs)


PAIRED = _paired_specs()


@dataclass
class Outcome:
    """The comparison of one rebuilt file (or archive member) with the committed one."""

    target: str
    ok: bool
    detail: str = ""


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _diff(want: str, got: str, name: str, limit: int = 40) -> str:
    lines = list(
        difflib.unified_diff(want.splitlines(True), got.splitlines(True), f"committed/{name}", f"rebuilt/{name}")
    )
    more = f"... ({len(lines) - limit} more diff lines)\n" if len(lines) > limit else ""
    return "".join(lines[:limit]) + more


def drop_sections(text: str, headings: Sequence[str]) -> str:
    """``text`` without its ``## <heading>`` sections (each up to the next ``## `` heading)."""
    if not headings:
        return text
    out, skipping = [], False
    for line in text.splitlines(True):
        if line.startswith("## "):
            skipping = line[3:].strip() in headings
        if not skipping:
            out.append(line)
    return "".join(out)


# ---------------------------------------------------------------- verification of the archives


def verify_archives() -> list[str]:
    """Problems with the archives: a listed one missing or not matching its sha256, an unlisted one, a stale
    README table. Empty when all is well."""
    problems = []
    try:
        index = pack_runs.read_index()
    except ArchiveError as e:
        return [str(e)]
    if not index:
        problems.append(f"{pack_runs.INDEX}: no archive listed")
    for rel, sha in sorted(index.items()):
        path = EXPERIMENTS / rel
        if not path.is_file():
            problems.append(f"{rel}: listed in archives.sha256 but missing")
        elif (got := pack_runs.sha256_file(path)) != sha:
            problems.append(f"{rel}: sha256 {got}, archives.sha256 says {sha}")
    for path in sorted(EXPERIMENTS.rglob("*" + pack_runs.SUFFIX)):
        rel = path.relative_to(EXPERIMENTS).as_posix()
        if rel not in index:
            problems.append(f"{rel}: an archive not listed in archives.sha256 (pack it with pack_runs.py)")
    if problems:
        return problems
    for readme in pack_runs.all_readmes(index):
        if problem := pack_runs.readme_table_problem(readme, index):
            problems.append(problem)
    return problems


# ---------------------------------------------------------------- the rebuild


def _run_archives() -> list[str]:
    return [rel for rel in pack_runs.read_index() if Path(rel).name == "runs" + pack_runs.SUFFIX]


def build_tree(root: Path) -> None:
    """Unpack every ``runs.tar.xz`` under ``root`` (laid out like the repository) and add the aliases."""
    for rel in _run_archives():
        archive = EXPERIMENTS / rel
        pack_runs.unpack(archive, root / archive.parent.relative_to(REPO))
    for alias in ALIASES:
        src, dst = root / alias.src, root / alias.dst
        if not src.is_dir():
            raise ArchiveError(f"alias {alias.dst}: {alias.src} is not in any runs archive")
        shutil.copytree(src, dst)
        for old, new in alias.renames:
            (dst / new).parent.mkdir(parents=True, exist_ok=True)
            (dst / old).rename(dst / new)


def _tables_archive(out: str) -> Path:
    return REPO / out / (TABLES + pack_runs.SUFFIX)


def rebuild_report(spec: ReportSpec, root: Path) -> tuple[str, dict[str, bytes]]:
    """Rebuild one report in ``root``; returns its ``report.md`` text and ``{tables/<file>: bytes}``."""
    from kexpert.report.build import build_report

    with _cwd(root):
        build_report(Path(spec.source), Path(spec.out), command=spec.cmd, progress=False)
    out = root / spec.out
    tables = {f"{TABLES}/{p.name}": p.read_bytes() for p in sorted((out / TABLES).glob("*")) if p.is_file()}
    return (out / "report.md").read_text(), tables


def check_report(spec: ReportSpec, report_md: str, tables: dict[str, bytes]) -> list[Outcome]:
    """Compare a rebuilt report with the committed ``report.md`` and ``tables.tar.xz`` (``not_rebuilt`` skipped)."""
    outcomes = []
    committed_md = REPO / spec.out / "report.md"
    name = f"{spec.out}/report.md"
    if not committed_md.exists():
        outcomes.append(Outcome(name, False, "not committed"))
    else:
        want = drop_sections(committed_md.read_text(), spec.drop_sections)
        outcomes.append(Outcome(name, want == report_md, "" if want == report_md else _diff(want, report_md, name)))
    archive = _tables_archive(spec.out)
    committed = pack_runs.read_members(archive) if archive.exists() else {}
    for member in sorted((set(committed) | set(tables)) - set(spec.not_rebuilt)):
        target = f"{spec.out}/{member}"
        if member not in committed:
            outcomes.append(Outcome(target, False, f"rebuilt but not in {archive.relative_to(REPO)}"))
        elif member not in tables:
            outcomes.append(Outcome(target, False, "in the committed archive but not rebuilt"))
        elif committed[member] != tables[member]:
            outcomes.append(Outcome(target, False, _diff(committed[member].decode(), tables[member].decode(), target)))
        else:
            outcomes.append(Outcome(target, True))
    return outcomes


def exclusions(spec: ReportSpec) -> list[str]:
    """What of ``spec``'s committed report is not compared, and why (one line per reason)."""
    by_reason: dict[str, list[str]] = {}
    for member, reason in spec.not_rebuilt.items():
        by_reason.setdefault(reason, []).append(member)
    lines = [f"{', '.join(sorted(m))}: {reason}" for reason, m in by_reason.items()]
    if spec.drop_sections:
        sections = ", ".join(f'"## {h}"' for h in spec.drop_sections)
        lines.append(f"report.md compared without its section {sections}: {NO_ROUTING}")
    return lines


def _expand(args: Sequence[str]) -> list[str]:
    out = []
    for a in args:
        if not a.startswith("-") and any(c in a for c in "*?["):
            matches = sorted(glob.glob(a))
            if not matches:
                raise ArchiveError(f"{a}: matches nothing in the archived runs")
            out += matches
        else:
            out.append(a)
    return out


def rebuild_paired(spec: PairedSpec, root: Path) -> str:
    """The text ``paired.py`` writes for ``spec``, run in ``root``."""
    if str(STUDY) not in sys.path:
        sys.path.insert(0, str(STUDY))
    import paired

    buf = io.StringIO()
    with _cwd(root), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        try:
            paired.main(_expand(spec.args))
        except SystemExit as e:
            raise ArchiveError(f"{spec.cmd}: {e}") from e
    return buf.getvalue()


def _selected(target: str, only: Sequence[str]) -> bool:
    return not only or any(o in target for o in only)


def rebuild(only: Sequence[str] = (), write: bool = False) -> list[Outcome]:
    """Rebuild the selected reports and paired tables; compare with (or, with ``write``, write over) the committed."""
    logging.getLogger("kexpert").setLevel(logging.WARNING)
    outcomes: list[Outcome] = []
    reports = [r for r in REPORTS if _selected(r.out, only)]
    paireds = [p for p in PAIRED if _selected(p.out, only)]
    if not reports and not paireds:
        raise ArchiveError(f"--only {' '.join(only)}: no report or paired table matches")
    with tempfile.TemporaryDirectory(prefix="rebuild_tables_") as tmp:
        root = Path(tmp)
        build_tree(root)
        written_archives = []
        for spec in reports:
            report_md, tables = rebuild_report(spec, root)
            if write:
                written_archives += _write_report(spec, report_md, tables, outcomes)
            else:
                outcomes += check_report(spec, report_md, tables)
        for spec in paireds:
            text = rebuild_paired(spec, root)
            committed = REPO / spec.out
            if write:
                if not committed.exists() or committed.read_text() != text:
                    committed.write_text(text)
                    outcomes.append(Outcome(spec.out, True, "written"))
            elif not committed.exists():
                outcomes.append(Outcome(spec.out, False, "not committed"))
            else:
                want = committed.read_text()
                outcomes.append(Outcome(spec.out, want == text, "" if want == text else _diff(want, text, spec.out)))
        if written_archives:
            pack_runs.record(written_archives)
    return outcomes


def _write_report(spec: ReportSpec, report_md: str, tables: dict[str, bytes], outcomes: list[Outcome]) -> list[Path]:
    out = REPO / spec.out
    md = out / "report.md"
    if spec.drop_sections:
        pass  # kept as committed: the archived runs cannot give all of it (see exclusions)
    elif not md.exists() or md.read_text() != report_md:
        out.mkdir(parents=True, exist_ok=True)
        md.write_text(report_md)
        outcomes.append(Outcome(str(md.relative_to(REPO)), True, "written"))
    archive = _tables_archive(spec.out)
    members = pack_runs.read_members(archive) if archive.exists() else {}
    merged = {k: v for k, v in members.items() if k in spec.not_rebuilt} | {
        k: v for k, v in tables.items() if k not in spec.not_rebuilt
    }
    if pack_runs.write_archive(archive, merged, update_index=False):
        outcomes.append(Outcome(str(archive.relative_to(REPO)), True, "written"))
    return [archive]


# ---------------------------------------------------------------- unpacking


def _verified(archive: Path) -> Path:
    rel = (
        archive.resolve().relative_to(EXPERIMENTS).as_posix()
        if archive.resolve().is_relative_to(EXPERIMENTS)
        else None
    )
    sha = pack_runs.read_index().get(rel) if rel else None
    if sha is not None and pack_runs.sha256_file(archive) != sha:
        raise ArchiveError(f"{archive}: does not match its sha256 in archives.sha256")
    return archive


def unpack_all(overwrite: bool = False) -> None:
    """Extract every listed archive beside itself (``runs/``, ``tables/``... in place; git ignores them)."""
    for rel in sorted(pack_runs.read_index()):
        archive = _verified(EXPERIMENTS / rel)
        written = pack_runs.unpack(archive, archive.parent, overwrite=overwrite)
        total = len(pack_runs.read_members(archive))
        kept = f", {total - len(written)} already there kept" if total != len(written) else ""
        print(f"{rel}: {len(written)} files into {pack_runs.folder_of(archive).relative_to(REPO)}/{kept}")


# ---------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare rebuilt tables with the committed (default)")
    mode.add_argument("--write", action="store_true", help="write the rebuilt tables back to their committed places")
    mode.add_argument("--unpack", nargs=2, metavar=("ARCHIVE", "DIR"), type=Path, help="extract one archive into DIR")
    mode.add_argument("--unpack-all", action="store_true", help="extract every listed archive beside itself")
    mode.add_argument("--pack", nargs="+", metavar="FOLDER", type=Path, help="pack folders (see pack_runs.py)")
    mode.add_argument("--list", action="store_true", help="list the reports and paired tables rebuilt, and how")
    ap.add_argument("--only", nargs="+", default=(), help="rebuild only the targets whose path contains one of these")
    ap.add_argument("--overwrite", action="store_true", help="with --unpack-all: overwrite files already on disk")
    ap.add_argument("-v", "--verbose", action="store_true", help="also list every file that matches")
    args = ap.parse_args(argv)
    try:
        if args.unpack:
            archive, dest = args.unpack
            written = pack_runs.unpack(_verified(archive), dest)
            print(f"{archive}: {len(written)} files into {dest / pack_runs.folder_of(archive).name}")
            return 0
        if args.unpack_all:
            unpack_all(args.overwrite)
            return 0
        if args.pack:
            return pack_runs.main([str(p) for p in args.pack])
        if args.list:
            for r in REPORTS:
                print(f"{r.out}: {r.cmd}")
            for p in PAIRED:
                print(f"{p.out}: {p.cmd}")
            return 0
        t0 = time.perf_counter()
        problems = verify_archives()
        for p in problems:
            print(f"ARCHIVE {p}")
        if problems and any("sha256" in p or "missing" in p for p in problems):
            print("the archives do not match archives.sha256; nothing rebuilt")
            return 1
        outcomes = rebuild(args.only, write=args.write)
    except ArchiveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    bad = [o for o in outcomes if not o.ok]
    for o in outcomes:
        if not o.ok:
            print(f"DIFFERS {o.target}\n{o.detail}")
        elif args.verbose or o.detail:
            print(f"ok {o.target}" + (f": {o.detail}" if o.detail else ""))
    for spec in (r for r in REPORTS if _selected(r.out, args.only)):
        for line in exclusions(spec):
            print(f"not compared in {spec.out}: {line}")
    if args.write and problems:
        pack_runs.update_readme_tables(pack_runs.all_readmes())
        problems = verify_archives()
    n_reports = len([r for r in REPORTS if _selected(r.out, args.only)])
    n_paired = len([p for p in PAIRED if _selected(p.out, args.only)])
    done = (
        f"{len(outcomes)} files written (the others were up to date)"
        if args.write
        else f"{len(outcomes) - len(bad)} of {len(outcomes)} files reproduced"
    )
    n_runs, n_archives = len(_run_archives()), len(pack_runs.read_index())
    print(
        f"{done} ({n_reports} reports, {n_paired} paired tables) from {n_runs} runs archives; "
        f"{n_archives} archives checked against archives.sha256; {time.perf_counter() - t0:.1f} s"
    )
    return 1 if bad or problems else 0


if __name__ == "__main__":
    sys.exit(main())
