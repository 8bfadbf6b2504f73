"""Money as integer micro-units (1 unit of the currency = 1,000,000), parsed and printed as decimals.

Pure and float-free: text is split into digits, never passed through float(). Nothing here knows
about a currency code; callers print it.
"""

from __future__ import annotations

import re

MICROS = 1_000_000
MAX_UNITS = 1_000_000_000_000  # bounds every amount (1e18 micros), so sums stay inside 64-bit integers
_DECIMAL = re.compile(r"([+-]?)(\d+)(?:\.(\d+))?")


class AmountError(ValueError):
    """A malformed amount; the message names the value and what is allowed."""


def parse_amount(text: object, *, what: str = "amount", negative: bool = True) -> int:
    """A decimal string with at most 6 decimal places → micro-units; AmountError otherwise.

    `1e3`, `abc`, `.5`, `0.0000001` and floats handed in by YAML or JSON are refused.
    """
    if not isinstance(text, str):
        shown = repr(text)[:40]
        raise AmountError(f"{what} must be a decimal string such as \"12.50\", got {shown}")
    value = text.strip()
    match = _DECIMAL.fullmatch(value)
    if match is None:
        raise AmountError(f"{what} '{value[:40]}' is not a decimal amount such as 12.50")
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    if len(fraction) > 6:
        raise AmountError(f"{what} '{value[:40]}' has more than 6 decimal places (the smallest amount is 0.000001)")
    if len(whole.lstrip("0")) > 13 or int(whole) > MAX_UNITS:
        raise AmountError(f"{what} '{value[:40]}' is too large (at most {MAX_UNITS})")
    micros = int(whole) * MICROS + int(fraction.ljust(6, "0"))
    if sign == "-":
        micros = -micros
    if micros < 0 and not negative:
        raise AmountError(f"{what} '{value[:40]}' must not be negative")
    return micros


def format_amount(micros: int) -> str:
    """Micro-units → a decimal with exactly 6 places: 12345678 → '12.345678', -5 → '-0.000005'."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(int(micros)), MICROS)
    return f"{sign}{whole}.{fraction:06d}"


def money_json(micros: int, name: str) -> dict[str, object]:
    """The pair every JSON output carries: `name` as a decimal string and `name_micros` as an integer."""
    return {name: format_amount(micros), f"{name}_micros": int(micros)}
