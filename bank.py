"""Build or import a LoRA bank: ``python bank.py bank=smollm2_cpu base_model=smollm2_135m``."""

import hydra
from omegaconf import DictConfig

from kexpert.pipeline.build_bank import run
from kexpert.utils.cli import configure_threads, friendly_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="bank")
@friendly_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    configure_threads()
    run(cfg)


if __name__ == "__main__":
    main()
