"""Are a month's marts current? Asked before a month is invoiced or finalized.

An invoice is rendered from the marts, and the marts are only as new as the last dbt
build. Two ways they can be stale, both read from the warehouse's own records:

* the last build covering hours of the month **failed** (``pipeline.transform_runs``,
  written by every dbt run — ``chargeback.engine.transform.build``, the dbt tasks of
  ``usage_hourly``, dbt by hand) and no later successful build of the same window and
  models replaced it: the marts may hold half a build;
* usage of the month was **published after** the last successful build covering it
  began (``pipeline.load_runs``): the marts do not include it yet.

Either way the month is refused with one line (``chargeback.platform.events.refuse``) naming
the failed build or the load and the command that fixes it, and :class:`StaleMarts`
is raised with that line, so no PDF is rendered and no invoice recorded.

How fresh the marts are, for every figure shown: :func:`usage_through` is the instant up to
which they know usage (the end of the last hour with published usage, as the trend marts
state on each row), and :func:`usage_through_text` says it in reports.
"""

from __future__ import annotations

import datetime as dt

from chargeback.platform import events, warehouse
from chargeback.platform.periods import month_window
from chargeback.platform.settings import Settings

INSIGHT_MARTS = "tag:insights"
"""How ``pipeline.transform_runs.selection`` records a build of the insight marts alone (dbt tag
``insights``; ``chargeback.engine.transform.INSIGHTS``): it builds no billing mart."""


def usage_through(conn, period_end: dt.datetime | None = None, *, within: bool = False) -> dt.datetime | None:
    """The instant up to which the marts know usage: the end of the last hour with usage in
    ``marts.fct_usage_hourly`` (every hour before it that has usage is in the marts), capped
    at ``period_end`` when given. ``None`` when the marts hold no usage or were never built.

    ``within``: the end of the last hour with usage *before* ``period_end`` instead (what a
    forecast of a past month starts from: the month's own last usage, not its end).
    ``conn`` is an open psycopg connection (``warehouse.connect()``); one indexed read.
    """
    if conn.execute("select to_regclass('marts.fct_usage_hourly')").fetchone()[0] is None:
        return None
    bounded = within and period_end is not None
    (through,) = conn.execute(
        "select max(hour_start) + interval '1 hour' from marts.fct_usage_hourly"
        + (" where hour_start < %s" if bounded else ""), (period_end,) if bounded else ()).fetchone()
    if through is None:
        return None
    return min(through, period_end) if period_end is not None else through


def usage_through_text(through: dt.datetime | None) -> str:
    """``usage through 2026-12-06 12:00 UTC`` (every hour ending by then), or ``no usage known yet``."""
    if through is None:
        return "no usage known yet"
    return f"usage through {through.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


class StaleMarts(RuntimeError):
    """The month's marts are not current; the message is the one line recorded in pipeline.events."""


# A failed build touching [start, end) that no later successful build of a window
# containing its window (or of everything), with the same models (or all), replaced. A failed
# build of the insight marts alone is left to the month close's own rebuild of them
# (billing_monthly's refresh_insights, `chargeback close`): the billing marts do not read them.
_UNREPAIRED_FAILURE = """
select f.transform_id, f.window_start, f.window_end, f.selection, f.finished_at, f.failures
from pipeline.transform_runs as f
where f.status = 'failed'
  and f.selection is distinct from %(insights)s
  and (f.window_start is null or (f.window_start < %(end)s and f.window_end > %(start)s))
  and not exists (
      select from pipeline.transform_runs as s
      where s.status = 'succeeded'
        and s.transform_id > f.transform_id
        and s.started_at >= f.started_at
        and (s.window_start is null
             or (f.window_start is not null
                 and s.window_start <= f.window_start and s.window_end >= f.window_end))
        and (s.selection is null or s.selection = f.selection)
  )
order by f.transform_id desc
limit 1
"""

# A published load of hours of the month that no successful build begun after it
# finished covers (its hours within the month, or everything). A build of the insight
# marts alone (selection INSIGHT_MARTS) does not count: it builds no billing mart.
_UNBUILT_LOAD = """
select l.load_id, l.window_start, l.window_end, l.finished_at,
       (select max(s.finished_at) from pipeline.transform_runs as s
        where s.status = 'succeeded'
          and s.selection is distinct from %(insights)s
          and (s.window_start is null
               or (s.window_start < %(end)s and s.window_end > %(start)s))) as last_build
from pipeline.load_runs as l
where l.status = 'published'
  and l.window_start < %(end)s and l.window_end > %(start)s
  and not exists (
      select from pipeline.transform_runs as s
      where s.status = 'succeeded'
        and s.selection is distinct from %(insights)s
        and s.started_at >= l.finished_at
        and (s.window_start is null
             or (s.window_start <= greatest(l.window_start, %(start)s)
                 and s.window_end >= least(l.window_end, %(end)s)))
  )
order by l.finished_at desc
limit 1
"""


