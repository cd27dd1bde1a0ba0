"""The one place that calls ``hydra.utils.instantiate`` (so a Hydra upgrade changes one file)."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate as _instantiate
from omegaconf import DictConfig, OmegaConf

from kexpert.utils.errors import ConfigError


def instantiate(cfg: Any, key: str = "", **kwargs: Any) -> Any:
    """Instantiate a ``_target_`` config; errors name the config key.

    Args:
        cfg: A config node with ``_target_``.
        key: Its dotted key, for error messages.
        **kwargs: Runtime objects passed to the constructor.
    """
    if cfg is None:
        raise ConfigError(f"{key or 'config'}: missing (null)")
    if isinstance(cfg, DictConfig) and "_target_" not in cfg:
        raise ConfigError(f"{key or 'config'}: no _target_ (got keys {list(cfg.keys())})")
    try:
        return _instantiate(cfg, **kwargs, _convert_="all")
    except Exception as e:
        root = e
        while root.__cause__ is not None:
            root = root.__cause__
        if isinstance(root, ConfigError):
            raise root from None
        target = cfg.get("_target_") if isinstance(cfg, DictConfig) else None
        raise ConfigError(f"{key or 'config'} ({target}): {type(root).__name__}: {root}") from e


def to_container(cfg: Any) -> Any:
    """Resolved plain-Python copy of a config (for metrics.json)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
