"""The landing contract every producer and the simulator share: the snapshot fields,
the file formats and the folder per hour::

    <landing>/usage/<YYYY-MM-DD>/<HH>/<name>.jsonl | .csv

Kept apart from :mod:`chargeback.ingest.sources` so that the simulator, which writes
this layout, and the sources, which read it, both depend on it and not on each other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

SNAPSHOT_FIELDS = ("snapshot_id", "tenant_id", "meter", "value", "unit", "hour", "emitted_at", "kind")
FORMATS = {".jsonl": "jsonl", ".csv": "csv"}


def hours(start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
    """Each hour start in ``[start, end)``; both ends must be whole UTC hours."""
    for bound in (start, end):
        if bound.tzinfo is None or bound.minute or bound.second or bound.microsecond:
            raise ValueError(f"window bounds must be whole hours with a time zone, got {bound.isoformat()}")
    hour = start.astimezone(dt.UTC)
    while hour < end:
        yield hour
        hour += dt.timedelta(hours=1)


def hour_folder(landing: str, hour: dt.datetime) -> str:
    return f"{landing.rstrip('/')}/usage/{hour:%Y-%m-%d}/{hour:%H}"
