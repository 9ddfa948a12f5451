"""``chargeback status``: how fresh the figures are and what waits, in one screen.

Read from the warehouse's own records only (pure SQL reads, nothing is changed):

* **freshness** — usage through (:func:`chargeback.platform.freshness.usage_through`), and for
  each mart its last successful dbt build and that build's window (``pipeline.transform_runs``:
  a run of everything, or one whose selection names the mart);
* **last runs** — the latest loads (``pipeline.load_runs``) and dbt builds
  (``pipeline.transform_runs``); Airflow's own view of its DAG runs is in its UI, these are
  what the runs wrote;
* **quarantine** — open rows and their most frequent reasons, and producers held back by the
  gate's policy whose rows are still open (``pipeline.load_holds``);
* **grace period** — months with draft invoices, when their grace period ends (after which
  ``billing_monthly`` finalizes them) and the last completeness check of the close;
* **budgets** — alerts fired this month and not yet delivered, when ``insights.budget_alerts``
  exists;
* **anomalies** — open and acknowledged anomalies, and those not yet delivered, when
  ``insights.anomalies`` exists.

Works on an empty warehouse (nothing built, nothing loaded): each section says so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from chargeback.billing.close import grace_period_end
from chargeback.platform import freshness
from chargeback.platform.settings import Settings, get_settings

WIDTH = 100


@dataclass(frozen=True)
class MartBuild:
    mart: str
    finished_at: dt.datetime | None
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    transform_id: int | None


@dataclass(frozen=True)
class LoadRun:
    load_id: int
    source: str
    window_start: dt.datetime
    window_end: dt.datetime
    status: str
    rows_loaded: int
    rows_quarantined: int
    finished_at: dt.datetime | None


@dataclass(frozen=True)
class TransformRun:
    transform_id: int
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    selection: str | None
    status: str
    finished_at: dt.datetime
    failure: str | None


@dataclass(frozen=True)
class Hold:
    load_id: int
    holder_kind: str
    holder: str
    reason: str
    hours: int


@dataclass(frozen=True)
class DraftMonth:
    period: str
    drafts: int
    grace_period_end: dt.datetime
    close_status: str | None
    missing_hours: int | None


@dataclass(frozen=True)
class Status:
    now: dt.datetime
    usage_through: dt.datetime | None
    marts: list[MartBuild] = field(default_factory=list)
    loads: list[LoadRun] = field(default_factory=list)
    transforms: list[TransformRun] = field(default_factory=list)
    quarantine_open: int = 0
    quarantine_reasons: list[tuple[str, int]] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)
    draft_months: list[DraftMonth] = field(default_factory=list)
    budget_alerts: tuple[int, int] | None = None
    """(fired this month, not yet delivered), or None without the budgets table."""
    anomalies: tuple[int, int, int] | None = None
    """(open, acknowledged, not yet delivered), or None without the anomalies table."""


# Each relation of schema marts with its last successful build: a run of everything or one
# whose selection names it (`--select a b` names several; a dbt run of one model names it alone).
_MARTS = r"""
select c.relname,
       b.finished_at, b.window_start, b.window_end, b.transform_id
