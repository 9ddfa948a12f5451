"""The daily ledger and the trend marts against real PostgreSQL and real dbt, to the cent.

A simulated September 2026 (complete) and the first five days of October (a month in
progress: usage through 2026-10-06 00:00 UTC), inserted straight into raw.usage_snapshots:
t001, t002 and t007 use every meter, with a weekly pattern (day of month mod 7); t008 uses
nothing but owes its 20,000.00 commitment (config/tenants.yml). Prices and pools are the
shipped configuration. One full build, then one hourly build adding the hour
2026-10-06 00:00: each runs the dbt tests that prove the daily ledger and the trends add up
to the ledger marts; here the same sums are checked again from Python, with Decimals.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal

import pytest

from chargeback.billing import summary
from chargeback.engine import transform
from chargeback.platform import access, freshness, warehouse
from conftest import database_of_its_own

pytestmark = pytest.mark.warehouse

D = Decimal
SEPTEMBER, OCTOBER = dt.date(2026, 9, 1), dt.date(2026, 10, 1)
START = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
THROUGH = dt.datetime(2026, 10, 6, tzinfo=dt.UTC)
USING = {"t001": 1, "t002": 3, "t007": 2}  # tenant -> size
METERS = [("ingested_gb", "GB", "counter", 2), ("stored_gb", "GB", "gauge", 500), ("scanned_gb", "GB", "counter", 6),
          ("query_cpu_seconds", "s", "counter", 120), ("alerts_fired", "alerts", "counter", 1)]
ORG_LEVELS = ("platform", "organisation", "business_unit", "team", "tenant")

_INSERT = """
insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at, kind,
                                 source_file, source_line, load_id)
select 'trends/' || t.tenant_id || '/' || m.meter || '/' || to_char(h, 'YYYYMMDDHH24'), t.tenant_id, m.meter,
       m.base * t.size::numeric * (10 + extract(day from h at time zone 'UTC')::integer %% 7) / 10,
       m.unit, h, h + interval '59 minutes', m.kind, 'test_trends.py', 1, 1
