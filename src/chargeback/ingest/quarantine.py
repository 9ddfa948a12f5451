"""Quarantined usage rows: list them, and bring them back once their cause is fixed.

The loader (:mod:`chargeback.ingest.load`) puts every landed row it cannot load in
``raw.usage_quarantine`` with its file, line, field and reason; a file it cannot parse
at all gets one row (field ``file``). The files themselves stay in landing, so after the
operator fixed the cause — added the tenant to ``config/``, had the producer rewrite the
file — ``chargeback quarantine replay``
(:func:`chargeback.orchestration.steps.replay_quarantine`) simply loads the landed hours
holding open rows again (configuration first, then stage → gate → publish), and rebuilds
the marts over the usage hours that changed. Rows that now pass are loaded and their old
quarantine rows marked ``replayed``; rows still bad are quarantined again and the old rows
marked ``superseded``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from chargeback.platform import warehouse
from chargeback.platform.periods import format_window
from chargeback.platform.settings import Settings

log = logging.getLogger(__name__)

STATUSES = ("open", "replayed", "superseded")
_HOUR = dt.timedelta(hours=1)


@dataclass(frozen=True)
class QuarantinedRow:
    quarantine_id: int
    load_id: int
    source_file: str
    source_line: int | None
    field: str
    reason: str
    status: str
    snapshot_id: str | None
    quarantined_at: dt.datetime

    @property
    def line(self) -> str:
        """``file:line field reason [status]`` — what ``chargeback quarantine list`` prints."""
        where = f"{self.source_file}:{self.source_line}" if self.source_line else self.source_file
        return f"{where} {self.field} {self.reason} [{self.status}]"


@dataclass(frozen=True)
class ReplayResult:
    windows: tuple[tuple[dt.datetime, dt.datetime], ...] = ()
    """The landed hours loaded again, merged into contiguous windows."""
    load_ids: tuple[int, ...] = ()
    rows_loaded: int = 0
    """Rows of those hours now in ``raw.usage_snapshots``."""
    still_open: int = 0
    """Rows of those hours quarantined again."""
    usage_window: tuple[dt.datetime, dt.datetime] | None = None
    """The usage hours the marts were rebuilt for (``None``: nothing changed)."""
    lines: list[str] = field(default_factory=list)


def list_rows(status: str | None = None, load_id: int | None = None, file: str | None = None,
              settings: Settings | None = None) -> list[QuarantinedRow]:
    """Quarantined rows, oldest first, filtered by status, load and file URL."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"quarantine status must be one of {', '.join(STATUSES)}, got {status!r}")
    warehouse.ensure_schema(settings)
    with warehouse.connect(settings) as conn:
        rows = conn.execute(
            """
            select quarantine_id, load_id, source_file, source_line, field, reason, status, snapshot_id,
                   quarantined_at
            from raw.usage_quarantine
            where (%(status)s::text is null or status = %(status)s)
              and (%(load_id)s::bigint is null or load_id = %(load_id)s)
              and (%(file)s::text is null or source_file = %(file)s)
            order by quarantine_id
            """,
            {"status": status, "load_id": load_id, "file": file},
        ).fetchall()
    return [QuarantinedRow(*r) for r in rows]


def open_hours(load_id: int | None = None, file: str | None = None,
               settings: Settings | None = None) -> list[dt.datetime]:
    """Landed hours that hold open quarantine rows (of a load, or a file, or all)."""
    with warehouse.connect(settings) as conn:
        return [r[0] for r in conn.execute(
            """
            select distinct landed_hour from raw.usage_quarantine
            where status = 'open' and landed_hour is not null
              and (%(load_id)s::bigint is null or load_id = %(load_id)s)
              and (%(file)s::text is null or source_file = %(file)s)
            order by 1
            """,
            {"load_id": load_id, "file": file},
        )]


def windows_of(hours: list[dt.datetime]) -> list[tuple[dt.datetime, dt.datetime]]:
    """Whole-hour windows ``[start, end)`` covering ``hours``, contiguous hours merged."""
    windows: list[tuple[dt.datetime, dt.datetime]] = []
    for hour in sorted(hours):
        if windows and windows[-1][1] == hour:
            windows[-1] = (windows[-1][0], hour + _HOUR)
        else:
            windows.append((hour, hour + _HOUR))
    return windows


def summary(result: ReplayResult) -> str:
    """One line for the operator."""
    if not result.windows:
        return "nothing to replay: no open quarantine rows match"
    hours = sum(int((end - start) / _HOUR) for start, end in result.windows)
    text = (f"replayed {hours} landed hour(s) as load(s) {', '.join(map(str, result.load_ids))}:"
            f" {result.rows_loaded} row(s) loaded, {result.still_open} still quarantined")
    if result.usage_window:
        text += f"; marts rebuilt for {format_window(*result.usage_window)}"
    return text
