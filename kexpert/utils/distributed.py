"""Which process this is in a multi-process run (DDP, FSDP, DeepSpeed; Lightning's launchers, torchrun, SLURM).

Stage caches and bank builders publish from rank zero only; the other ranks take part in the collectives (training)
but never take a publish lock that rank zero may hold while it waits for them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import torch.distributed as dist

# Set by Lightning's launchers (LOCAL_RANK, NODE_RANK), torchrun (RANK, LOCAL_RANK, GROUP_RANK), SLURM and LSF, in
# every process before its process group exists; rank zero is the process where all of them are 0 or unset.
RANK_ENV_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def process_rank() -> int:
    """This process's rank in a multi-process run: 0 on rank zero and in a single-process run.

    Read from the launcher's environment (:data:`RANK_ENV_VARS`; the first non-zero one wins), which every rank has
    before ``torch.distributed`` is initialised (Lightning's subprocess launcher re-executes the script with
    ``LOCAL_RANK`` set; a second node's processes carry ``NODE_RANK``); an initialised process group's rank wins.
    """
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    for var in RANK_ENV_VARS:
        try:
            rank = int(os.environ.get(var) or 0)
        except ValueError:
            continue
        if rank != 0:
            return rank
    return 0


def rank_private_dir(parent: Path, prefix: str) -> Path:
    """A new directory under ``parent`` for this process's own work (a rank > 0), removed when the process exits."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
