"""The whole pipeline for one task: ``python train.py task=gsm8k k_shot=5`` (add ``-m`` for sweeps)."""

import hydra
from omegaconf import DictConfig

from kexpert.pipeline.train import run
from kexpert.utils.cli import configure_threads, friendly_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@friendly_errors
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the task score (for sweepers)."""
    configure_threads()
    metrics, _ = run(cfg)
    return metrics.get("score")


if __name__ == "__main__":
    main()
