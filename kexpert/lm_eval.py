"""``python -m kexpert.lm_eval``: lm-eval's command line with the ``kexpert`` model registered.

Every lm-eval argument works as with ``lm_eval``; ``--model kexpert --model_args expert=<artifact>`` scores a kexpert
artifact (:mod:`kexpert.integrations.lm_eval`)::

    python -m kexpert.lm_eval --model kexpert --model_args expert=outputs/runs/rocket_arc_e --tasks arc_easy
"""

from __future__ import annotations

from lm_eval.__main__ import cli_evaluate

from kexpert.integrations import lm_eval as _registers_kexpert_model  # noqa: F401


def main() -> None:
    """Run lm-eval's command line (``sys.argv``)."""
    cli_evaluate()


if __name__ == "__main__":
    main()
