"""The results report of a multirun: ``python -m kexpert.report <multirun dir> [--out DIR] [--wandb]``.

Tables in the layout of the paper's Tables 1-7 (docs/method.md §8), plots, an index ``report.md``; see
:mod:`kexpert.report.build`.
"""

from kexpert.report.build import Report, build_report

__all__ = ["Report", "build_report"]
