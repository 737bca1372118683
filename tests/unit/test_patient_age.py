"""PatientAge -> days (spec section 2.5)."""

import math
import warnings
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidicom_py.storage import patient_age
from oxidicom_py.storage.patient_age import parse_patient_age

I32_MAX = 2**31 - 1
I32_MIN = -(2**31)


@pytest.mark.parametrize(
    ("value", "days"),
    [
        # Reference unit tests and the SAG-anon expectation.
        ("030Y", 10957),
        ("020D", 20),
        ("2W", 14),
        ("5M", 152),
        ("003Y", 1096),
        # More units.
        ("1D", 1),
        ("1W", 7),
        ("6M", 183),
        ("12M", 365),
        ("1Y", 365),
        ("100Y", 36524),
        # Rust f32 grammar.
        ("+3Y", 1096),
        ("1e2D", 100),
        ("1E2D", 100),
        ("1e+2D", 100),
        ("1e-2D", 0),
        ("3.5Y", 1278),
        (".5D", 1),
        ("1.D", 1),
        ("-2D", -2),
        ("0D", 0),
        ("-0D", 0),
        ("0000000000000000000000001D", 1),
        # Rounding half away from zero (Python's round() would give 2, -2, 0, 0).
        ("2.5D", 3),
        ("-2.5D", -3),
        ("0.5D", 1),
        ("-0.5D", -1),
        ("1.5D", 2),
        # Saturation and NaN.
        ("infD", I32_MAX),
        ("InfinityY", I32_MAX),
        ("-infW", I32_MIN),
        ("nanY", 0),
        ("NaNM", 0),
        ("-nanD", 0),
        ("1e10Y", I32_MAX),
        ("-1e10Y", I32_MIN),
        ("99999999999D", I32_MAX),
        ("1e40D", I32_MAX),
        ("1e99999999999999999999D", I32_MAX),
        ("1e-99999999999999999999D", 0),
        ("1e-50D", 0),
        ("2147483647D", I32_MAX),
        ("2147483520D", 2147483520),
        # Rust str::trim on the whole value.
        (" 030Y ", 10957),
        ("\u3000030Y\n", 10957),
    ],
)
def test_valid_ages(value: str, days: int) -> None:
    assert parse_patient_age(value) == days


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "030",
        "Y",
        "D",
        "030y",
        "030d",
        "3 Y",
        "030Y\0",
        "\x1c030Y",  # not White_Space for Rust
        "3YY",
        "3DY",
        ".Y",
        "e2D",
        "1eD",
        "1e+D",
        "--3Y",
        "+-3Y",
        "0x10D",
        "1_0D",
        "1.2.3D",
        "\u0663Y",  # Arabic-Indic digit
        "\uff13Y",  # fullwidth digit
        "inD",
        "infinitD",
        "nan(1)D",
        "3 .5Y",
        "abcY",
    ],
)
def test_invalid_ages(value: str | None) -> None:
    assert parse_patient_age(value) is None


def test_coefficients_are_f32() -> None:
    assert dict(patient_age._UNITS) == {
        "D": 1.0,
        "W": 7.0,
        "M": 30.440000534057617,
        "Y": 365.239990234375,
    }


def _numpy_f32(x: float) -> float:
    np = pytest.importorskip("numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(np.float32(x))


@settings(max_examples=500, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_round_to_f32_matches_ieee(x: float) -> None:
    # f64 -> f32 is a single rounding, so numpy is an exact oracle here.
    assert patient_age._round_to_f32(Fraction(x)) == _numpy_f32(x)


@settings(max_examples=500, deadline=None)
@given(st.floats(width=32), st.floats(width=32))
def test_f32_mul_matches_ieee(a: float, b: float) -> None:
    np = pytest.importorskip("numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = float(np.float32(a) * np.float32(b))
    result = patient_age._f32_mul(a, b)
    assert result == expected or (math.isnan(result) and math.isnan(expected))


@settings(max_examples=300, deadline=None)
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_decimal_parse_matches_ieee_for_shortest_repr(x: float) -> None:
    # repr() of an f32 value read back as f32 must give the same value.
    assert patient_age._parse_rust_f32(repr(x)) == x


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_never_raises(value: str) -> None:
    result = parse_patient_age(value)
    assert result is None or I32_MIN <= result <= I32_MAX