from pg_class as c
join pg_namespace as n on n.oid = c.relnamespace and n.nspname = 'marts'
left join lateral (
    select t.transform_id, t.finished_at, t.window_start, t.window_end
    from pipeline.transform_runs as t
    where t.status = 'succeeded'
      and (t.selection is null or t.selection ~ ('(^|[^a-z0-9_])' || c.relname || '($|[^a-z0-9_])'))
    order by t.transform_id desc
    limit 1
) as b on true
where c.relkind in ('r', 'v', 'm', 'p')
order by c.relname
"""

_QUARANTINE_REASONS = """
select field || ': ' || left(btrim(split_part(reason, ':', 2)), 60) as reason, count(*)
from raw.usage_quarantine
where status = 'open'
group by 1
order by count(*) desc, 1
limit 3
"""

# Holds whose producer still has open rows of that load: they wait for a replay.
_OPEN_HOLDS = """
select h.load_id, h.holder_kind, h.holder, h.reason, cardinality(h.landed_hours)
from pipeline.load_holds as h
where exists (
    select from raw.usage_quarantine as q
    where q.load_id = h.load_id and q.status = 'open'
      and ((h.holder_kind = 'tenant' and q.tenant_id = h.holder)
           or (h.holder_kind = 'file' and q.source_file = h.holder))
)
order by h.load_id desc, h.holder_kind, h.holder
"""

_DRAFT_MONTHS = """
select i.period_start, count(*), c.status, c.missing_hours
from pipeline.invoices as i
left join pipeline.month_closes as c on c.period = i.period_start
where i.document_type = 'invoice' and i.status = 'draft'
group by i.period_start, c.status, c.missing_hours
order by i.period_start
"""


def collect(conn, now: dt.datetime | None = None, settings: Settings | None = None) -> Status:
    """Everything :func:`render` shows, read with ``conn`` (an open warehouse connection)."""
    settings = settings or get_settings()
    now = now or dt.datetime.now(dt.UTC)
    marts = [MartBuild(*row) for row in conn.execute(_MARTS).fetchall()]
    loads = [LoadRun(*row) for row in conn.execute(
        "select load_id, source, window_start, window_end, status, rows_loaded, rows_quarantined, finished_at"
        " from pipeline.load_runs order by load_id desc limit 3").fetchall()]
    transforms = [TransformRun(*row) for row in conn.execute(
        "select transform_id, window_start, window_end, selection, status, finished_at, failures[1]"
        " from pipeline.transform_runs order by transform_id desc limit 3").fetchall()]
    (quarantine_open,) = conn.execute(
        "select count(*) from raw.usage_quarantine where status = 'open'").fetchone()
    reasons = [(reason, count) for reason, count in conn.execute(_QUARANTINE_REASONS).fetchall()]
    holds = [Hold(*row) for row in conn.execute(_OPEN_HOLDS).fetchall()]
    drafts = [
        DraftMonth(f"{period:%Y-%m}", count, grace_period_end(f"{period:%Y-%m}", settings), status, missing)
        for period, count, status, missing in conn.execute(_DRAFT_MONTHS).fetchall()
    ]
    alerts = None
    if conn.execute("select to_regclass('insights.budget_alerts')").fetchone()[0] is not None:
        alerts = tuple(conn.execute(
            "select count(*), count(*) filter (where delivered_at is null) from insights.budget_alerts"
            " where month = date_trunc('month', %s at time zone 'UTC')::date", (now,)).fetchone())
    anomalies = None
    if conn.execute("select to_regclass('insights.anomalies')").fetchone()[0] is not None:
        anomalies = tuple(conn.execute(
            "select count(*) filter (where status = 'open'), count(*) filter (where status = 'acknowledged'),"
            " count(*) filter (where delivered_at is null) from insights.anomalies").fetchone())
    return Status(now, freshness.usage_through(conn), marts, loads, transforms, quarantine_open, reasons,
                  holds, drafts, alerts, anomalies)


def _at(value: dt.datetime | None) -> str:
    return f"{value.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC" if value else "—"


def _window(start: dt.datetime | None, end: dt.datetime | None) -> str:
    if start is None or end is None:
        return "everything"
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    return f"[{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M})"


def _ago(now: dt.datetime, then: dt.datetime) -> str:
    minutes = int((now - then).total_seconds() // 60)
    if minutes < 0:
        return "ahead of now"
    if minutes < 120:
        return f"{minutes} min ago"
    if minutes < 48 * 60:
        return f"{minutes // 60} h ago"
    return f"{minutes // (24 * 60)} days ago"


def render(s: Status) -> str:
    lines = [f"Chargeback status — {_at(s.now)}".center(WIDTH).rstrip(), "=" * WIDTH, "Freshness"]
    through = freshness.usage_through_text(s.usage_through)
    lines.append(f"  {through}" + (f" ({_ago(s.now, s.usage_through)})" if s.usage_through else ""))
    if not s.marts:
        lines.append("  marts: not built yet — run `chargeback transform`")
    else:
        lines.append(f"  {'mart':<30}{'last built':<22}window")
        for m in s.marts:
            built = _at(m.finished_at) if m.finished_at else "no build recorded"
            window = _window(m.window_start, m.window_end) if m.finished_at else ""
            lines.append(f"  {m.mart[:29]:<30}{built:<22}{window}".rstrip())
    lines += ["-" * WIDTH, "Last runs (warehouse records; Airflow's own view is in its UI)"]
    if not s.loads and not s.transforms:
        lines.append("  none yet")
    for load in s.loads:
        lines.append(f"  load {load.load_id:<6}{load.status:<11}{_window(load.window_start, load.window_end):<38}"
                     f"{load.rows_loaded:,} rows, {load.rows_quarantined:,} quarantined, {_at(load.finished_at)}")
    for run in s.transforms:
        what = run.selection or "all models"
        lines.append(f"  dbt  {run.transform_id:<6}{run.status:<11}{_window(run.window_start, run.window_end):<38}"
                     f"{what[:20]}, {_at(run.finished_at)}")
        if run.failure:
            lines.append(f"        {run.failure[: WIDTH - 8]}")
    lines += ["-" * WIDTH, f"Quarantine: {s.quarantine_open:,} open row(s)"]
    for reason, count in s.quarantine_reasons:
        lines.append(f"  {count:>8,}  {reason}")
    if s.holds:
        lines.append(f"  held back, waiting for `chargeback quarantine replay`: {len(s.holds)}")
        for hold in s.holds[:3]:
            lines.append(f"    {hold.holder_kind} {hold.holder[:60]} in load {hold.load_id} ({hold.hours} landed"
                         f" hour(s)): {hold.reason[:120]}")
    else:
        lines.append("  no producer held back")
    lines += ["-" * WIDTH, "Waiting for the grace period"]
    if not s.draft_months:
        lines.append("  no draft invoices")
    for month in s.draft_months:
        when = ("ended — finalized by the next billing_monthly run" if month.grace_period_end <= s.now
                else f"ends {_at(month.grace_period_end)}, then billing_monthly finalizes them")
        check = (f"; last close check: {month.close_status}"
                 + (f" ({month.missing_hours:,} missing hours)" if month.missing_hours else "")
                 if month.close_status else "")
        lines.append(f"  {month.period}: {month.drafts:,} draft invoice(s); grace period {when}{check}")
    if s.budget_alerts is not None:
        fired, undelivered = s.budget_alerts
        lines += ["-" * WIDTH, f"Budget alerts this month: {fired:,} fired, {undelivered:,} not yet delivered"]
    if s.anomalies is not None:
        opened, acknowledged, undelivered = s.anomalies
        lines.append(f"Anomalies: {opened:,} open, {acknowledged:,} acknowledged, {undelivered:,} not yet delivered"
                     " (chargeback anomalies list)")
    return "\n".join(lines)
