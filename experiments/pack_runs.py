"""Pack a folder of per-run files (a sweep's ``runs/``, a report's ``tables/``...) into one deterministic archive.

The per-run files of the experiments (resolved configs, overrides, ``metrics.json``, slim ``predictions.jsonl``,
``routing.json``, cached cells, report tables) are thousands of small files; committed one by one they drown the
code. Each such folder ``<dir>/<name>/`` is committed as ``<dir>/<name>.tar.xz`` instead, and its sha256 is
recorded in ``experiments/archives.sha256`` (``sha256sum`` format, paths relative to ``experiments/``) and in an
"Archives" table of the README that describes it (the nearest ``README.md`` above the archive):

    python experiments/pack_runs.py experiments/study_smollm2/lorahub/runs      # -> lorahub/runs.tar.xz
    python experiments/rebuild_tables.py --unpack experiments/study_smollm2/lorahub/runs.tar.xz /tmp/x
    python experiments/rebuild_tables.py --unpack-all                            # every archive, in place

The archive is a function of the files' names and bytes only: members sorted by name, regular files only, fixed
mtime, mode, uid/gid and owner names, PAX tar, xz at a fixed preset, so packing the same files again gives the same
bytes (and the same sha256). Plots (``*.png``) are never packed: they stay beside the archive, viewable in the
READMEs. By default a folder is packed together with the members of its existing archive that are not on disk (so
packing a folder that holds only new runs adds them); ``--replace`` packs exactly what is on disk.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import lzma
import os
import re
import sys
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

EXPERIMENTS = Path(__file__).resolve().parent
REPO = EXPERIMENTS.parent
INDEX = EXPERIMENTS / "archives.sha256"
SUFFIX = ".tar.xz"
MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z, every member's mtime
XZ_PRESET = 9
KEEP_OUTSIDE = ("*.png",)  # plots stay files beside the archive
# Files of a packed folder that stay outside its archive (committed as files), by folder relative to experiments/
KEEP_OUTSIDE_BY_FOLDER = {"study_smollm2/routing_init": ("comparisons.md",)}
MAX_ARCHIVE_BYTES = 5_000_000  # no committed file may exceed 5 MB (split the folder, e.g. by method, if one would)
TABLE_BEGIN = "<!-- archives:begin (written by experiments/pack_runs.py; do not edit by hand) -->"
TABLE_END = "<!-- archives:end -->"


class ArchiveError(RuntimeError):
    """A malformed, unsafe or unlisted archive, or a folder that cannot be packed."""


def archive_path(folder: Path) -> Path:
    """The archive of ``folder``: ``<folder>.tar.xz`` beside it."""
    return folder.with_name(folder.name + SUFFIX)


def folder_of(archive: Path) -> Path:
    """The folder an archive unpacks to (beside it)."""
    if not archive.name.endswith(SUFFIX):
        raise ArchiveError(f"{archive}: not a {SUFFIX} archive")
    return archive.with_name(archive.name[: -len(SUFFIX)])


def _rel_to_experiments(path: Path) -> str | None:
    try:
        return path.resolve().relative_to(EXPERIMENTS).as_posix()
    except ValueError:
        return None


def _kept_outside(folder: Path, rel: str) -> bool:
    name = PurePosixPath(rel).name
    patterns = KEEP_OUTSIDE + KEEP_OUTSIDE_BY_FOLDER.get(_rel_to_experiments(folder) or "", ())
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def folder_members(folder: Path) -> dict[str, bytes]:
    """``{member name: bytes}`` of the files under ``folder`` that go into its archive (names ``<folder>/<rel>``)."""
    if not folder.is_dir():
        raise ArchiveError(f"{folder}: not a directory")
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise ArchiveError(f"{path}: only regular files can be packed (a link or special file)")
        if path.is_file() and not _kept_outside(folder, rel):
            out[f"{folder.name}/{rel}"] = path.read_bytes()
    return out


def _check_name(name: str) -> None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or name != p.as_posix() or "\\" in name:
        raise ArchiveError(f"unsafe member name {name!r}")


def pack_bytes(members: Mapping[str, bytes]) -> bytes:
    """The archive bytes of ``members``: sorted, fixed metadata, PAX tar, xz (the same input gives the same bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            _check_name(name)
            data = members[name]
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.type = len(data), MTIME, 0o644, tarfile.REGTYPE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)


