"""Select the experts of a task from the LoRA bank: ``python select_experts.py task=arc_c bank=smollm2_cpu``."""

import hydra
from omegaconf import DictConfig

from kexpert.pipeline.select_experts import run
from kexpert.utils.cli import configure_threads, friendly_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="select_experts")
@friendly_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    configure_threads()
    run(cfg)


if __name__ == "__main__":
    main()
