"""Pipelines behind the entry points (train.py, eval.py, bank.py): importable functions taking a config."""
