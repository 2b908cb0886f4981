"""Money and calendar arithmetic: integers only, half-up rounding in exactly one place.

Amounts are ints in a currency's minor units; times are Unix seconds (UTC) taken from the
events, never the clock.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache

DAY = 86_400


def round_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest int, halves away from zero."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    if numerator >= 0:
        return (2 * numerator + denominator) // (2 * denominator)
    return -((2 * -numerator + denominator) // (2 * denominator))


@lru_cache(maxsize=64)
def _percent_ratio(percent: Decimal) -> tuple[int, int]:
    num, den = percent.as_integer_ratio()
    return num, den * 100


def percent_of(amount: int, percent: Decimal) -> int:
    """round_half_up(amount × percent / 100), exact for any decimal percent (e.g. 12.5)."""
    num, den = _percent_ratio(percent)
    return round_half_up(amount * num, den)


def pro_rata(value: int, part: int, whole: int) -> int:
    """round_half_up(value × part / whole); 0 when whole is not positive."""
    if whole <= 0:
        return 0
    return round_half_up(value * part, whole)


def split(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights` (half-up), the rounding rest on the first
    part, so the parts always add up to `total`; all to the first when no weight is positive."""
    whole = sum(w for w in weights if w > 0)
    if whole <= 0:
        return [total] + [0] * (len(weights) - 1)
    parts = [pro_rata(total, w, whole) if w > 0 else 0 for w in weights]
    parts[0] += total - sum(parts)
    return parts


def add_months(ts: int, months: int) -> int:
    """`ts` moved by whole calendar months, the day clamped to the month's end (UTC)."""
    if months == 0:
        return ts
    # the time of day never changes, so only the day is looked up: a log spans a few
    # hundred days, while its timestamps (one per customer and payment) would overflow
    # any cache and pay for the calendar on most calls
    day, second = divmod(ts, DAY)
    return _add_months_to_day(day, months) + second


@lru_cache(maxsize=65_536)
def _add_months_to_day(day: int, months: int) -> int:
    d = datetime.fromtimestamp(day * DAY, UTC)
    index = d.year * 12 + (d.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    last = calendar.monthrange(year, month)[1]
    return int(d.replace(year=year, month=month, day=min(d.day, last)).timestamp())


def months_spanned(start: int, end: int) -> int:
    """How many whole calendar months fit between start and end (a month's plan: 1)."""
    if end <= start:
        return 0
    d0 = datetime.fromtimestamp(start, UTC)
    d1 = datetime.fromtimestamp(end, UTC)
    n = (d1.year - d0.year) * 12 + (d1.month - d0.month)
    while n > 0 and add_months(start, n) > end:
        n -= 1
    while add_months(start, n + 1) <= end:
        n += 1
    return n


def instalments(total: int, n: int) -> list[int]:
    """`total` in n parts: floor(total / n) each, the remainder on the first."""
    if n <= 1:
        return [total]
    each = total // n
    return [total - each * (n - 1)] + [each] * (n - 1)
