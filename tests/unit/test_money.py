"""processors/rules/money.py: half-up rounding, calendar months, instalments."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.rules.money import (
    add_months,
    instalments,
    months_spanned,
    percent_of,
    pro_rata,
    round_half_up,
)
from tests.unit.builders import ts


def test_round_half_up_examples() -> None:
    assert [round_half_up(n, 2) for n in (1, 3, 5, -1, -3)] == [1, 2, 3, -1, -2]
    assert round_half_up(25005, 10) == 2501
    assert round_half_up(25004, 10) == 2500


@settings(max_examples=300)
@given(st.integers(-10**12, 10**12), st.integers(1, 10**6))
def test_round_half_up_is_the_nearest_with_halves_away_from_zero(n: int, d: int) -> None:
    exact = Fraction(n, d)
    got = round_half_up(n, d)
    assert abs(exact - got) <= Fraction(1, 2)
    if abs(exact - got) == Fraction(1, 2):
        assert abs(got) > abs(exact)


def test_percent_of_is_exact_for_decimal_percents() -> None:
    assert percent_of(10002, Decimal(25)) == 2501
    assert percent_of(1004, Decimal("12.5")) == 126
    assert percent_of(3, Decimal("33.3333")) == 1
    assert pro_rata(2500, 5950, 11900) == 1250
    assert pro_rata(2500, 1, 0) == 0


def test_add_months_clamps_to_the_month_end_and_keeps_the_time() -> None:
    assert add_months(ts("2026-01-31T10:30"), 1) == ts("2026-02-28T10:30")
    assert add_months(ts("2028-01-31"), 1) == ts("2028-02-29")
    assert add_months(ts("2026-01-10"), 12) == ts("2027-01-10")
    assert add_months(ts("2026-03-31"), -1) == ts("2026-02-28")


def test_months_spanned() -> None:
    assert months_spanned(ts("2026-01-10"), ts("2027-01-10")) == 12
    assert months_spanned(ts("2026-01-31"), ts("2026-02-28")) == 1
    assert months_spanned(ts("2026-01-10"), ts("2026-02-09")) == 0
    assert months_spanned(ts("2026-01-10"), ts("2026-01-10")) == 0


@given(st.integers(0, 10**9), st.integers(1, 36))
def test_instalments_sum_to_the_total_with_the_remainder_first(total: int, n: int) -> None:
    parts = instalments(total, n)
    assert len(parts) == n and sum(parts) == total
    assert all(p == total // n for p in parts[1:])
    assert parts[0] - total // n < n
