"""Evaluation: generation, scoring, metrics and the code-execution sandbox."""
