"""Provenance for metrics.json: package versions, git commit, device."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = (
    "kexpert",
    "torch",
    "transformers",
    "peft",
    "lightning",
    "hydra-core",
    "datasets",
    "faiss-cpu",
    "sentence-transformers",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that determine results."""
    out: dict[str, str | None] = {}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def git_commit(root: str | Path = ".") -> str | None:
    """HEAD commit of the repo (with ``-dirty`` when the tree has changes), or ``None``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_info() -> dict[str, Any]:
    """CPU / GPU description."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def provenance() -> dict[str, Any]:
    """Everything above in one dict."""
    return {"versions": package_versions(), "git": git_commit(Path(__file__).resolve().parents[2]), **device_info()}
