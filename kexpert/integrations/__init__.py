"""Adapters to other tools; nothing in kexpert imports them (each needs its tool installed).

* :mod:`kexpert.integrations.lm_eval`: the lm-evaluation-harness model ``kexpert``
  (``pip install "kexpert[lm-eval]"``).
"""
