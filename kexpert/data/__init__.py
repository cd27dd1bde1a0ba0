"""Data: normalized records and the layer below every task and pool reader.

Holds the records (:mod:`~kexpert.data.records`), the single row-format registry with its task-row and
pool-row normalizers (:mod:`~kexpert.data.formats`), number canonicalisation (:mod:`~kexpert.data.numbers`),
open pools (:mod:`~kexpert.data.pools`), the eval-set decontamination core (:mod:`~kexpert.data.decontam`),
K-shot sampling, prompts and the SFT data path.
"""