def read_members(archive: Path) -> dict[str, bytes]:
    """``{member name: bytes}`` of an archive; only regular files with safe relative names are accepted."""
    out = {}
    try:
        with tarfile.open(archive, mode="r:xz") as tar:
            for info in tar.getmembers():
                _check_name(info.name)
                if not info.isfile():
                    raise ArchiveError(f"{archive}: member {info.name!r} is not a regular file")
                f = tar.extractfile(info)
                assert f is not None
                out[info.name] = f.read()
    except (tarfile.TarError, lzma.LZMAError, EOFError) as e:
        raise ArchiveError(f"{archive}: not a readable {SUFFIX} archive ({e})") from e
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_archive(archive: Path, members: Mapping[str, bytes], *, update_index: bool = True) -> bool:
    """Write ``members`` to ``archive`` (only when its bytes change); returns whether it was written.

    An archive under ``experiments/`` also gets its line in ``archives.sha256`` and its row in its README's table.
    """
    data = pack_bytes(members)
    if len(data) > MAX_ARCHIVE_BYTES:
        raise ArchiveError(
            f"{archive}: {len(data):,} bytes, over the {MAX_ARCHIVE_BYTES:,}-byte limit on a committed file; "
            "pack its folder in parts (e.g. one sub-folder per method)"
        )
    changed = not archive.exists() or archive.read_bytes() != data
    if changed:
        _write_atomic(archive, data)
    if update_index:
        record([archive])
    return changed


def pack(folder: Path, *, replace: bool = False, update_index: bool = True) -> Path:
    """Pack ``folder`` into ``<folder>.tar.xz``; members of an existing archive missing on disk are kept unless
    ``replace``. Returns the archive path."""
    return pack_many([folder], replace=replace, update_index=update_index)[0]


def pack_many(folders: Iterable[Path], *, replace: bool = False, update_index: bool = True) -> list[Path]:
    """:func:`pack` for several folders; the index and the README tables are updated once, at the end."""
    archives = []
    for folder in folders:
        archive = archive_path(folder)
        members = {} if replace or not archive.exists() else read_members(archive)
        members.update(folder_members(folder))
        if not members:
            raise ArchiveError(f"{folder}: nothing to pack")
        write_archive(archive, members, update_index=False)
        archives.append(archive)
    if update_index:
        record(archives)
    return archives


def record(archives: Iterable[Path]) -> None:
    """Enter the archives under ``experiments/`` into ``archives.sha256`` and their READMEs' Archives tables."""
    ours = [a for a in archives if _rel_to_experiments(a) is not None]
    if ours:
        set_index_entries({a: sha256_file(a) for a in ours})
        update_readme_tables(readme_for(a) for a in ours)


def unpack(archive: Path, dest: Path, *, overwrite: bool = True) -> list[Path]:
    """Extract ``archive`` under ``dest`` (its folder becomes ``dest/<name>``); returns the files written."""
    written = []
    for name, data in read_members(archive).items():
        target = dest / name
        if target.exists() and not overwrite:
            continue
        _write_atomic(target, data)
        written.append(target)
    return written


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return sha256_bytes(path.read_bytes())


def read_index(index: Path = INDEX) -> dict[str, str]:
    """``{archive path relative to experiments/: sha256}`` from ``archives.sha256``."""
    if not index.exists():
        return {}
    out = {}
    for lineno, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](\S.*)", line)
        if not m:
            raise ArchiveError(f"{index}:{lineno}: expected '<sha256>  <path>' (sha256sum format)")
        out[m.group(2)] = m.group(1)
    return out


def write_index(entries: Mapping[str, str], index: Path = INDEX) -> None:
    """Write ``archives.sha256`` (sorted by path)."""
    _write_atomic(index, "".join(f"{sha}  {rel}\n" for rel, sha in sorted(entries.items())).encode())


