"""Number canonicalisation shared by the row normalizers and the answer extractors.

A gold answer read from a data file (GSM8K's ``#### 1,000``, MAWPS' ``ans``) and a number extracted from a
generation are compared as canonical strings, so both sides go through :func:`canonical_number`.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from fractions import Fraction


def canonical_number(s: str) -> str | None:
    """Canonical number string (``"1,000.50"`` -> ``"1000.5"``, ``"3/4"`` -> ``"0.75"``); ``None`` if unparsable."""
    s = s.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = Decimal(Fraction(s).numerator) / Decimal(Fraction(s).denominator) if "/" in s else Decimal(s)
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")
