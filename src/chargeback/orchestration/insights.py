"""The insights DAG's steps: which usage changed, then forecasts and budgets over it.

usage_hourly's ``check_marts`` task declares :data:`USAGE_MARTS` as its outlet: when the
marts of a window are rebuilt and reconcile, Airflow records an asset event whose ``extra``
is that window (the lookback dbt rebuilt, late hours included). The insights DAG is scheduled
on the asset, so it runs because data changed, not because the clock ticked.

**At most once an hour.** Every event becomes a row of ``pipeline.insights_requests``. A run
takes every request not yet done, unless another run took requests in the same UTC clock
hour: then it records its own and stops, and the next run (the next hour's event) takes them
too (a clock hour, not "60 minutes since": hourly events a minute early must not skip every
other hour), so a burst of replays or a backfill costs one insights run an
hour and loses no window. A manual run (the DAG's ``start``/``end`` params) is never held
back.

**Only what changed.** The window's months are the months the run looks at: the forecast of
the month in progress (the month of the last complete hour in the marts) when the window
touches it, and the budgets of every month the window touches (a late file can push a
closed month over its budget). The insight marts (dbt tag ``insights``) are rebuilt over the
window first (:func:`refresh`), in one dbt build: usage_hourly builds the cost chain only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping

from chargeback.platform import freshness, warehouse
from chargeback.platform.periods import Period
from chargeback.platform.settings import Settings

ASSET_URI = "chargeback://warehouse/marts/usage"
"""The usage marts (usage, allocations, ledgers, trends, showback) as one Airflow asset."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """The requests a run took: their ids, and the window and months they cover."""

    taken_at: dt.datetime
    start: dt.datetime
    end: dt.datetime
    request_ids: tuple[int, ...]

    @property
    def months(self) -> list[Period]:
        """Every UTC month the window touches, in order."""
        out: list[Period] = []
        month = Period(self.start.year, self.start.month)
        while month.window[0] < self.end:
            out.append(month)
            month = Period.parse(f"{month.window[1]:%Y-%m}")
        return out

    def as_dict(self) -> dict:
        return {"taken_at": self.taken_at.isoformat(), "start": self.start.isoformat(),
                "end": self.end.isoformat(), "request_ids": list(self.request_ids)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Plan:
        return cls(dt.datetime.fromisoformat(d["taken_at"]), dt.datetime.fromisoformat(d["start"]),
                   dt.datetime.fromisoformat(d["end"]), tuple(d["request_ids"]))


def windows_of(events: Mapping[object, Iterable[object]] | None) -> list[tuple[dt.datetime, dt.datetime]]:
    """The ``(start, end)`` windows carried by triggering asset events (``extra``), in order.

    An event without a window (an asset updated by hand in the UI) stands for "something
    changed": it gives no window, and the run falls back to the month in progress."""
    out = []
    for evs in (events or {}).values():
        for ev in evs:
            extra = getattr(ev, "extra", None) or {}
            if extra.get("start") and extra.get("end"):
                out.append((dt.datetime.fromisoformat(extra["start"]), dt.datetime.fromisoformat(extra["end"])))
    return sorted(out)


def request(windows: Iterable[tuple[dt.datetime, dt.datetime]], *, manual: bool = False,
            settings: Settings | None = None, now: dt.datetime | None = None) -> Plan | None:
    """Record ``windows`` as requests and take every pending one, or ``None`` when a run took
    requests in the same UTC clock hour (``manual`` runs are never held back).

    With no window at all (an event without one), the month in progress is requested."""
    windows = list(windows)
    with warehouse.connect(settings) as conn:
        if not windows:
            windows = [_month_in_progress(conn)]
        now = now or conn.execute("select now()").fetchone()[0]
        # one planner at a time: two runs must not take the same requests
        conn.execute("select pg_advisory_xact_lock(hashtext('chargeback.insights_requests'))")
        for start, end in windows:
            conn.execute("insert into pipeline.insights_requests (window_start, window_end, requested_at)"
                         " values (%s, %s, %s)", (start, end, now))
        last = conn.execute("select max(taken_at) from pipeline.insights_requests").fetchone()[0]
        if not manual and last is not None and _clock_hour(now) <= _clock_hour(last):
            return None
        rows = conn.execute(
            "update pipeline.insights_requests set taken_at = %s where done_at is null"
            " returning request_id, window_start, window_end", (now,)).fetchall()
    return Plan(now, min(r[1] for r in rows), max(r[2] for r in rows), tuple(sorted(r[0] for r in rows)))


