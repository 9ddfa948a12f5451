"""Every query the dashboard runs: named, parameterised, over the marts, as the viewer.

Each function takes an open connection inside :func:`chargeback.platform.access.viewer_session`
(so the database returns only the viewer's rows) and returns plain rows with ``Decimal`` money;
the pages turn them into frames and charts. No Streamlit here: the tests call these functions
and compare with the marts, and the pages call them through the session's cache.

The explorer reads one base relation per position (:func:`breakdown`):

* the daily ledger ``marts.int_ledger_daily`` (tenant × meter × day) for the organisation, business
  unit, team, tenant, meter and day levels — with ``idle=separate``, each tenant's redistributed
  idle capacity (``int_cost_allocations_daily``, cost_type idle) and its shared cost (meter
  ``(shared)``) are taken out of its cost and shown as two rows of their own;
* ``marts.fct_showback_sources_daily`` once a source is filtered or grouped by, and
  ``marts.fct_showback_labels_daily`` for a label (idle is spread there: the showback splits a
  tenant's whole ledger);
* for hours, the day's amounts of each meter split over its hours by the hour's usage with the
  largest-remainder rule (``fct_usage_hourly``; for a source, ``access.my_source_usage_hourly``),
  so the hours add up to the day exactly. Hours with no usage of a meter share its day equally.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

import psycopg
from psycopg import sql

from chargeback.dashboard.drill import Position
from chargeback.engine.allocation import largest_remainder

ZERO = Decimal("0.00")
IDLE_GROUP = "(idle capacity)"
SHARED_GROUP = "(shared services)"


@dataclass(frozen=True)
class Amounts:
    group: str
    cost: Decimal
    billed: Decimal
    currency: str = "USD"

    @property
    def margin(self) -> Decimal:
        return self.billed - self.cost

    def of(self, ledger: str) -> Decimal:
        return {"billed": self.billed, "cost": self.cost, "margin": self.margin}[ledger]


_COLUMN = {"organisation": "d.organisation", "business_unit": "d.business_unit", "team": "d.team",
           "tenant": "b.tenant_id", "source": "b.source", "meter": "b.meter", "day": "b.ledger_day"}


def _base(pos: Position) -> str:
    group = pos.group
    if group.startswith("label:") or pos.label_filters:
        return "label"
    if group == "source" or "source" in pos.filter_map:
        return "source"
    return "ledger"


def _where(pos: Position, params: list) -> sql.Composable:
    # the day range, not ledger_month: the daily relations are indexed by day
    conditions = [sql.SQL("b.ledger_day >= %s and b.ledger_day < %s")]
    params += [pos.month, next_month(pos.month)]
    for level, value in pos.filters:
        if level == "hour":
            continue
        conditions.append(sql.SQL(_COLUMN[level] + " = %s"))
        params.append(dt.date.fromisoformat(value) if level == "day" else value)
    return sql.SQL(" and ").join(conditions)


def _relation(pos: Position, params: list) -> sql.Composable:
    base = _base(pos)
    if base == "ledger":
        return sql.SQL("marts.int_ledger_daily as b")
    if base == "source":
        return sql.SQL("marts.fct_showback_sources_daily as b")
    # one label key at a time (drill.Position.groupable): the key grouped by, or the one filtered on
    key = pos.group.split(":", 1)[1] if pos.group.startswith("label:") else pos.label_filters[0][0]
    conditions = ["label_key = %s"]
    params.append(key)
    for _, value in pos.label_filters:
        conditions.append("label_value = %s")
        params.append(value)
    return sql.SQL("(select ledger_day, ledger_month, tenant_id, label_value, meter, cost_to_serve, billed_amount,"
                   " currency from marts.fct_showback_labels_daily where " + " and ".join(conditions) + ") as b")


def breakdown(conn: psycopg.Connection, pos: Position) -> list[Amounts]:
    """The current position's rows: one per value of its group, in the viewer's scope."""
    if pos.group == "hour" or "hour" in pos.filter_map:
        rows = hours(conn, pos)
        if "hour" in pos.filter_map:
            rows = [r for r in rows if r.group == f"{int(pos.filter_map['hour']):02d}"]
        return rows
    params: list = []
    relation = _relation(pos, params)
    where = _where(pos, params)
    group = pos.group
    group_sql = (sql.SQL("b.label_value") if group.startswith("label:")
                 else sql.SQL(_COLUMN[group] + ("::text" if group == "day" else "")))
    query = sql.SQL(
        "select {group} as grp, b.currency, sum(b.cost_to_serve), sum(b.billed_amount)"
        " from {relation} join marts.dim_tenants as d on d.tenant_id = b.tenant_id"
        " where {where} group by 1, 2").format(group=group_sql, relation=relation, where=where)
    rows = [Amounts(str(g), c or ZERO, bl or ZERO, cur) for g, cur, c, bl in conn.execute(query, params)]
    if pos.idle == "separate" and _base(pos) == "ledger" and pos.ledger != "billed":
        rows = _separate_idle(conn, pos, rows, group_sql)
    return _sorted(rows, pos)


def _separate_idle(conn: psycopg.Connection, pos: Position, rows: list[Amounts],
                   group_sql: sql.Composable) -> list[Amounts]:
    """Each group's cost without idle capacity and shared cost, and those two as rows of their own."""
    params: list = []
    where = _where(pos, params)
    query = sql.SQL(
        "with idle as ("
        "  select a.cost_day as ledger_day, date_trunc('month', a.cost_day)::date as ledger_month, a.tenant_id,"
        "         coalesce(a.driver_meter, '(shared)') as meter, sum(a.allocated_cost) as idle_cost"
        "  from intermediate.int_cost_allocations_daily as a"
        "  where a.cost_type = 'idle' and a.tenant_id is not null"
        "    and a.cost_day >= %s and a.cost_day < %s"
        "  group by 1, 2, 3, 4)"
        " select {group} as grp, b.currency,"
        "  coalesce(sum(i.idle_cost) filter (where b.meter <> '(shared)'), 0),"
        "  coalesce(sum(b.cost_to_serve) filter (where b.meter = '(shared)'), 0)"
        " from marts.int_ledger_daily as b join marts.dim_tenants as d on d.tenant_id = b.tenant_id"
        " left join idle as i on i.ledger_day = b.ledger_day and i.tenant_id = b.tenant_id and i.meter = b.meter"
        " where {where} group by 1, 2").format(group=group_sql, where=where)
    taken = {(str(g), cur): (idle, shared) for g, cur, idle, shared
             in conn.execute(query, [pos.month, next_month(pos.month), *params])}
    out, idle_total, shared_total = [], ZERO, ZERO
    for row in rows:
        idle, shared = taken.get((row.group, row.currency), (ZERO, ZERO))
        idle_total += idle
        shared_total += shared
        out.append(Amounts(row.group, row.cost - idle - shared, row.billed, row.currency))
    currency = rows[0].currency if rows else "USD"
    out = [r for r in out if not (pos.group == "meter" and r.group == "(shared)" and r.cost == 0 and r.billed == 0)]
    if idle_total:
        out.append(Amounts(IDLE_GROUP, idle_total, ZERO, currency))
    if shared_total:
        out.append(Amounts(SHARED_GROUP, shared_total, ZERO, currency))
    return out


