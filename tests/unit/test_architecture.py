"""The package's shape, checked in CI: the import-linter layer contract, file sizes, no private Hydra API."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kexpert"


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    r = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_no_package_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"files over 400 lines: {long}"


def test_no_private_hydra_api():
    hits = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "hydra._internal" in p.read_text()]
    assert not hits


def test_method_references_point_into_the_repository():
    hits = [
        str(p.relative_to(ROOT))
        for d in (PACKAGE, ROOT / "conf")
        for p in d.rglob("*")
        if p.is_file() and p.suffix in {".py", ".yaml", ".md"} and "METHOD.md" in p.read_text()
    ]
    assert not hits, f"cite docs/method.md, not METHOD.md: {hits}"
    assert (ROOT / "docs" / "method.md").is_file() and (ROOT / "docs" / "architecture.md").is_file()
