"""OmegaConf resolvers the configs use; registered by every entry point before Hydra composes.

``${kx.dirname:...}`` turns Hydra's ``override_dirname`` into one safe path component: an override such as
``adapter=/path/to/lora`` would otherwise nest the job dir inside the sweep dir (``0_adapter=/path/...``), and a
long grid point would exceed the 255-byte file-name limit.
"""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

_UNSAFE = re.compile(r"[/\\\x00:*?\"<>|]")
MAX_DIRNAME_BYTES = 200


def safe_dirname(name: object, max_bytes: int = MAX_DIRNAME_BYTES) -> str:
    """One file-system-safe path component for ``name``.

    Path separators and characters Windows and SLURM file systems reject become ``_``, leading dots are
    dropped (no hidden or ``..`` dirs), and a name longer than ``max_bytes`` is cut and suffixed with a
    short hash of the full name, so distinct grid points keep distinct dirs.

    Args:
        name: The raw name (usually ``hydra.job.override_dirname``).
        max_bytes: The longest result in UTF-8 bytes.

    Returns:
        The sanitised name; ``"_"`` for an empty one.
    """
    raw = str(name)
    out = _UNSAFE.sub("_", raw).lstrip(".") or "_"
    encoded = out.encode()
    if len(encoded) > max_bytes:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:10]
        head = encoded[: max_bytes - len(digest) - 1].decode(errors="ignore")
        out = f"{head}-{digest}"
    return out


def register_resolvers() -> None:
    """Register kexpert's resolvers once (idempotent)."""
    if not OmegaConf.has_resolver("kx.dirname"):
        OmegaConf.register_new_resolver("kx.dirname", safe_dirname)
