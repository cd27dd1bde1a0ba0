"""Which kexpert files one ``train.py`` run goes through: a reader's path from ``run(cfg)`` to ``metrics.json``.

Runs the pipeline in-process on the tiny model and the fixture data (a fresh cache, so every stage is computed)
under ``sys.setprofile`` and records every call from a kexpert function into a kexpert function. Prints:

* ``files``: distinct kexpert files the run enters (what a reader following the run has to open);
* ``re-entries``: how often the run goes back into a file it had already left (the call sequence with
  consecutive calls in the same file merged);
* ``whole-config holders``: the kexpert files whose functions receive the whole run config (the ``cfg`` object
  itself, not a sub-config): where a reader has to follow ``cfg`` to know what a stage reads;
* the same two numbers for the orchestration only (``pipeline/``, ``methods/``, ``training/``, ``bank/``:
  the code that passes the config and the stage results around), and the files in first-entry order.

    python scripts/trace_run_files.py [overrides...]     # default: experiment=tiny task=arc_e method=rocket
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path.cwd()
PKG = str(ROOT / "kexpert") + os.sep
ORCHESTRATION = ("pipeline", "methods", "training", "bank")


def _is_run_config(value: object, depth: int = 1) -> bool:
    """A whole run config (the original or a copy), or an object holding one as an attribute (``ctx.cfg``)."""
    if isinstance(value, DictConfig):
        return all(k in value for k in ("paths", "task", "k_shot", "method"))
    attrs = getattr(value, "__dict__", None)
    return depth > 0 and isinstance(attrs, dict) and any(_is_run_config(v, depth - 1) for v in attrs.values())


def _rel(filename: str) -> str | None:
    return filename[len(str(ROOT)) + 1 :] if filename.startswith(PKG) else None


def trace(overrides: list[str]) -> tuple[list[str], list[str]]:
    """The kexpert files entered by kexpert-to-kexpert calls during one run, and those given the whole config."""
    from kexpert.pipeline.train import run
    from kexpert.utils.resolvers import register_resolvers

    register_resolvers()
    tmp = Path(tempfile.mkdtemp(prefix="kx_trace_"))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp / "run")
        cfg.paths.cache_dir = str(tmp / "cache")
        cfg.paths.data_dir = str(ROOT / "tests" / "fixtures" / "data")
    seq: list[str] = []
    holders: list[str] = []

    def prof(frame, event, arg):
        if event != "call":
            return
        callee = _rel(frame.f_code.co_filename)
        if callee and callee not in holders and any(_is_run_config(v) for v in frame.f_locals.values()):
            holders.append(callee)
        caller = frame.f_back and _rel(frame.f_back.f_code.co_filename)
        if callee and caller and (not seq or seq[-1] != callee):
            seq.append(callee)

    sys.setprofile(prof)
    try:
        run(cfg)
    finally:
        sys.setprofile(None)
    return seq, holders


def summarize(seq: list[str]) -> tuple[int, int, list[str]]:
    """Distinct files, re-entries into a file already left, files in first-entry order."""
    seen: list[str] = []
    reentries = 0
    for i, f in enumerate(seq):
        if f in seen and (i == 0 or seq[i - 1] != f):
            reentries += 1
        elif f not in seen:
            seen.append(f)
    return len(seen), reentries, seen


def main() -> None:
    overrides = sys.argv[1:] or ["experiment=tiny", "task=arc_e", "method=rocket"]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    seq, holders = trace(overrides)
    n, back, order = summarize(seq)
    orch = [f for f in seq if f.split(os.sep)[1] in ORCHESTRATION]
    orch = [f for i, f in enumerate(orch) if i == 0 or orch[i - 1] != f]
    on, oback, oorder = summarize(orch)
    print(f"all kexpert code:    files {n}, re-entries {back}")
    print(f"orchestration only:  files {on}, re-entries {oback}  ({', '.join(ORCHESTRATION)})")
    print(f"whole-config holders: {len(holders)} files: {', '.join(holders)}")
    print("files, in first-entry order:")
    for f in order:
        print(f"  {f}")


if __name__ == "__main__":
    main()
