"""The experiments' per-run archives: listed with their sha256, small, deterministic, and the tables rebuild."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"
MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_EXPERIMENT_FILES = 300


@pytest.fixture()
def tools(monkeypatch: pytest.MonkeyPatch):
    """``(pack_runs, rebuild_tables)``, imported from experiments/."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import pack_runs
    import rebuild_tables

    return pack_runs, rebuild_tables


def _git_ls_files(*paths: str) -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"not a git checkout ({out.stderr.strip()})")
    return [f for f in out.stdout.split("\0") if f]


def test_every_archive_is_listed_and_matches_its_sha256(tools) -> None:
    pack_runs, rebuild_tables = tools
    index = pack_runs.read_index()
    assert index, "experiments/archives.sha256 lists no archive"
    for rel, sha in index.items():
        path = EXPERIMENTS / rel
        assert path.is_file(), f"{rel}: listed in archives.sha256 but missing"
        assert pack_runs.sha256_file(path) == sha, f"{rel}: does not match its sha256"
        assert path.stat().st_size <= MAX_FILE_BYTES
    # also: no unlisted archive, and every README's Archives table is current
    assert rebuild_tables.verify_archives() == []


def test_tracked_files_are_small_and_experiments_has_few() -> None:
    files = _git_ls_files()
    big = [(f, s) for f in files if os.path.isfile(ROOT / f) and (s := os.path.getsize(ROOT / f)) > MAX_FILE_BYTES]
    assert not big, f"tracked files over 5 MB: {big}"
    n = len([f for f in files if f.startswith("experiments/")])
    assert n < MAX_EXPERIMENT_FILES, f"{n} tracked files under experiments/; pack per-run folders (pack_runs.py)"


def test_archived_files_are_not_also_tracked(tools) -> None:
    pack_runs, _ = tools
    tracked = set(_git_ls_files("experiments"))
    for rel in pack_runs.read_index():
        archive = EXPERIMENTS / rel
        parent = archive.parent.relative_to(ROOT).as_posix()
        both = [m for m in pack_runs.read_members(archive) if f"{parent}/{m}" in tracked]
        assert not both, f"{rel}: {len(both)} of its members are also tracked files, e.g. {both[0]}"


def test_rebuilding_from_the_archives_reproduces_the_committed_tables() -> None:
    # every report and paired table registered in rebuild_tables.py (about 10-20 s on the 2-core machine)
    out = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "rebuild_tables.py"), "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "DIFFERS" not in out.stdout and " files reproduced" in out.stdout


def test_a_changed_table_is_reported(tools) -> None:
    _, rebuild_tables = tools
    spec = next(r for r in rebuild_tables.REPORTS if r.out.endswith("arc_c_test/all_methods"))
    committed = (ROOT / spec.out / "report.md").read_text()
    tables = tools[0].read_members(ROOT / spec.out / "tables.tar.xz")
    assert all(o.ok for o in rebuild_tables.check_report(spec, committed, tables))
    name = "tables/table1_method.csv"
    tables[name] = tables[name].replace(b"Base Model,base,False,24.4,", b"Base Model,base,False,24.5,")
    bad = [o for o in rebuild_tables.check_report(spec, committed.replace("24.4", "24.5"), tables) if not o.ok]
    assert [o.target for o in bad] == [f"{spec.out}/report.md", f"{spec.out}/{name}"]
    assert "-" in bad[0].detail and "+" in bad[0].detail  # a unified diff
    del tables[name]
    assert any("not rebuilt" in o.detail for o in rebuild_tables.check_report(spec, committed, tables))


def test_drop_sections_removes_only_the_named_section(tools) -> None:
    _, rebuild_tables = tools
    text = "# R\n\n## Results\n\na\n\n## Expert activation (Fig. 7)\n\nb\n\n## Stage wall time\n\nc\n"
    assert rebuild_tables.drop_sections(text, ["Expert activation (Fig. 7)"]) == (
        "# R\n\n## Results\n\na\n\n## Stage wall time\n\nc\n"
    )
    assert rebuild_tables.drop_sections(text, []) == text


