"""Report periods in the lab's time zone. Pure (zoneinfo only).

Days are local days: a day starts at local midnight, so in Asia/Shanghai (UTC+8) the day
2024-01-01 runs from 2023-12-31T16:00Z to 2024-01-01T16:00Z. Hour buckets are UTC-aligned.
The day tier is exact in every zone: in one with a half-hour or 45-minute offset
(Asia/Kolkata, Asia/Kathmandu, Australia/Adelaide) the GPU facts of the hour that straddles
local midnight are split minute by minute between the two days; per-user facts, kept per
hour, count that hour for the day it starts in. Reports from the hour or raw tier
(``tier=hour|raw``) count it for the day it ends in.
Weeks start on Monday (ISO 8601).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PERIODS = ("day", "week", "month", "quarter", "year", "custom")
# How many periods a report covers when no range is given (ending with the current one).
DEFAULT_PERIODS = {"day": 31, "week": 12, "month": 12, "quarter": 8, "year": 3}


def zone(name: str) -> ZoneInfo:
    """The IANA zone, or ValueError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name such as Asia/Shanghai)"
        ) from None


def day_start_ts(day: date, tz: ZoneInfo) -> int:
    """Unix seconds of local midnight starting ``day`` (the day tier's key)."""
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())


def day_first_hour_ts(day: date, tz: ZoneInfo) -> int:
    """The UTC hour bucket that holds local midnight starting ``day``: the hour tier's days
    (in a zone with a half-hour offset that hour counts for the day it ends in)."""
    ts = day_start_ts(day, tz)
    return ts - ts % 3600


def local_date(ts: float, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(ts, tz).date()


def days(first: date, last: date) -> list[date]:
    """Every day from ``first`` to ``last``, both included."""
    return [first + timedelta(n) for n in range((last - first).days + 1)]


def period_start(day: date, period: str, range_start: date | None = None) -> date:
    """The first day of the period holding ``day`` (custom: the range's first day)."""
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(day.weekday())
    if period == "month":
        return day.replace(day=1)
    if period == "quarter":
        return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    if period == "year":
        return date(day.year, 1, 1)
    if period == "custom":
        if range_start is None:
            raise ValueError("a custom period needs a range")
        return range_start
    raise ValueError(f"unknown period {period!r}; one of {', '.join(PERIODS)}")


def previous_period_start(start: date, period: str, length_days: int = 1) -> date:
    """The first day of the period before the one starting at ``start``."""
    if period == "day":
        return start - timedelta(1)
    if period == "week":
        return start - timedelta(7)
    if period in ("month", "quarter", "year"):
        months = {"month": 1, "quarter": 3, "year": 12}[period]
        m = start.year * 12 + start.month - 1 - months
        return date(m // 12, m % 12 + 1, 1)
    return start - timedelta(length_days)


def next_period_start(start: date, period: str) -> date:
    if period == "day":
        return start + timedelta(1)
    if period == "week":
        return start + timedelta(7)
    months = {"month": 1, "quarter": 3, "year": 12}[period]
    m = start.year * 12 + start.month - 1 + months
    return date(m // 12, m % 12 + 1, 1)


def default_range(period: str, today: date) -> tuple[date, date]:
    """The last few whole periods ending with the one that holds ``today``."""
    if period == "custom":
        raise ValueError("a custom period needs from and to")
    start = period_start(today, period)
    for _ in range(DEFAULT_PERIODS[period] - 1):
        start = previous_period_start(start, period)
    return start, today


def day_buckets(first: date, last: date, period: str, tz: ZoneInfo) -> list[tuple[int, str]]:
    """(local day start ts, ISO date of its period's start) for each day in the range."""
    return [
        (day_start_ts(d, tz), period_start(d, period, first).isoformat()) for d in days(first, last)
    ]


def hour_buckets(first: date, last: date, period: str, tz: ZoneInfo) -> list[tuple[int, str]]:
    """(UTC hour start ts, ISO date of its period's start) for each hour of the local days."""
    out = []
    for d in days(first, last):
        label = period_start(d, period, first).isoformat()
        start, end = day_first_hour_ts(d, tz), day_first_hour_ts(d + timedelta(1), tz)
        out += [(h, label) for h in range(start, end, 3600)]
    return out


def hours_to_days(hour_ts: list[int], tz: ZoneInfo) -> dict[int, int]:
    """Each UTC hour start -> the start ts of the local day it belongs to."""
    out: dict[int, int] = {}
    for h in hour_ts:
        out[h] = day_start_ts(local_date(h + 3599, tz), tz)  # see the module docstring
    return out


def days_touched(hour_ts: list[int], tz: ZoneInfo) -> set[int]:
    """The start ts of every local day that some part of these UTC hours falls in: one day per
    hour, two for the hour that straddles midnight in a zone with a half-hour offset."""
    return {day_start_ts(local_date(t, tz), tz) for h in hour_ts for t in (h, h + 3599)}


def day_range(day_ts: int, tz: ZoneInfo) -> tuple[int, int]:
    """[start, end) in Unix seconds of the local day whose start is ``day_ts``."""
    d = local_date(day_ts + 3599, tz)
    return day_start_ts(d, tz), day_start_ts(d + timedelta(1), tz)