def done(plan: Plan, settings: Settings | None = None) -> int:
    """Mark the plan's requests done (a failed run leaves them pending for the next one)."""
    with warehouse.connect(settings) as conn:
        return conn.execute("update pipeline.insights_requests set done_at = now()"
                            " where request_id = any(%s) and done_at is null",
                            (list(plan.request_ids),)).rowcount


def refresh(plan: Plan, settings: Settings | None = None) -> None:
    """Rebuild the insight marts over the plan's window (one dbt build, with their tests)."""
    from chargeback.orchestration import steps

    steps.refresh_insights(plan.start, plan.end, settings)


def forecast(plan: Plan, settings: Settings | None = None) -> dict[str, int]:
    """Forecast the month in progress when the plan's window touches it; returns rows per month."""
    from chargeback.insights import forecast as forecasts

    out: dict[str, int] = {}
    with warehouse.connect(settings) as conn:
        through = forecasts.usage_through(conn)
        if through is None:
            return out
        current = forecasts.month_of(through)
        for month in plan.months:
            if month.first_day == current:
                out[str(month)] = len(forecasts.forecast_month(conn, current, through))
    return out


def budgets(plan: Plan, settings: Settings | None = None) -> dict[str, int]:
    """Evaluate and deliver the budgets of every month the window touches; returns alerts fired."""
    from chargeback.insights import budgets as budget_checks

    _require_refreshed(plan, settings)
    return {str(month): len(budget_checks.check(month, settings).fired) for month in plan.months}


def anomalies(plan: Plan, settings: Settings | None = None) -> dict[str, int]:
    """Detect anomalies on the complete days the plan's window touches (a late file re-checks the
    days it changed; no day is raised twice) and on the day in progress so far, and deliver them;
    returns what was found."""
    from chargeback.insights import anomalies as detection

    first = plan.start.astimezone(dt.UTC).date()
    last = (plan.end.astimezone(dt.UTC) - dt.timedelta(microseconds=1)).date()
    outcome = detection.run(first, last, settings, today=True)
    return {"findings": outcome.findings, "raised": len(outcome.raised), "delivered": outcome.delivered}


class InsightsNotRefreshed(RuntimeError):
    """The run's refresh of the insight marts did not succeed: budgets would read stale actuals."""


def _require_refreshed(plan: Plan, settings: Settings | None) -> None:
    """Refuse when this run's build of the insight marts (over the plan's window, begun after the
    plan was taken) did not succeed: the budgets task runs after a failed forecast, not after a
    failed refresh. Another build (the month close's) does not count either way."""
    from chargeback.engine.transform import INSIGHTS

    with warehouse.connect(settings) as conn:
        row = conn.execute(
            "select transform_id, status, failures from pipeline.transform_runs"
            " where selection = %s and started_at >= %s and window_start = %s and window_end = %s"
            " order by transform_id desc limit 1", (INSIGHTS, plan.taken_at, plan.start, plan.end)).fetchone()
    if row is None or row[1] != "succeeded":
        why = f"transform run {row[0]} failed: {(row[2] or ['see the dbt log'])[0]}" if row else "it did not run"
        raise InsightsNotRefreshed(
            f"budgets of [{plan.start.isoformat()}, {plan.end.isoformat()}) not evaluated: the insight marts"
            f" were not rebuilt for this run ({why}); fix it and run the insights DAG again")


def _clock_hour(instant: dt.datetime) -> dt.datetime:
    return instant.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def _month_in_progress(conn) -> tuple[dt.datetime, dt.datetime]:
    """The month of the last hour the marts know (this UTC month when they know none)."""
    through = freshness.usage_through(conn)
    instant = through - dt.timedelta(hours=1) if through else dt.datetime.now(dt.UTC)
    return Period(instant.year, instant.month).window