def _sweep(root: Path) -> Path:
    runs = root / "runs"
    for name, score in (("0_base", 0.5), ("nested/1_rocket", 0.75)):
        d = runs / name
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- method={name}\n")
        (d / "metrics.json").write_text(json.dumps({"method": name, "score": score}))
        (d / "predictions.jsonl").write_text('{"id": "q0", "correct": true}\n')
    (runs / "nested" / "1_rocket" / "heatmap.png").write_bytes(b"\x89PNG")
    return runs


def test_packing_is_deterministic(tools, tmp_path: Path) -> None:
    pack_runs, _ = tools
    runs = _sweep(tmp_path / "a")
    first = pack_runs.pack(runs)
    assert first == tmp_path / "a" / "runs.tar.xz"
    sha = pack_runs.sha256_file(first)
    # the same files written again in another order, with other times and modes, give the same bytes
    other = tmp_path / "b" / "runs"
    for f in sorted((p for p in runs.rglob("*") if p.is_file()), reverse=True):
        target = other / f.relative_to(runs)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
        os.utime(target, (1_000_000, 1_000_000))
        target.chmod(0o600)
    assert pack_runs.sha256_file(pack_runs.pack(other)) == sha
    assert pack_runs.sha256_file(pack_runs.pack(runs)) == sha  # re-packing changes nothing
    with tarfile.open(first, "r:xz") as tar:
        infos = tar.getmembers()
    names = [i.name for i in infos]
    assert names == sorted(names) and all(n.startswith("runs/") for n in names)
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {
        (pack_runs.MTIME, 0, 0, "", "", 0o644)
    }
    assert "runs/nested/1_rocket/heatmap.png" not in names  # plots stay outside


def test_unpack_round_trip_and_merge(tools, tmp_path: Path) -> None:
    pack_runs, _ = tools
    runs = _sweep(tmp_path)
    archive = pack_runs.pack(runs)
    written = pack_runs.unpack(archive, tmp_path / "out")
    assert len(written) == 6
    for f in written:
        assert f.read_bytes() == (runs / f.relative_to(tmp_path / "out" / "runs")).read_bytes()
    # packing a runs/ folder that holds only a new run keeps the archived ones (archive_runs.py relies on it)
    shutil.rmtree(runs)
    new = runs / "2_random"
    new.mkdir(parents=True)
    (new / "metrics.json").write_text("{}")
    members = pack_runs.read_members(pack_runs.pack(runs))
    assert "runs/2_random/metrics.json" in members and "runs/0_base/metrics.json" in members
    assert "runs/0_base/metrics.json" not in pack_runs.read_members(pack_runs.pack(runs, replace=True))


def test_unsafe_or_oversized_archives_are_refused(tools, tmp_path: Path) -> None:
    pack_runs, _ = tools
    with pytest.raises(pack_runs.ArchiveError, match="unsafe member name"):
        pack_runs.pack_bytes({"../escape.txt": b"x"})
    with pytest.raises(pack_runs.ArchiveError, match="unsafe member name"):
        pack_runs.pack_bytes({"/abs.txt": b"x"})
    big = {"runs/blob.bin": os.urandom(pack_runs.MAX_ARCHIVE_BYTES + 1)}
    with pytest.raises(pack_runs.ArchiveError, match="limit on a committed file"):
        pack_runs.write_archive(tmp_path / "runs.tar.xz", big)
    assert not (tmp_path / "runs.tar.xz").exists()


def test_archive_runs_packs_the_runs_folder(tools, tmp_path: Path) -> None:
    pack_runs, _ = tools
    src = tmp_path / "sweep"
    _sweep(src)
    dst = tmp_path / "study" / "runs" / "first"
    script = EXPERIMENTS / "study_smollm2" / "archive_runs.py"
    out = subprocess.run([sys.executable, str(script), str(src / "runs"), str(dst)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "2 runs archived" in out.stdout and "runs.tar.xz" in out.stdout
    members = pack_runs.read_members(tmp_path / "study" / "runs.tar.xz")
    assert sorted(members) == [
        "runs/first/0_base/.hydra/overrides.yaml",
        "runs/first/0_base/metrics.json",
        "runs/first/0_base/predictions.jsonl",
        "runs/first/nested/1_rocket/.hydra/overrides.yaml",
        "runs/first/nested/1_rocket/metrics.json",
        "runs/first/nested/1_rocket/predictions.jsonl",
    ]
