"""Windows and billing periods: the one place instants, windows and months are parsed.

Every stage works on an explicit UTC window ``[start, end)``; a billing period is a
calendar month in UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any


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


def month_window(period: str) -> tuple[dt.datetime, dt.datetime]:
    """``'2026-10'`` -> (2026-10-01T00:00Z, 2026-11-01T00:00Z)."""
    try:
        start = dt.datetime.strptime(period, "%Y-%m").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"not a billing period: {period!r} (expected YYYY-MM, e.g. 2026-10)") from None
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end
