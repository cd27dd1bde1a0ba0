"""kexpert: turn a K-shot and open knowledge into a task-expert LLM (ROCKET, arXiv 2408.15915).

The pipeline: a LoRA bank (:mod:`kexpert.bank`), K-shot expert selection and Sim-Div data selection
(:mod:`kexpert.selection`), a token-routed LoRA-MoE (:mod:`kexpert.models`), fine-tuning
(:mod:`kexpert.training`) and evaluation (:mod:`kexpert.eval`), composed as cached stages
(:mod:`kexpert.pipeline`) and driven by Hydra configs in ``conf/``.

Public API (:mod:`kexpert.api`): ``kexpert.compose(overrides)``, ``kexpert.run(cfg)``, ``kexpert.load_expert(path)``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["compose", "load_expert", "run"]


def __getattr__(name: str) -> Any:
    # The API pulls in torch, transformers and the whole pipeline: load it on first use, so importing a light
    # module (kexpert.utils, kexpert.data) stays light and no package import runs back up through the root.
    if name in __all__:
        from kexpert import api

        return getattr(api, name)
    raise AttributeError(f"module 'kexpert' has no attribute {name!r}")
