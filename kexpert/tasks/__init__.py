"""Tasks: loading, prompts and answer judging for ARC-C, ARC-E, PIQA, BoolQ, GSM8K and MBPP."""

from kexpert.tasks.sources import SplitSource
from kexpert.tasks.task import Task

__all__ = ["SplitSource", "Task"]