def _sorted(rows: list[Amounts], pos: Position) -> list[Amounts]:
    if pos.group in ("day", "hour"):
        return sorted(rows, key=lambda r: r.group)
    return sorted(rows, key=lambda r: (-r.of(pos.ledger), r.group))


def next_month(month: dt.date) -> dt.date:
    return (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def hours(conn: psycopg.Connection, pos: Position) -> list[Amounts]:
    """The filtered day's amounts per UTC hour: each meter's day split over its hours by usage
    (largest remainder), so the hours add up to the day (:func:`breakdown` of the day) exactly."""
    day = dt.date.fromisoformat(pos.filter_map["day"])
    by_meter = _day_by_meter(conn, pos)
    weights = _hour_weights(conn, pos, day)
    cost: dict[str, Decimal] = defaultdict(lambda: ZERO)
    billed: dict[str, Decimal] = defaultdict(lambda: ZERO)
    currencies = {currency for _, _, currency in by_meter.values()} or {"USD"}
    currency = min(currencies)
    every_hour = {f"{h:02d}": Decimal(1) for h in range(24)}
    for meter, (meter_cost, meter_billed, _) in by_meter.items():
        w = weights.get(meter) or every_hour
        for hour, amount in largest_remainder(meter_cost, w).items():
            cost[hour] += amount
        for hour, amount in largest_remainder(meter_billed, w).items():
            billed[hour] += amount
    return [Amounts(h, cost[h], billed[h], currency) for h in sorted(set(cost) | set(billed))]


def _day_by_meter(conn: psycopg.Connection, pos: Position) -> dict[str, tuple[Decimal, Decimal, str]]:
    params: list = []
    relation = _relation(pos, params)
    where = _where(pos, params)
    query = sql.SQL(
        "select b.meter, sum(b.cost_to_serve), sum(b.billed_amount), min(b.currency)"
        " from {relation} join marts.dim_tenants as d on d.tenant_id = b.tenant_id where {where}"
        " group by 1").format(relation=relation, where=where)
    return {m: (c or ZERO, bl or ZERO, cur) for m, c, bl, cur in conn.execute(query, params)}


def _hour_weights(conn: psycopg.Connection, pos: Position, day: dt.date) -> dict[str, dict[str, Decimal]]:
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    params: list = [start, start + dt.timedelta(days=1)]
    conditions = ["u.hour_start >= %s", "u.hour_start < %s", *_tenant_scope(pos, "u.tenant_id", "u.meter", params)]
    if "source" in pos.filter_map:
        conditions.append("u.source = %s")
        params.append(pos.filter_map["source"])
    relation = ("access.my_source_usage_hourly" if "source" in pos.filter_map else "marts.fct_usage_hourly")
    query = (f"select u.meter, to_char(u.hour_start at time zone 'UTC', 'HH24'), sum(u.quantity)"
             f" from {relation} as u join marts.dim_tenants as d on d.tenant_id = u.tenant_id"
             f" where {' and '.join(conditions)} group by 1, 2")
    weights: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for meter, hour, quantity in conn.execute(query, params):
        if quantity and quantity > 0:
            weights[meter][hour] = quantity
    return weights


def daily_trend(conn: psycopg.Connection, pos: Position) -> list[tuple[dt.date, Decimal, Decimal]]:
    """(day, cost, billed) of the position's scope over its month: the chart under the breakdown."""
    if pos.group == "hour" or "hour" in pos.filter_map:
        return []
    params: list = []
    relation = _relation(pos, params)
    where = _where(pos, params)
    query = sql.SQL("select b.ledger_day, sum(b.cost_to_serve), sum(b.billed_amount)"
                    " from {relation} join marts.dim_tenants as d on d.tenant_id = b.tenant_id where {where}"
                    " group by 1 order by 1").format(relation=relation, where=where)
    return list(conn.execute(query, params))


# ---- what a figure is made of ----

def _tenant_scope(pos: Position, tenant: str, meter: str, params: list) -> list[str]:
    """Conditions for the position's organisation, unit, team, tenant and meter filters, on a
    relation joined to ``dim_tenants as d`` whose tenant and meter columns are ``tenant``, ``meter``."""
    f = pos.filter_map
    conditions = []
    for level, column in (("organisation", "d.organisation"), ("business_unit", "d.business_unit"),
                          ("team", "d.team"), ("tenant", tenant), ("meter", meter)):
        if level in f:
            conditions.append(f"{column} = %s")
            params.append(f[level])
    return conditions


def invoice_lines(conn: psycopg.Connection, pos: Position) -> list[tuple]:
    """The month's invoice lines behind the billed figure: tenants and meter of the position."""
    params: list = [pos.month]
    conditions = ["l.invoice_month = %s", *_tenant_scope(pos, "l.tenant_id", "l.meter", params)]
    return conn.execute(
        "select l.tenant_id, l.line_no, l.line_type, l.meter, l.description, l.price_book, l.price_valid_from,"
        " l.tier, l.quantity, l.unit, l.unit_price, l.amount, l.currency"
        " from marts.fct_invoice_lines as l join marts.dim_tenants as d on d.tenant_id = l.tenant_id"
        f" where {' and '.join(conditions)} order by l.tenant_id, l.line_no", params).fetchall()


def cost_allocations(conn: psycopg.Connection, pos: Position) -> list[tuple]:
    """The allocations behind the cost figure: pool, component and cost type, over the position's
    tenants, meter and days (``int_cost_allocations_daily``, the cost engine's own rows)."""
    params: list = [pos.month, next_month(pos.month)]
    conditions = ["a.cost_day >= %s", "a.cost_day < %s", "a.tenant_id is not null",
                  *_tenant_scope(pos, "a.tenant_id", "coalesce(a.driver_meter, '(shared)')", params)]
    if "day" in pos.filter_map:
        conditions.append("a.cost_day = %s")
        params.append(dt.date.fromisoformat(pos.filter_map["day"]))
    return conn.execute(
        "select a.pool, a.component, a.cost_type, coalesce(a.driver_meter, '(shared)'), sum(a.driver_quantity),"
        " sum(a.hour_count), sum(a.allocated_cost), min(a.currency)"
        " from intermediate.int_cost_allocations_daily as a join marts.dim_tenants as d on d.tenant_id = a.tenant_id"
        f" where {' and '.join(conditions)} group by 1, 2, 3, 4 order by 7 desc", params).fetchall()


# ---- other pages ----

def months(conn: psycopg.Connection) -> list[dt.date]:
    """Months with a ledger in the viewer's scope, newest first: one index probe per month (a
    loose index scan on the day), not a scan of the ledger."""
    return [r[0] for r in conn.execute(
        "with recursive found (month) as ("
        "  select date_trunc('month', min(ledger_day))::date from marts.int_ledger_daily"
        "  union all"
        "  select (select date_trunc('month', min(l.ledger_day))::date from marts.int_ledger_daily as l"
        "          where l.ledger_day >= (found.month + interval '1 month')::date)"
        "  from found where found.month is not null)"
        " select month from found where month is not null order by 1 desc")]


def label_keys(conn: psycopg.Connection) -> tuple[str, ...]:
    return tuple(r[0] for r in conn.execute("select label_key from staging.stg_config__label_keys order by 1"))


def monthly_ledgers(conn: psycopg.Connection) -> list[tuple[dt.date, Decimal, Decimal]]:
    return conn.execute("select ledger_month, sum(cost_to_serve), sum(billed_amount) from marts.int_ledger_daily"
                        " group by 1 order by 1").fetchall()


def usage_through(conn: psycopg.Connection) -> dt.datetime | None:
    row = conn.execute("select max(usage_through) from marts.fct_trends_monthly").fetchone()
    return row[0] if row else None


def forecasts(conn: psycopg.Connection, month: dt.date) -> list[tuple]:
    """The latest forecast of each tenant and meter of ``month``: (ledger, p10, p50, p90, actual)
    summed over the viewer's scope per ledger. The p50s add up to the scope's; the summed p10 and
    p90 bound it more widely than the scope's own band would (the tenants' errors partly cancel)."""
    return conn.execute(
        "with latest as (select distinct on (tenant_id, meter, ledger) * from insights.forecasts"
        "  where forecast_month = %s and status = 'ok' order by tenant_id, meter, ledger, as_of desc)"
        " select ledger, sum(amount_p10), sum(amount_p50), sum(amount_p90), sum(actual_to_date), max(as_of)"
        " from latest group by ledger order by ledger", (month,)).fetchall()


def budget_status(conn: psycopg.Connection, month: dt.date) -> list[tuple]:
    return conn.execute(
        "select budget_id, scope_level, scope_key, ledger, budget_amount, actual, used_percent, elapsed_percent,"
        " forecast_p50, state, forecast_state, breach_date, currency, note from insights.budget_status"
        " where month = %s order by budget_id", (month,)).fetchall()


def scope_budgets(conn: psycopg.Connection) -> set[str]:
    """The budgets whose scope is exactly the viewer's (drawn against the viewer's forecast)."""
    return {r[0] for r in conn.execute("select budget_id from access.my_scope_budgets")}


def budget_alerts(conn: psycopg.Connection, month: dt.date) -> list[tuple]:
    return conn.execute(
        "select fired_at, budget_id, threshold, threshold_kind, actual, used_percent, line from insights.budget_alerts"
        " where month = %s order by fired_at desc", (month,)).fetchall()


def anomalies(conn: psycopg.Connection, status: str | None = None) -> list[tuple]:
    return conn.execute(
        "select anomaly_id, tenant_id, meter, ledger, source, direction, first_day, last_day, expected, actual,"
        " volume, rate, mix, largest_effect, status, sentence, ack_kind, ack_by, ack_reason, currency"
        " from insights.anomalies where (%s::text is null or status = %s) order by first_day desc, anomaly_id desc",
        (status, status)).fetchall()


def anomaly(conn: psycopg.Connection, anomaly_id: int) -> tuple | None:
    return conn.execute(
        "select anomaly_id, tenant_id, meter, ledger, source, direction, first_day, last_day, expected, actual,"
        " volume, rate, mix, largest_effect, status, sentence, ack_kind, ack_by, ack_reason, currency, contributors,"
        " price_versions, may_be_missing_data, z from insights.anomalies where anomaly_id = %s",
        (anomaly_id,)).fetchone()


def acknowledge(conn: psycopg.Connection, anomaly_id: int, kind: str, reason: str) -> bool:
    """Acknowledge as the viewer, in the viewer's name (the database checks both)."""
    return conn.execute(
        "update insights.anomalies set status = 'acknowledged', ack_kind = %s, ack_by = (select access.viewer_name()),"
        " ack_reason = %s, ack_at = now() where anomaly_id = %s and status <> 'resolved' returning anomaly_id",
        (kind, reason, anomaly_id)).fetchone() is not None


def recommendations(conn: psycopg.Connection, period: dt.date | None = None) -> list[tuple]:
    return conn.execute(
        "select recommendation_id, invoice_month, tenant_id, kind, target, title, evidence, confidence, saving,"
        " currency, status, status_by, status_reason, change from marts.fct_recommendations"
        " where (%s::date is null or invoice_month = %s) order by saving desc, recommendation_id",
        (period, period)).fetchall()


def decide(conn: psycopg.Connection, recommendation_id: int, status: str, reason: str) -> bool:
    return conn.execute(
        "update insights.recommendations set status = %s, status_by = (select access.viewer_name()),"
        " status_reason = %s, status_at = now() where recommendation_id = %s and current returning 1",
        (status, reason, recommendation_id)).fetchone() is not None


def sees_all(conn: psycopg.Connection) -> bool:
    return conn.execute("select access.sees_all()").fetchone()[0]


def in_scope(conn: psycopg.Connection, tenant_id: str) -> bool:
    """Whether the viewer may see ``tenant_id`` (asked of the database, as the viewer)."""
    return conn.execute("select exists (select 1 from access.my_tenants where tenant_id = %s)",
                        (tenant_id,)).fetchone()[0]


def invoices(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "select i.document_id, i.document_type, i.invoice_number, i.tenant_id, i.period_start, i.status, i.total,"
        " i.currency, i.issue_date, i.corrects, i.pdf_uri, i.pdf_sha256,"
        " exists (select 1 from pipeline.invoices as n where n.corrects = i.invoice_number) as corrected"
        " from pipeline.invoices as i order by i.period_start desc, i.tenant_id, i.document_id").fetchall()


def invoice(conn: psycopg.Connection, document_id: int) -> tuple | None:
    return conn.execute("select document_id, tenant_id, invoice_number, pdf_uri, pdf_sha256, status"
                        " from pipeline.invoices where document_id = %s", (document_id,)).fetchone()


def pipeline_status(conn: psycopg.Connection):
    """``chargeback status``'s figures (:func:`chargeback.insights.status.collect`), read as the viewer."""
    from chargeback.insights import status

    return status.collect(conn)


def failures(conn: psycopg.Connection, limit: int = 25) -> list[tuple]:
    """The latest task and DAG failures, refusals and rejected files the pipeline recorded."""
    return conn.execute(
        "select occurred_at, kind, severity, dag_id, task_id, run_id, subject, reason, action from pipeline.events"
        " where kind in ('task_failure', 'dag_failure', 'refusal', 'rejected_file')"
        " order by occurred_at desc limit %s", (limit,)).fetchall()


def transform_runs(conn: psycopg.Connection, limit: int = 15) -> list[tuple]:
    return conn.execute(
        "select transform_id, started_at, finished_at, status, selection, window_start, window_end,"
        " array_to_string(failures, '; '), invoked_by from pipeline.transform_runs"
        " order by transform_id desc limit %s", (limit,)).fetchall()


def load_runs(conn: psycopg.Connection, limit: int = 15) -> list[tuple]:
    return conn.execute(
        "select load_id, source, window_start, window_end, status, rows_loaded, rows_quarantined, finished_at"
        " from pipeline.load_runs order by load_id desc limit %s", (limit,)).fetchall()


def validations(conn: psycopg.Connection, limit: int = 20) -> list[tuple]:
    return conn.execute(
        "select validated_at, suite, table_name, success, evaluated_expectations, failed_expectations, summary,"
        " data_docs_url from pipeline.validations order by validation_id desc limit %s", (limit,)).fetchall()


def quarantine(conn: psycopg.Connection) -> list[tuple]:
    """Open quarantined rows by reason and field."""
    return conn.execute(
        "select field, reason, count(*), count(distinct source_file), min(landed_hour), max(landed_hour)"
        " from raw.usage_quarantine where status = 'open' group by 1, 2 order by 3 desc").fetchall()
