"""Late-arriving usage: which past hours an hourly run restates, and usage as it stood.

Producers may drop a file into an hour folder that was already loaded (a retried
upload, a region that was down). Each hourly run therefore looks back
``settings.restatement_hours`` before its own window and compares, hour by hour, the
landing listing with what the last published load of that hour saw
(``pipeline.load_files``): a file with a new URL, or one whose size changed, makes
the hour *restated*. The run then loads ``[earliest restated hour, run end)`` —
publish replaces by landed hour, so re-reading the hours in between changes nothing —
and dbt rebuilds ``[min(run start, earliest restated hour, earliest usage hour the
publish touched), run end)``: the affected hours and the months they touch, never
the whole history.

What is not restated, on purpose:

* hours older than the restatement window: load them with a manual backfill
  (``chargeback load --start … --end …``, then ``chargeback transform``);
* hours no published load ever covered (before the first run, or whose run failed):
  the scan compares with what a load saw, so it has nothing to compare with — rerun
  or backfill those hours;
* a file that disappeared from the landing location: removing old files (landing
  retention) must not erase usage. Keep landing files at least as long as the
  restatement window, since a restatement re-reads every hour from its start.

Hours whose month is already finalized are loaded like any other: the usage that
changes is billed as a correction on a later invoice, never by editing the issued one.

:func:`usage_as_of` answers "what did we know on that day": each snapshot carries
``learned_at`` (when Chargeback first learned of it), so a month's usage can be
recomputed counting only what had arrived by an instant, e.g. an invoice's issue date.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from chargeback.ingest.sources import FileSource
from chargeback.platform import events, warehouse
from chargeback.platform.periods import month_window, parse_instant
from chargeback.platform.settings import Settings, get_settings

log = logging.getLogger(__name__)

_HOUR = dt.timedelta(hours=1)

# For each hour of the scan, the last published load whose window covered it, and the
# files that load saw in the hour's folder (none: it covered the hour but found nothing).
_SEEN = """
with scanned as (
    select generate_series(%(from)s::timestamptz, %(to)s::timestamptz - interval '1 hour',
                           interval '1 hour') as landed_hour
),
last_load as (
    select distinct on (scanned.landed_hour) scanned.landed_hour, runs.load_id
    from scanned
    join pipeline.load_runs as runs
        on runs.status = 'published'
        and runs.window_start <= scanned.landed_hour
        and runs.window_end > scanned.landed_hour
        and runs.window_end > %(from)s
        and runs.window_start < %(to)s
    order by scanned.landed_hour, runs.load_id desc
)
select last_load.landed_hour, last_load.load_id, files.file_url,
       -- a file with rows has bytes: 0 there means the size was not recorded
       case when files.bytes > 0 or files.rows_in = 0 then files.bytes end as bytes
from last_load
left join pipeline.load_files as files
    on files.load_id = last_load.load_id
    and files.landed_hour = last_load.landed_hour
