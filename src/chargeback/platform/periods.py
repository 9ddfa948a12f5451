"""Windows and billing periods: the one place instants, windows and months are parsed.

Every stage works on an explicit UTC window ``[start, end)``; a billing period is a
calendar month in UTC.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def parse_instant(value: str | dt.datetime) -> dt.datetime:
    """An ISO-8601 instant (``Z`` or an offset; naive means UTC) as an aware UTC datetime."""
    if isinstance(value, dt.datetime):
        moment = value
    else:
        try:
            moment = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r} (expected e.g. 2026-10-01T00:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def resolve_window(
    params: dict[str, Any] | None, interval_start: Any, interval_end: Any
) -> tuple[dt.datetime, dt.datetime]:
    """The run's window: ``params.start``/``params.end`` when a manual run gives them, else the data interval."""
    params = params or {}
    start = parse_instant(params.get("start") or interval_start)
    end = parse_instant(params.get("end") or interval_end)
    if end <= start:
        raise ValueError(f"empty window: start {start.isoformat()} is not before end {end.isoformat()}")
    return start, end


@dataclass(frozen=True, order=True)
class Period:
    """A billing period: one calendar month in UTC, written ``YYYY-MM``.

    Parsed once at the edge (CLI, DAG params) by :meth:`parse`; its days and its window
    are properties, so nothing deeper down parses a period again.
    """

    year: int
    month: int

    @classmethod
    def parse(cls, period: str | Period) -> Period:
        """``'2026-10' -> Period(2026, 10)``; anything but ``YYYY-MM`` is a ``ValueError``."""
        if isinstance(period, Period):
            return period
        match = _PERIOD.match(period or "") if isinstance(period, str) else None
        if not match:
            raise ValueError(f"not a billing period: {period!r} (expected YYYY-MM, e.g. 2026-10)")
        return cls(int(match[1]), int(match[2]))

    @property
    def first_day(self) -> dt.date:
        return dt.date(self.year, self.month, 1)

    @property
    def last_day(self) -> dt.date:
        """The month's last day (inclusive), as invoices print the period."""
        return dt.date(self.year, self.month, calendar.monthrange(self.year, self.month)[1])

    @property
    def window(self) -> tuple[dt.datetime, dt.datetime]:
        """The month as a UTC window ``[start, end)``."""
        start = dt.datetime(self.year, self.month, 1, tzinfo=dt.UTC)
        return start, (start + dt.timedelta(days=32)).replace(day=1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def month_window(period: str | Period) -> tuple[dt.datetime, dt.datetime]:
    """``'2026-10'`` -> (2026-10-01T00:00Z, 2026-11-01T00:00Z)."""
    return Period.parse(period).window


def format_window(start: dt.datetime, end: dt.datetime) -> str:
    """``2026-10-01T13:00Z–14:00Z`` (the end's date is shown when it differs)."""
    start, end = parse_instant(start), parse_instant(end)
    end_fmt = "%H:%MZ" if end.date() == start.date() else "%Y-%m-%dT%H:%MZ"
    return f"{start:%Y-%m-%dT%H:%MZ}–{end.strftime(end_fmt)}"