from jsonb_each_text(%(tenants)s::jsonb) as t(tenant_id, size)
cross join jsonb_to_recordset(%(meters)s::jsonb) as m(meter text, unit text, kind text, base numeric)
cross join generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 hour', interval '1 hour') as h
"""


def _insert(start: dt.datetime, end: dt.datetime) -> None:
    import json

    meters = json.dumps([{"meter": m, "unit": u, "kind": k, "base": b} for m, u, k, b in METERS])
    with warehouse.connect() as conn:
        conn.execute(_INSERT, {"tenants": json.dumps(USING), "meters": meters, "start": start, "end": end})


def query(sql: str, *params) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture(scope="module", autouse=True)
def trends_database(test_warehouse):
    with database_of_its_own("trends") as name:
        _insert(START, THROUGH)
        transform.build()
        yield name


@pytest.fixture(scope="module")
def before_the_hourly_run(trends_database) -> dict:
    """What the marts said before the hourly run (the tests that read them run first)."""
    return {
        "daily": query("select trend_day, scope_level, scope_key, meter, cost_to_serve, billed_amount"
                       " from marts.fct_trends_daily order by 1, 2, 3, 4"),
    }


@pytest.fixture(scope="module")
def hourly_run(before_the_hourly_run) -> dict:
    """The hour 2026-10-06 00:00 arrives and is built through a one-hour window, as usage_hourly does."""
    hour = THROUGH
    _insert(hour, hour + dt.timedelta(hours=1))
    transform.build(hour, hour + dt.timedelta(hours=1))
    return before_the_hourly_run


def _by(rows, key=lambda r: r[:-1]):
    out: dict = defaultdict(D)
    for row in rows:
        out[key(row)] += row[-1]
    return dict(out)


def largest_remainder(amount: Decimal, weights: list[Decimal]) -> list[Decimal]:
    """The rule, written again independently: floors of the exact shares in cents, then one cent
    each to the largest remainders, ties to the earlier row."""
    cents, total = int(amount * 100), sum(weights)
    floors = [int(cents * w // total) for w in weights]
    remainders = [cents * w - f * total for w, f in zip(weights, floors, strict=True)]
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[: cents - sum(floors)]:
        floors[i] += 1
    return [D(int(f)) / 100 for f in floors]


def test_the_daily_ledger_adds_up_to_the_monthly_marts_per_tenant_and_meter():
    ledger_cost = _by(query("select ledger_month, tenant_id, cost_to_serve from marts.int_ledger_daily"))
    ledger_billed = _by(query("select ledger_month, tenant_id, billed_amount from marts.int_ledger_daily"))
    monthly_cost = _by(query("select invoice_month, tenant_id, cost_to_serve from marts.fct_ledger_monthly"
                             " where tenant_id is not null"))
    invoices = {(m, t): total for m, t, total in query(
        "select invoice_month, tenant_id, total from marts.fct_invoices")}
    assert ledger_cost == monthly_cost
    # tenants with cost but no invoice (t003, t004: fixed shares of a pool) are billed 0.00 a day
    assert {k: v for k, v in ledger_billed.items() if k in invoices or v} == invoices
    assert {t for _, t in invoices} == {*USING, "t008"}
    # per meter: billed to the ledger item, '(contract)' = 'contract'
    per_meter = _by(query("select ledger_month, tenant_id, meter, billed_amount from marts.int_ledger_daily"))
    items = _by(query("select invoice_month, tenant_id, case when ledger_item = 'contract' then '(contract)'"
                      " else ledger_item end, billed from marts.fct_ledger_monthly where tenant_id is not null"))
    assert {k: v for k, v in per_meter.items() if v} == {k: v for k, v in items.items() if v}


def test_a_meters_billed_amount_follows_its_daily_usage_by_largest_remainder():
    (amount,) = query("select sum(amount) from marts.fct_invoice_lines where invoice_month = %s"
                      " and tenant_id = 't002' and meter = 'ingested_gb'", SEPTEMBER)[0]
    days = query("select usage_day, quantity from intermediate.int_usage_daily where tenant_id = 't002'"
                 " and meter = 'ingested_gb' and usage_day < %s order by usage_day", OCTOBER)
    billed = query("select ledger_day, billed_amount from marts.int_ledger_daily where tenant_id = 't002'"
                   " and meter = 'ingested_gb' and ledger_month = %s order by ledger_day", SEPTEMBER)
    assert len(days) == 30
    assert amount > 0
    assert [b for _, b in billed] == largest_remainder(amount, [q for _, q in days])
    assert [d for d, _ in billed] == [d for d, _ in days]


def test_a_tenant_without_usage_spreads_its_commitment_evenly_over_the_months_days():
    rows = query("select ledger_day, meter, usage_quantity, cost_to_serve, billed_amount from marts.int_ledger_daily"
                 " where tenant_id = 't008' and ledger_month = %s and billed_amount != 0 order by ledger_day",
                 SEPTEMBER)
    # 20,000.00 over 30 days: 666.66 each and 20 cents left, one each to the first 20 days
    assert [r[1] for r in rows] == ["(contract)"] * 30
    assert [r[4] for r in rows] == [D("666.67")] * 20 + [D("666.66")] * 10
    assert sum(r[4] for r in rows) == D("20000.00")
    assert {r[2] for r in rows} == {None}


def test_every_org_level_adds_up_to_the_ledger_rollup_of_a_complete_month():
    platform = query("select cost_to_serve, billed from marts.fct_ledger_rollup_monthly"
                     " where invoice_month = %s and level = 'platform'", SEPTEMBER)[0]
    levels = query("select scope_level, sum(cost_to_serve), sum(billed_amount), count(*),"
                   " bool_and(is_complete), min(usage_through) from marts.fct_trends_monthly"
                   " where trend_month = %s and meter = '(all)' group by scope_level", SEPTEMBER)
    assert {level for level, *_ in levels} >= set(ORG_LEVELS)
    for level, cost, billed, _scopes, complete, through in levels:
        if level in ORG_LEVELS:
            assert (cost, billed) == platform, level
            assert complete
            assert through == dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    tenants = {t: (c, b) for t, c, b in query(
        "select tenant_id, cost_to_serve, billed from marts.fct_ledger_rollup_monthly"
        " where invoice_month = %s and level = 'tenant'", SEPTEMBER)}
    trend_tenants = {k: (c, b) for k, c, b in query(
        "select scope_key, cost_to_serve, billed_amount from marts.fct_trends_monthly"
        " where trend_month = %s and scope_level = 'tenant' and meter = '(all)'", SEPTEMBER)}
    assert trend_tenants == tenants
    assert "(platform)" in trend_tenants  # cost the platform keeps, as in the rollup


def test_the_meters_of_a_scope_add_up_to_its_all_row_and_days_to_months():
    meters = _by(query("select trend_month, scope_level, scope_key, cost_to_serve from marts.fct_trends_monthly"
                       " where meter != '(all)'"))
    alls = {(m, lv, k): c for m, lv, k, c in query(
        "select trend_month, scope_level, scope_key, cost_to_serve from marts.fct_trends_monthly"
        " where meter = '(all)'")}
    assert meters == alls
    days = _by(query("select date_trunc('month', trend_day)::date, scope_level, scope_key, meter, billed_amount"
                     " from marts.fct_trends_daily"))
    months = {(m, lv, k, me): b for m, lv, k, me, b in query(
        "select trend_month, scope_level, scope_key, meter, billed_amount from marts.fct_trends_monthly")}
    assert days == months


def test_unit_costs_are_the_meters_money_over_its_usage():
    rows = {m: (u, c, b, cpu, bpu, cgb) for m, u, c, b, cpu, bpu, cgb in query(
        "select meter, usage_quantity, cost_to_serve, billed_amount, cost_per_unit, billed_per_unit,"
        " cost_per_gb_ingested from marts.fct_trends_monthly"
        " where trend_month = %s and scope_level = 'tenant' and scope_key = 't001'", SEPTEMBER)}
    six = D("0.000001")
    for meter in ("ingested_gb", "stored_gb", "query_cpu_seconds"):
        usage, cost, billed, cost_per_unit, billed_per_unit, _ = rows[meter]
        assert cost_per_unit == (cost / usage).quantize(six, ROUND_HALF_UP)
        assert billed_per_unit == (billed / usage).quantize(six, ROUND_HALF_UP)
    # stored GB in GB-months: the invoice's quantity (up to the 12-decimal rounding of each day)
    (invoiced,) = query("select sum(quantity) from marts.fct_invoice_lines where invoice_month = %s"
                        " and tenant_id = 't001' and meter = 'stored_gb'", SEPTEMBER)[0]
    assert abs(rows["stored_gb"][0] - invoiced) < D("1e-9")
    gb_hours = sum(D(500 * 24 * (10 + d % 7)) / 10 for d in range(1, 31))  # t001: size 1
    assert abs(rows["stored_gb"][0] - gb_hours / 720) < D("1e-9")
    # all-in: the tenant's whole cost to serve per GB ingested
    _, cost, _, _, _, per_gb = rows["(all)"]
    assert per_gb == (cost / rows["ingested_gb"][0]).quantize(six, ROUND_HALF_UP)


def test_a_month_in_progress_is_month_to_date_with_its_freshness_on_every_row():
    rows = query("select distinct usage_through, is_complete, days_elapsed from marts.fct_trends_monthly"
                 " where trend_month = %s", OCTOBER)
    assert rows == [(THROUGH, False, 5)]
    assert query("select max(trend_day) from marts.fct_trends_daily") == [(dt.date(2026, 10, 5),)]
    # billed: the drafts so far, to the cent; cost: the daily ledger over the days known
    billed = dict(query("select scope_key, billed_amount from marts.fct_trends_monthly"
                        " where trend_month = %s and scope_level = 'tenant' and meter = '(all)'", OCTOBER))
    invoices = dict(query("select tenant_id, total from marts.fct_invoices where invoice_month = %s", OCTOBER))
    assert {k: v for k, v in billed.items() if k in invoices or (v and k != "(platform)")} == invoices
    assert invoices["t008"] == D("20000.00")  # a draft owes the commitment in full
    cost = dict(query("select scope_key, cost_to_serve from marts.fct_trends_monthly"
                      " where trend_month = %s and scope_level = 'tenant' and meter = '(all)'"
                      " and scope_key != '(platform)'", OCTOBER))
    assert cost == _by(query("select tenant_id, cost_to_serve from marts.int_ledger_daily"
                             " where ledger_day between '2026-10-01' and '2026-10-05'"), key=lambda r: r[0])
    with warehouse.connect() as conn:
        assert freshness.usage_through(conn) == THROUGH


def test_month_over_month_compares_the_same_days_and_week_over_week_the_same_weekday():
    daily = {(d, m): (c, b) for d, m, c, b in query(
        "select trend_day, meter, cost_to_serve, billed_amount from marts.fct_trends_daily"
        " where scope_level = 'platform'")}
    (cost, delta, percent), = query(
        "select cost_to_serve, cost_mom_delta, cost_mom_percent from marts.fct_trends_monthly"
        " where trend_month = %s and scope_level = 'platform' and meter = '(all)'", OCTOBER)
    september_5_days = sum(daily[(dt.date(2026, 9, d), "(all)")][0] for d in range(1, 6))
    assert delta == cost - september_5_days
    assert percent == (delta / september_5_days * 100).quantize(D("0.01"), ROUND_HALF_UP)
    (wow, wow_billed), = query(
        "select cost_wow_delta, billed_wow_delta from marts.fct_trends_daily where trend_day = '2026-10-03'"
        " and scope_level = 'platform' and meter = 'ingested_gb'")
    now, week_ago = daily[(dt.date(2026, 10, 3), "ingested_gb")], daily[(dt.date(2026, 9, 26), "ingested_gb")]
    assert (wow, wow_billed) == (now[0] - week_ago[0], now[1] - week_ago[1])
    assert query("select count(*) from marts.fct_trends_daily where trend_day < '2026-09-08'"
                 " and cost_wow_delta is not null") == [(0,)]
    (september_mom,) = query("select count(*) from marts.fct_trends_monthly where trend_month = %s"
                             " and cost_mom_delta is not null", SEPTEMBER)[0]
    assert september_mom == 0  # no August


def test_a_bi_login_of_the_whole_platform_reads_the_trend_marts():
    access.grant_bi("trends_reader", [access.Scope("all")])
    with warehouse.connect(admin=True) as conn:
        conn.execute("set role trends_reader")
        for mart in ("fct_trends_daily", "fct_trends_monthly", "int_ledger_daily"):
            assert conn.execute(f"select count(*) from marts.{mart}").fetchone()[0] > 0


def test_an_hourly_run_rebuilds_the_month_to_date(hourly_run):
    later = THROUGH + dt.timedelta(hours=1)
    assert query("select distinct usage_through, is_complete from marts.fct_trends_monthly"
                 " where trend_month = %s", OCTOBER) == [(later, False)]
    assert query("select usage_through, is_complete from marts.fct_trends_daily where trend_day = '2026-10-06'"
                 " and scope_level = 'platform' and meter = '(all)'") == [(later, False)]
    # September is outside the window: untouched, row for row
    september = [r for r in hourly_run["daily"] if r[0] < OCTOBER]
    assert query("select trend_day, scope_level, scope_key, meter, cost_to_serve, billed_amount"
                 " from marts.fct_trends_daily where trend_day < %s order by 1, 2, 3, 4", OCTOBER) == september
    # October's billed split again over one more hour of usage: still the drafts' totals
    billed = query("select sum(billed_amount) from marts.fct_trends_monthly where trend_month = %s"
                   " and scope_level = 'tenant' and meter = '(all)'", OCTOBER)[0][0]
    assert billed == query("select sum(total) from marts.fct_invoices where invoice_month = %s", OCTOBER)[0][0]
    # the cost of days before the window is what it was
    before = {r[1:4]: r[4] for r in hourly_run["daily"] if r[0] == dt.date(2026, 10, 5)}
    after = {(lv, k, m): c for lv, k, m, c in query(
        "select scope_level, scope_key, meter, cost_to_serve from marts.fct_trends_daily"
        " where trend_day = '2026-10-05'")}
    assert after == before


def test_month_over_month_of_a_partial_day_takes_the_same_share_of_that_day_a_month_before(hourly_run):
    # usage through 6 October 01:00: five days and one hour, against five days and 1/24 of 6 September
    (cost, delta, days), = query(
        "select cost_to_serve, cost_mom_delta, days_elapsed from marts.fct_trends_monthly"
        " where trend_month = %s and scope_level = 'platform' and meter = '(all)'", OCTOBER)
    daily = dict(query("select trend_day, cost_to_serve from marts.fct_trends_daily"
                       " where scope_level = 'platform' and meter = '(all)' and trend_day < %s", OCTOBER))
    previous = sum(daily[dt.date(2026, 9, d)] for d in range(1, 6)) + daily[dt.date(2026, 9, 6)] / 24
    assert days == 6
    assert delta == (cost - previous).quantize(D("0.01"), ROUND_HALF_UP)


def test_the_finance_summary_says_how_fresh_it_is(hourly_run):
    october = summary.month_summary("2026-10")
    september = summary.month_summary("2026-09")
    assert october.usage_through == THROUGH + dt.timedelta(hours=1)
    assert "usage through 2026-10-06 01:00 UTC" in summary.render(october).splitlines()[1]
    assert summary.render(september).splitlines()[1].strip() == "usage through 2026-10-01 00:00 UTC"
