"""K-shot-guided Sim-Div data selection: ``python select_data.py task=gsm8k [data_selection=sim_div]``."""

import hydra
from omegaconf import DictConfig

from kexpert.pipeline.select_data import run
from kexpert.utils.cli import configure_threads, friendly_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="select_data")
@friendly_errors
def main(cfg: DictConfig) -> int:
    """Hydra entry point; returns the number of selected pool items (for sweepers)."""
    configure_threads()
    return len(run(cfg).selected)


if __name__ == "__main__":
    main()
