"""User-facing errors.

A :class:`KExpertError` is an expected failure caused by input (a config key, a data file, a bank entry).
Entry points catch it and print one clear line instead of a traceback wall.
"""

from __future__ import annotations


class KExpertError(Exception):
    """An error the user can fix; its message names the file, line or key and what was expected."""


class ConfigError(KExpertError):
    """A config key has an invalid value."""


class DataError(KExpertError):
    """A data file or record is missing or malformed."""


class InvalidGridPoint(ConfigError):
    """A sweep grid point that cannot run as a combination.

    For example ``moe.top_k > moe.num_experts``, or no Expert LoRA for the task. With ``skip_invalid=true`` only
    this error is recorded as a skipped cell; every other error fails the job.
    """