order by last_load.landed_hour, files.file_url
"""


@dataclass(frozen=True)
class RestatedHour:
    """A past hour folder whose files differ from what its last published load saw."""

    hour: dt.datetime
    load_id: int
    """The published load the hour is compared with."""
    new_files: tuple[str, ...] = ()
    changed_files: tuple[str, ...] = ()
    """Files whose size differs from what the load saw."""

    @property
    def files(self) -> int:
        return len(self.new_files) + len(self.changed_files)


@dataclass(frozen=True)
class Plan:
    """What an hourly run loads: its own window, widened back to the earliest restated hour."""

    run_start: dt.datetime
    run_end: dt.datetime
    scanned_from: dt.datetime
    """The restatement window's start: nothing before it was looked at."""
    restated: tuple[RestatedHour, ...] = ()
    final_periods: tuple[str, ...] = field(default=())
    """Months (YYYY-MM) of restated hours whose invoices are already final."""

    @property
    def load_start(self) -> dt.datetime:
        return min([self.run_start, *(r.hour for r in self.restated)])

    @property
    def load_end(self) -> dt.datetime:
        return self.run_end

    def line(self) -> str | None:
        """The one line the run logs when it restates hours (None when it does not)."""
        if not self.restated:
            return None
        return _event(self).line

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (an XCom): the load window and the restated hours."""
        return {
            "start": self.load_start.isoformat(),
            "end": self.load_end.isoformat(),
            "run_start": self.run_start.isoformat(),
            "run_end": self.run_end.isoformat(),
            "restated_hours": [r.hour.isoformat() for r in self.restated],
        }


def scan(run_start: dt.datetime, run_end: dt.datetime, settings: Settings | None = None,
         *, landing: str | None = None) -> Plan:
    """Compare the restatement window's landing listing with what the loads saw.

    Looks at the hours ``[run_start - restatement_hours, run_start)`` only. Returns
    the plan; when hours are restated it logs one line saying which and why, and keeps
    it in ``pipeline.events`` (a notice).
    """
    settings = settings or get_settings()
    run_start, run_end = parse_instant(run_start), parse_instant(run_end)
    scanned_from = run_start - dt.timedelta(hours=settings.restatement_hours)
    plan = Plan(run_start, run_end, scanned_from)
    if scanned_from >= run_start:
        return plan
    warehouse.ensure_schema(settings)
    with warehouse.connect(settings) as conn:
        seen_rows = conn.execute(_SEEN, {"from": scanned_from, "to": run_start}).fetchall()
    if not seen_rows:
        return plan  # no published load covers the window: nothing to compare with
    seen: dict[dt.datetime, tuple[int, dict[str, int | None]]] = {}
    for hour, load_id, url, size in seen_rows:
        _, files = seen.setdefault(hour, (load_id, {}))
        if url is not None:
            files[url] = size
    first_loaded = min(seen)
    listed = FileSource(landing or settings.landing).files(first_loaded, run_start)
    restated = _compare(seen, listed)
    if not restated:
        return plan
    plan = Plan(run_start, run_end, scanned_from, restated, _final_periods(restated, settings))
    events.record(_event(plan), settings=settings, details=plan.as_dict())
    return plan


def _compare(seen: dict[dt.datetime, tuple[int, dict[str, int | None]]],
             listed: Iterable) -> tuple[RestatedHour, ...]:
    by_hour: dict[dt.datetime, list] = {}
    for f in listed:
        by_hour.setdefault(f.hour, []).append(f)
    restated = []
    for hour in sorted(by_hour):
        if hour not in seen:
            continue  # never loaded: a backfill's job, not a restatement
        load_id, saw = seen[hour]
        new = tuple(f.url for f in by_hour[hour] if f.url not in saw)
        changed = tuple(f.url for f in by_hour[hour]
                        if f.url in saw and f.size is not None and saw[f.url] is not None
                        and f.size != saw[f.url])
        if new or changed:
            restated.append(RestatedHour(hour, load_id, new, changed))
    return tuple(restated)


def _final_periods(restated: tuple[RestatedHour, ...], settings: Settings) -> tuple[str, ...]:
    months = sorted({r.hour.date().replace(day=1) for r in restated})
    with warehouse.connect(settings) as conn:
        rows = conn.execute(
            "select distinct period_start from pipeline.invoices"
            " where status = 'final' and period_start = any(%s) order by 1",
            (months,),
        ).fetchall()
    return tuple(f"{m:%Y-%m}" for (m,) in rows)


def _event(plan: Plan) -> events.Event:
    count = sum(r.files for r in plan.restated)
    hours = ", ".join(
        f"{r.hour:%Y-%m-%d %H:00} ("
        + ", ".join(part for part in (
            f"{len(r.new_files)} new" if r.new_files else "",
            f"{len(r.changed_files)} changed size" if r.changed_files else "",
        ) if part)
        + ")"
        for r in plan.restated
    )
    why = (f"{'this file' if count == 1 else 'these files'} landed after the "
           f"hour{'' if len(plan.restated) == 1 else 's'} had been loaded; restated")
    action = (f"this run reloads [{plan.load_start:%Y-%m-%d %H:00}, {plan.load_end:%Y-%m-%d %H:00}) UTC"
              " and rebuilds the marts from there")
    if plan.final_periods:
        action += (f"; {', '.join(plan.final_periods)} "
                   f"{'is' if len(plan.final_periods) == 1 else 'are'} final: the change becomes"
                   " a correction on a later invoice")
    return events.Event("notice", f"{count} late file{'' if count == 1 else 's'} in {hours}", why, action,
                        severity="info" if not plan.final_periods else "warning")


def dbt_window(plan_start: dt.datetime, plan_end: dt.datetime, run_start: dt.datetime | None = None,
               usage_start: dt.datetime | None = None, usage_end: dt.datetime | None = None,
               ) -> tuple[dt.datetime, dt.datetime]:
    """The hours dbt rebuilds after a publish: the load window, widened to every hour
    whose usage the publish changed (a late snapshot's hour may precede its landed
    hour). Only these hours and the months they touch are rebuilt."""
    starts = [parse_instant(plan_start)]
    if run_start is not None:
        starts.append(parse_instant(run_start))
    if usage_start is not None:
        starts.append(parse_instant(usage_start))
    ends = [parse_instant(plan_end)]
    if usage_end is not None:
        ends.append(parse_instant(usage_end))
    return min(starts), max(ends)


# ---- usage as it stood ---------------------------------------------------------------

@dataclass(frozen=True)
class UsageAsOf:
    """One tenant's usage of a meter in a month, counting only snapshots learned by ``as_of``."""

    tenant_id: str
    meter: str
    unit: str
    quantity: Decimal
    """As invoiced: a counter's sum; a gauge's sum / hours of the month (unit-months)."""
    snapshots: int
    quantity_now: Decimal
    """The same with every snapshot known today."""
    snapshots_now: int
    last_learned_at: dt.datetime | None
    """The latest learned_at among the counted snapshots."""


