"""Data: normalized task records, K-shot sampling, prompts and the SFT data path."""