def set_index_entries(shas: Mapping[Path, str], index: Path = INDEX) -> None:
    """Record the sha256 of archives under ``experiments/`` in the index."""
    entries = read_index(index)
    for archive, sha in shas.items():
        rel = _rel_to_experiments(archive)
        if rel is None:
            raise ArchiveError(f"{archive}: not under {EXPERIMENTS}")
        entries[rel] = sha
    write_index(entries, index)


def readme_for(archive: Path) -> Path:
    """The README that describes an archive: the nearest ``README.md`` above it, within ``experiments/``."""
    d = archive.resolve().parent
    while True:
        if (d / "README.md").is_file():
            return d / "README.md"
        if d == EXPERIMENTS or d.parent == d:
            raise ArchiveError(f"{archive}: no README.md above it in {EXPERIMENTS}")
        d = d.parent


def archives_table(readme: Path, index: Mapping[str, str] | None = None) -> str:
    """The markdown "Archives" table of every indexed archive that ``readme`` describes."""
    index = read_index() if index is None else index
    rows = []
    for rel, sha in sorted(index.items()):
        archive = EXPERIMENTS / rel
        if readme_for(archive) != readme.resolve():
            continue
        n = len(read_members(archive)) if archive.exists() else 0
        size = archive.stat().st_size if archive.exists() else 0
        link = os.path.relpath(archive, readme.parent).replace(os.sep, "/")
        rows.append(f"| [`{link}`]({link}) | `{sha}` | {size:,} | {n} |")
    head = ["| archive | sha256 | bytes | files |", "|---|---|---|---|"]
    return "\n".join(head + rows)


def _table_block(readme: Path, index: Mapping[str, str] | None) -> str:
    return f"{TABLE_BEGIN}\n{archives_table(readme, index)}\n{TABLE_END}"


def readme_table_problem(readme: Path, index: Mapping[str, str] | None = None) -> str | None:
    """Why ``readme``'s Archives table is out of date (``None`` when it is current)."""
    text = readme.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        return f"{readme}: no Archives table (markers {TABLE_BEGIN!r} ... {TABLE_END!r})"
    start, end = text.index(TABLE_BEGIN), text.index(TABLE_END) + len(TABLE_END)
    if text[start:end] != _table_block(readme, index):
        return f"{readme}: the Archives table does not match archives.sha256 (run experiments/pack_runs.py --readmes)"
    return None


def update_readme_tables(readmes: Iterable[Path], index: Mapping[str, str] | None = None) -> None:
    """Rewrite the Archives table of each README (one is appended, under "## Archives", where there is none)."""
    for readme in dict.fromkeys(r.resolve() for r in readmes):
        text = readme.read_text()
        block = _table_block(readme, index)
        if TABLE_BEGIN in text and TABLE_END in text:
            start, end = text.index(TABLE_BEGIN), text.index(TABLE_END) + len(TABLE_END)
            new = text[:start] + block + text[end:]
        else:
            new = text.rstrip("\n") + "\n\n## Archives\n\n" + block + "\n"
        if new != text:
            _write_atomic(readme, new.encode())


def all_readmes(index: Mapping[str, str] | None = None) -> list[Path]:
    """Every README that describes an indexed archive."""
    index = read_index() if index is None else index
    return sorted({readme_for(EXPERIMENTS / rel) for rel in index})


def main(argv: list[str] | None = None) -> int:
    """CLI: pack folders (or only refresh the README tables)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*", type=Path, help="folders to pack, each into <folder>.tar.xz beside it")
    ap.add_argument("--replace", action="store_true", help="pack what is on disk only (drop members not on disk)")
    ap.add_argument("--readmes", action="store_true", help="rewrite every README's Archives table from the index")
    args = ap.parse_args(argv)
    if not args.folders and not args.readmes:
        ap.error("give folders to pack, or --readmes")
    try:
        for archive in pack_many(args.folders, replace=args.replace):
            print(
                f"{archive}: {len(read_members(archive))} files, {archive.stat().st_size:,} bytes, "
                f"sha256 {sha256_file(archive)}"
            )
        if args.readmes:
            update_readme_tables(all_readmes())
    except ArchiveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