_AS_OF = """
with snapshots as (
    select tenant_id, meter, value, learned_at
    from raw.usage_snapshots
    where hour_start >= %(start)s and hour_start < %(end)s
),
meters as (
    select meter, unit, kind from config.meters
),
summed as (
    select
        snapshots.tenant_id,
        snapshots.meter,
        coalesce(sum(snapshots.value) filter (where snapshots.learned_at <= %(as_of)s), 0) as known_sum,
        count(*) filter (where snapshots.learned_at <= %(as_of)s) as known_count,
        sum(snapshots.value) as sum_now,
        count(*) as count_now,
        max(snapshots.learned_at) filter (where snapshots.learned_at <= %(as_of)s) as last_learned_at
    from snapshots
    group by snapshots.tenant_id, snapshots.meter
)
select
    summed.tenant_id,
    summed.meter,
    case when meters.kind = 'gauge' then meters.unit || '-month' else coalesce(meters.unit, '?') end,
    (case when meters.kind = 'gauge' then summed.known_sum / %(hours)s else summed.known_sum end)::numeric(38, 12),
    summed.known_count,
    (case when meters.kind = 'gauge' then summed.sum_now / %(hours)s else summed.sum_now end)::numeric(38, 12),
    summed.count_now,
    summed.last_learned_at
from summed
left join meters on meters.meter = summed.meter
order by summed.tenant_id, summed.meter
"""


def usage_as_of(period: str, as_of: dt.datetime | str | None = None,
                settings: Settings | None = None) -> list[UsageAsOf]:
    """Each tenant's and meter's usage of ``period`` (YYYY-MM) as Chargeback knew it at ``as_of``.

    Counts only the snapshots learned at or before ``as_of`` (default: now, i.e.
    everything), beside today's figure, so a past invoice can be explained as it stood
    on its issue day and a later correction traced to the snapshots that arrived after.
    Reads ``raw.usage_snapshots`` directly: the marts hold today's view only.
    """
    start, end = month_window(period)
    moment = parse_instant(as_of) if as_of is not None else dt.datetime.now(dt.UTC)
    hours = int((end - start) / _HOUR)
    with warehouse.connect(settings) as conn:
        rows = conn.execute(_AS_OF, {"start": start, "end": end, "as_of": moment, "hours": hours}).fetchall()
    return [UsageAsOf(*row) for row in rows]
