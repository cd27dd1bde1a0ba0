"""LoRA bank: adapters on disk, manifests, import, build and bank cards (docs/method.md §2).

* :mod:`kexpert.bank.merge`: merging and composing bank LoRAs (uniform merge, LoRAHub).
* :mod:`kexpert.bank.manifest`: :class:`Bank` / :class:`BankEntry` and the ``manifest.json`` schema.
* :mod:`kexpert.bank.validate`: describing an adapter as an entry and validating it against a base model.
* :mod:`kexpert.bank.spec`: ``conf/bank`` options for existing adapters (manifest, adapter dir, hub ids).
* :mod:`kexpert.bank.build`: ``conf/bank`` options for banks kexpert trains (``python bank.py``).
* :mod:`kexpert.data.decontam` (used by the build): eval-set decontamination of bank training data.
* :mod:`kexpert.bank.testing`: random PEFT banks for tests.
"""

from kexpert.bank.manifest import Bank, BankEntry, read_manifest, write_manifest

__all__ = ["Bank", "BankEntry", "read_manifest", "write_manifest"]
