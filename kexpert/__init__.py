"""kexpert: turn a K-shot and open knowledge into a task-expert LLM (ROCKET, arXiv 2408.15915).

The pipeline: a LoRA bank (:mod:`kexpert.bank`), K-shot expert selection and Sim-Div data selection
(:mod:`kexpert.selection`), a token-routed LoRA-MoE (:mod:`kexpert.models`), fine-tuning
(:mod:`kexpert.training`) and evaluation (:mod:`kexpert.eval`), driven by Hydra configs in ``conf/``.
"""

__version__ = "0.1.0"
