"""The option chosen in every config group of the running Hydra job (for run metadata)."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig


def config_choices() -> dict[str, str]:
    """``{group: option}`` of the current Hydra run; empty outside one (tests calling ``run(cfg)`` directly)."""
    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
