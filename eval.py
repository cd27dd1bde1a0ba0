"""Evaluate a model on a task: ``python eval.py task=arc_e eval.limit=200``."""

import hydra
from omegaconf import DictConfig

from kexpert.pipeline.evaluate import run
from kexpert.utils.cli import configure_threads, friendly_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@friendly_errors
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the primary metric (for sweepers)."""
    configure_threads()
    return run(cfg).score


if __name__ == "__main__":
    main()
