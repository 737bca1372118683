"""PatientAge (AS) to a number of days, as the reference does it (spec section 2.5).

The reference (src/patient_age.rs) trims the string, strips one uppercase
suffix ``D``/``W``/``M``/``Y`` (tried in that order), parses the rest as a
Rust ``f32``, multiplies by an ``f32`` coefficient, rounds half away from zero
and casts ``as i32`` (saturating, NaN -> 0). Everything here is computed
exactly with :class:`fractions.Fraction` and rounded to ``f32`` by IEEE
round-to-nearest-even, so that no double rounding through ``f64`` occurs.
"""

import functools
import math
import re
from fractions import Fraction

from oxidicom_py.storage.naming import rust_trim

__all__ = ["parse_patient_age"]

# Rust's f32 FromStr grammar (ASCII, case-insensitive):
#   Sign? ('inf' | 'infinity' | 'nan' | Number)
#   Number ::= (Digit+ | Digit+ '.' Digit* | Digit* '.' Digit+) ('e' Sign? Digit+)?
_NUMBER = re.compile(
    r"(?P<sign>[+-]?)(?:(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]*))?|\.(?P<frac_only>[0-9]+))"
    r"(?:[eE](?P<exp>[+-]?[0-9]+))?"
)
_SPECIAL = re.compile(r"(?P<sign>[+-]?)(?P<word>inf|infinity|nan)", re.IGNORECASE)

_F32_MANTISSA_BITS = 24
_F32_MIN_EXPONENT = -126
_F32_OVERFLOW = 2**128
_I32_MIN = -(2**31)
_I32_MAX = 2**31 - 1
# A decimal whose magnitude is at least 10**39 overflows f32 (max ~3.4e38), and one
# below 10**-46 rounds to zero (half the smallest subnormal is ~7.0e-46).
_DECIMAL_OVERFLOW = 39
_DECIMAL_UNDERFLOW = -46


def _round_to_f32(x: Fraction) -> float:
    """Nearest ``f32`` to ``x`` (ties to even), with overflow to infinity."""
    if x == 0:
        return 0.0
    sign = -1.0 if x < 0 else 1.0
    a = abs(x)
    exponent = a.numerator.bit_length() - a.denominator.bit_length()
    if a < Fraction(2) ** exponent:
        exponent -= 1  # now 2**exponent <= a < 2**(exponent + 1)
    if exponent >= 128:
        return sign * math.inf
    quantum = max(exponent, _F32_MIN_EXPONENT) - (_F32_MANTISSA_BITS - 1)
    units = round(a / Fraction(2) ** quantum)  # Fraction rounds half to even
    if Fraction(units) * Fraction(2) ** quantum >= _F32_OVERFLOW:
        return sign * math.inf
    return sign * math.ldexp(units, quantum)


def _parse_rust_f32(text: str) -> float | None:
    """Rust ``str::parse::<f32>()``; ``None`` where Rust returns an error."""
    if not text.isascii():
        return None
    special = _SPECIAL.fullmatch(text)
    if special is not None:
        value = math.nan if special["word"].lower() == "nan" else math.inf
        return -value if special["sign"] == "-" else value
    match = _NUMBER.fullmatch(text)
    if match is None:
        return None
    negative = match["sign"] == "-"
    fraction_digits = match["frac"] or match["frac_only"] or ""
    digits = ((match["int"] or "") + fraction_digits).lstrip("0")
    if not digits:
        return -0.0 if negative else 0.0
    exp_text = (match["exp"] or "0").lstrip("+")
    exp_negative = exp_text.startswith("-")
    exp_digits = exp_text.lstrip("-").lstrip("0") or "0"
    if len(exp_digits) > 7:  # far beyond any f32 range either way
        value = 0.0 if exp_negative else math.inf
        return -value if negative else value
    scale = int(exp_digits) * (-1 if exp_negative else 1) - len(fraction_digits)
    magnitude = len(digits) + scale  # 10**(magnitude - 1) <= |x| < 10**magnitude
    if magnitude - 1 >= _DECIMAL_OVERFLOW:
        value = math.inf
    elif magnitude <= _DECIMAL_UNDERFLOW:
        value = 0.0
    else:
        value = _round_to_f32(Fraction(int(digits)) * Fraction(10) ** scale)
    return -value if negative else value


def _f32_mul(a: float, b: float) -> float:
    """``a * b`` in ``f32`` arithmetic (both operands are ``f32`` values)."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if math.isinf(a) or math.isinf(b):
        return a * b  # inf * finite non-zero, inf * 0 -> nan
    return _round_to_f32(Fraction(a) * Fraction(b))


def _round_half_away_to_i32(x: float) -> int:
    """Rust ``x.round() as i32``: half away from zero, saturating, NaN -> 0."""
    if math.isnan(x):
        return 0
    if math.isinf(x):
        return _I32_MAX if x > 0 else _I32_MIN
    rounded = math.floor(abs(Fraction(x)) + Fraction(1, 2))
    if x < 0:
        rounded = -rounded
    return max(_I32_MIN, min(_I32_MAX, rounded))


_UNITS: tuple[tuple[str, float], ...] = tuple(
    (suffix, _round_to_f32(Fraction(coefficient)))
    for suffix, coefficient in (("D", "1.0"), ("W", "7.0"), ("M", "30.44"), ("Y", "365.24"))
)


@functools.lru_cache(maxsize=4096)
def parse_patient_age(value: str | None) -> int | None:
    """Days of a PatientAge string (``030Y`` -> 10957), or ``None`` if it is invalid or absent.

    Cached: the exact f32 arithmetic is slow and a series repeats the same few values."""
    if value is None:
        return None
    text = rust_trim(value)
    for suffix, coefficient in _UNITS:
        if text.endswith(suffix):
            number = _parse_rust_f32(text[: -len(suffix)])
            if number is None:
                return None
            return _round_half_away_to_i32(_f32_mul(number, coefficient))
    return None
