"""``data_selection=none``: no open data (the "K-shot only" row of the paper's Table 3)."""

from __future__ import annotations

from kexpert.utils.errors import ConfigError


class NoDataSelection:
    """Selects nothing; methods that train on D_K + D_A then train on D_K alone.

    Args:
        name: Strategy name.
        budget: Ignored (a scale config may set one for every option); nothing is selected.
    """

    def __init__(self, name: str = "none", budget: int = 0) -> None:
        self.name = name
        self.budget = 0

    def select(self, pool_embeddings, kshot_embeddings):
        """Not used: the pipeline skips the data stage for this option."""
        raise ConfigError("data_selection=none selects no data; the data stage is skipped (K-shot only)")
