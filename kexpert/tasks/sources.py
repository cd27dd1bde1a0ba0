"""Where a task's splits come from, and reading them: :class:`SplitSource` and the local / hub split readers.

A split is a local JSON Lines file (the layout of ``shared/data``) and/or a hub dataset, each with a task-row
format (a name in :data:`kexpert.data.formats.FORMATS`). Both sources go through the same normalizers, so
they give identical :class:`~kexpert.data.records.Example` s; a malformed row is a :class:`DataError` naming
the file (or hub spec) and the row.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kexpert.data.formats import example_normalizer
from kexpert.data.records import Example
from kexpert.utils.errors import ConfigError, DataError
from kexpert.utils.io import iter_jsonl


@dataclass
class SplitSource:
    """Where one split lives, locally and on the hub.

    Attributes:
        local: Path relative to the data dir, or ``None`` when the split does not exist locally.
        local_format: Task-row format of the local file (a name in :data:`kexpert.data.formats.FORMATS`).
        hub: ``datasets.load_dataset`` arguments (``path``, optional ``name``, ``split``), or ``None``.
        hub_format: Task-row format of the hub rows.
    """

    local: str | None = None
    local_format: str | None = None
    hub: dict[str, Any] | None = None
    hub_format: str | None = None

    @classmethod
    def build(cls, spec: Any) -> SplitSource | None:
        """From a config mapping (or ``None``)."""
        if spec is None:
            return None
        if isinstance(spec, SplitSource):
            return spec
        spec = dict(spec)
        if spec.get("hub") is not None:
            spec["hub"] = dict(spec["hub"])
        return cls(**spec)

    def merged(self, override: Mapping[str, Any], key: str) -> SplitSource:
        """This source with some of its keys replaced (``hub`` is merged key by key).

        Args:
            override: Keys of this source (``local``, ``local_format``, ``hub``, ``hub_format``); a ``hub``
                mapping is merged over the current one, so ``{hub: {split: test}}`` keeps path and name.
            key: Config key named in errors.

        Returns:
            A new source; this one is unchanged.

        Raises:
            ConfigError: ``override`` is not a mapping or has an unknown key.
        """
        if not isinstance(override, Mapping):
            raise ConfigError(f"{key}: expected a mapping like eval_split's, got {type(override).__name__}")
        merged = asdict(self)
        unknown = sorted(set(override) - set(merged))
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {', '.join(unknown)} (expected {', '.join(sorted(merged))})")
        for k, v in override.items():
            if k == "hub" and isinstance(v, Mapping) and merged["hub"] is not None:
                merged["hub"] = {**merged["hub"], **dict(v)}
            else:
                merged[k] = dict(v) if isinstance(v, Mapping) else v
        return SplitSource(**merged)


def resolve_data_dir(configured: str | None) -> Path | None:
    """The local data dir: ``configured``, else ``$KEXPERT_DATA_DIR``, else ``None``."""
    d = configured or os.environ.get("KEXPERT_DATA_DIR")
    return Path(d).expanduser() if d else None


def read_local(task: str, src: SplitSource, what: str, data_dir: Path | None) -> list[Example]:
    """Read one split from its local file.

    Args:
        task: Task name (stored in every example and named in errors).
        src: The split's source.
        what: Split role named in errors (``eval``, ``kshot``, ``fewshot``).
        data_dir: The local data dir.

    Returns:
        The split's examples, in file order.

    Raises:
        DataError: No data dir, no local file configured or found, or a malformed row (file and line named).
        ConfigError: ``local_format`` is not a task-row format.
    """
    if data_dir is None:
        raise DataError(f"task {task}: no local data dir; set KEXPERT_DATA_DIR or paths.data_dir (or task.source=hub)")
    if not data_dir.is_dir():
        raise DataError(f"task {task}: data dir {data_dir} does not exist (KEXPERT_DATA_DIR / paths.data_dir)")
    if src.local is None or src.local_format is None:
        raise DataError(f"task {task}: split {what!r} has no local file configured")
    path = data_dir / src.local
    if not path.exists():
        raise DataError(f"task {task}: {path} not found (expected the layout of shared/data, see its README)")
    normalize = example_normalizer(src.local_format, f"task {task}: split {what!r} local_format")
    out = []
    for lineno, row in enumerate(iter_jsonl(path), start=1):
        try:
            out.append(normalize(row, task, lineno - 1))
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise DataError(f"{path}:{lineno}: not a valid {src.local_format} row ({type(e).__name__}: {e})") from e
    return out


def read_hub(task: str, src: SplitSource, what: str) -> list[Example]:
    """Read one split from the hub (``datasets.load_dataset``).

    Args:
        task: Task name (stored in every example and named in errors).
        src: The split's source.
        what: Split role named in errors.

    Returns:
        The split's examples, in dataset order.

    Raises:
        DataError: No hub dataset configured, the dataset cannot be loaded, or a malformed row.
        ConfigError: ``hub_format`` is not a task-row format.
    """
    if src.hub is None or src.hub_format is None:
        raise DataError(f"task {task}: split {what!r} has no hub dataset configured")
    try:
        import datasets  # optional heavy dependency, only for hub sources

        ds = datasets.load_dataset(**src.hub)
    except Exception as e:  # network, auth, missing dataset: one clear line
        raise DataError(
            f"task {task}: could not load {src.hub} from the hub ({type(e).__name__}: {e}); "
            "offline, point KEXPERT_DATA_DIR at a local data dir"
        ) from e
    normalize = example_normalizer(src.hub_format, f"task {task}: split {what!r} hub_format")
    out = []
    for i, row in enumerate(ds):
        try:
            out.append(normalize(dict(row), task, i))
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{src.hub} row {i}: not a valid {src.hub_format} row ({e})") from e
    return out
