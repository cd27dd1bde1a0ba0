"""Tasks: loading, prompts and answer judging for ARC-C, ARC-E, PIQA, BoolQ, GSM8K and MBPP."""

from kexpert.tasks.task import SplitSource, Task

__all__ = ["SplitSource", "Task"]
