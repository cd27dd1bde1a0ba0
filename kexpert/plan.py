"""``python -m kexpert.plan experiment=paper_7b [base_model=...] [trainer=...] gpu_mem_gb=80``: will a run fit?

Per stage of the composed ``train.py`` config: parameter counts (total; trainable experts and routers) and the
estimated peak GPU memory per GPU (weights, gradients, optimizer state, activations at the configured micro-batch
and cutoff, with and without activation checkpointing), and whether it fits the card. Nothing is loaded or run;
the model is instantiated on the meta device (:mod:`kexpert.pipeline.plan` explains the estimate).

Options besides Hydra overrides: ``gpu_mem_gb=80`` (the card), ``num_gpus=8`` (for ``trainer.devices=-1``),
``lora_rank=16`` (for banks that do not record their rank in the config), ``--json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from kexpert.api import compose
from kexpert.pipeline.plan import format_plan, plan
from kexpert.utils.cli import friendly_errors
from kexpert.utils.errors import ConfigError

OPTIONS = {"gpu_mem_gb": float, "num_gpus": int, "lora_rank": int}


def parse(argv: Sequence[str]) -> tuple[dict, list[str], bool]:
    """``(plan options, Hydra overrides, --json)``."""
    opts: dict = {"gpu_mem_gb": 80.0, "num_gpus": None, "lora_rank": None}
    overrides, as_json = [], False
    for arg in argv:
        key, _, value = arg.partition("=")
        if arg in ("--json", "json=true"):
            as_json = True
        elif arg in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        elif key in OPTIONS:
            try:
                opts[key] = OPTIONS[key](value)
            except ValueError as e:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from e
        else:
            overrides.append(arg)
    return opts, overrides, as_json


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Print the plan of the configured run."""
    opts, overrides, as_json = parse(list(sys.argv[1:] if argv is None else argv))
    p = plan(compose(overrides), gpus=opts["num_gpus"], lora_rank=opts["lora_rank"])
    p.update(overrides=overrides, gpu_mem_gb=opts["gpu_mem_gb"])
    print(json.dumps(p, indent=1) if as_json else format_plan(p, opts["gpu_mem_gb"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