# The insight marts (dbt tag insights) miss a change of [start, end) when a successful build of
# part of the project touching it has no successful build of the insight marts (or of everything:
# selection null) begun after it ended over a window containing its hours there, or when the
# last build of them touching it failed.
_INSIGHTS_BEHIND = """
select exists (
    select from pipeline.transform_runs as b
    where b.status = 'succeeded'
      and b.selection <> %(insights)s
      and (b.window_start is null or (b.window_start < %(end)s and b.window_end > %(start)s))
      and not exists (
          select from pipeline.transform_runs as i
          where i.status = 'succeeded' and (i.selection = %(insights)s or i.selection is null)
            and i.started_at >= b.finished_at
            and (i.window_start is null
                 or (i.window_start <= greatest(coalesce(b.window_start, %(start)s), %(start)s)
                     and i.window_end >= least(coalesce(b.window_end, %(end)s), %(end)s)))
      )
) or coalesce((
    select i.status = 'failed' from pipeline.transform_runs as i
    where (i.selection = %(insights)s or i.selection is null)
      and (i.window_start is null or (i.window_start < %(end)s and i.window_end > %(start)s))
    order by i.transform_id desc limit 1
), false)
"""


def insight_marts_current(start: dt.datetime, end: dt.datetime, settings: Settings | None = None) -> bool:
    """Whether the insight marts (builds recorded as :data:`INSIGHT_MARTS`) hold every
    change of ``[start, end)``: each successful build of the cost chain touching it was followed by
    a successful build of the insight marts covering its hours there, and their last build there
    did not fail. The month close skips its own rebuild of them when they do."""
    with warehouse.connect(settings) as conn:
        behind = conn.execute(_INSIGHTS_BEHIND, {"start": start, "end": end, "insights": INSIGHT_MARTS}).fetchone()[0]
    return not behind


def require_current_marts(period: str, settings: Settings | None = None) -> None:
    """Refuse (one line, then :class:`StaleMarts`) when ``period``'s marts are not current."""
    start, end = month_window(period)
    params = {"start": start, "end": end, "insights": INSIGHT_MARTS}
    with warehouse.connect(settings) as conn:
        failure = conn.execute(_UNREPAIRED_FAILURE, params).fetchone()
        unbuilt = None if failure else conn.execute(_UNBUILT_LOAD, params).fetchone()
    if failure:
        transform_id, w_start, w_end, selection, finished_at, failures = failure
        first = failures[0] if failures else "see dbt_project/logs/dbt.log"
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        models = f" of {selection}" if selection else ""
        line = events.refuse(
            f"invoices of {period}",
            f"the dbt build{models} over {_window_text(w_start, w_end)} failed at {_instant(finished_at)}"
            f" — {first}{more} — so the marts may be incomplete",
            f"fix the cause, then rebuild with `{_rebuild_command(w_start, w_end)}`"
            " (or re-run usage_hourly for that window) and invoice the month again",
            where=f"transform run {transform_id}",
            settings=settings,
        )
        raise StaleMarts(line)
    if unbuilt:
        load_id, l_start, l_end, finished_at, last_build = unbuilt
        built = f"last built at {_instant(last_build)}" if last_build else "never built"
        b_start, b_end = max(l_start, start), min(l_end, end)
        line = events.refuse(
            f"invoices of {period}",
            f"usage of {_window_text(l_start, l_end)} was published at {_instant(finished_at)}, after the marts"
            f" were {built}, so the invoices would not include it",
            f"rebuild with `{_rebuild_command(b_start, b_end)}` (or re-run usage_hourly for that window)"
            " and invoice the month again",
            where=f"load {load_id}",
            settings=settings,
        )
        raise StaleMarts(line)


def _instant(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _window_text(start: dt.datetime | None, end: dt.datetime | None) -> str:
    return f"[{_iso(start)}, {_iso(end)})" if start is not None and end is not None else "every hour"


def _rebuild_command(start: dt.datetime | None, end: dt.datetime | None) -> str:
    if start is None or end is None:
        return "chargeback transform"
    return f"chargeback transform --start {_iso(start)} --end {_iso(end)}"
