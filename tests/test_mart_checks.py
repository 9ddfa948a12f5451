"""Mart checks after dbt: Great Expectations reconciles the cost and invoice marts to the cent.

Two kinds of test. Most build the marts by hand from the column contract in
``docs/CONTRACTS.md``, in a database of their own (so they never collide with the marts dbt
builds in the session's database), and break them one way at a time. The last runs the real
dbt models (``chargeback.engine.transform.build``) and corrupts their output.
Run with ``CHARGEBACK_TEST_DATABASE=cb_test_gx`` to keep out of colleagues' databases.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from chargeback.engine import checks, configuration
from chargeback.platform import warehouse
from chargeback.platform.periods import parse_instant as utc
from chargeback.platform.settings import get_settings

pytestmark = pytest.mark.warehouse

START = dt.datetime(2026, 10, 1, 13, tzinfo=dt.UTC)
END = START + dt.timedelta(hours=1)

# Marts with the contract's columns: hours 12:00-15:00 of 2026-10-01, tenants t001-t003, four
# pools of their own (not the shipped configuration's). Allocation splits each pool-hour 1:1:1
# with largest-remainder rounding; the network pool's 12:00 hour has no driver usage, so it is
# one 'unallocated' row with tenant null, as the contract says.
CONTRACT_MARTS = """
drop schema if exists marts cascade;
create schema marts;
create table marts.fct_cost_pools_hourly as
select p.pool, h as hour_start, round(p.monthly_cost / 744, 2)::numeric(18, 2) as pool_cost,
       round(p.monthly_cost / 744, 2)::numeric(18, 2) as used_cost, 0::numeric(18, 2) as idle_cost,
       null::text as capacity_meter, null::numeric(38, 12) as capacity, null::numeric(38, 12) as capacity_used,
       null::numeric(38, 12) as utilisation, 'USD' as currency, date '2020-01-01' as rule_valid_from,
       p.monthly_cost, 744 as hours_in_month, 'platform' as idle_policy, p.driver_meter
from (values ('compute', 18000.00, 'query_cpu_seconds'), ('storage', 9500.00, 'stored_gb'),
             ('network', 3200.00, 'ingested_gb'), ('platform_team', 24000.00, 'ingested_gb'))
    as p (pool, monthly_cost, driver_meter)
cross join generate_series(timestamptz '2026-10-01T12:00Z', timestamptz '2026-10-01T15:00Z', interval '1 hour') as h;

create table marts.fct_cost_allocations_hourly as
with shares as (
    select p.*, t.tenant_id, 1.0 as driver_quantity, 3.0 as driver_total, 1.0 / 3 as ratio,
           floor(p.pool_cost * 100 / 3) / 100 as floor_cost,
           row_number() over (partition by p.pool, p.hour_start order by t.tenant_id) as n
    from marts.fct_cost_pools_hourly as p
    cross join (values ('t001'), ('t002'), ('t003')) as t (tenant_id)
    where not (p.pool = 'network' and p.hour_start = '2026-10-01T12:00Z')
)
select hour_start, pool, rule_valid_from, 1 as part, 'proportional' as method, driver_meter as component,
       'allocated' as cost_type, tenant_id, driver_meter, driver_quantity, driver_total, ratio,
       pool_cost / 3 as unit_cost,
       (floor_cost + case when n <= round((pool_cost - 3 * floor_cost) * 100) then 0.01 else 0 end)::numeric(18, 2)
           as allocated_cost,
       currency
from shares
union all
select hour_start, pool, rule_valid_from, 1, 'proportional', driver_meter, 'unallocated', null, driver_meter, 0, 0, 1,
       null, pool_cost, currency
from marts.fct_cost_pools_hourly
where pool = 'network' and hour_start = '2026-10-01T12:00Z';
alter table marts.fct_cost_pools_hourly drop column driver_meter;

create table marts.fct_cost_allocations_monthly as
select date '2026-10-01' as cost_month, tenant_id, pool, sum(allocated_cost)::numeric(18, 2) as allocated_cost, currency
from marts.fct_cost_allocations_hourly
group by tenant_id, pool, currency;

create table marts.fct_invoice_lines as
select date '2026-10-01' as invoice_month, t.tenant_id,
       (row_number() over (partition by t.tenant_id order by m.meter))::integer as line_no, 'usage' as line_type,
       m.meter, m.description, 'enterprise' as price_book, date '2020-01-01' as price_valid_from,
       'per_unit' as pricing_model, 1 as tier, 0::numeric(38, 12) as tier_lower, null::numeric(38, 12) as tier_upper,
       120.5::numeric(38, 12) as quantity, m.unit, 0.42::numeric(18, 6) as unit_price,
       round(120.5 * 0.42, 2)::numeric(18, 2) as list_amount, 0::numeric(18, 2) as discount_amount,
       round(120.5 * 0.42, 2)::numeric(18, 2) as amount, 'USD' as currency
from (values ('t001'), ('t002'), ('t003')) as t (tenant_id)
cross join config.meters as m;

create table marts.fct_invoices as
select invoice_month, tenant_id, sum(list_amount)::numeric(18, 2) as list_subtotal,
       sum(discount_amount)::numeric(18, 2) as discount_total, sum(amount)::numeric(18, 2) as usage_total,
       0::numeric(18, 2) as commitment_true_up, 0::numeric(18, 2) as overage_uplift,
       sum(amount)::numeric(18, 2) as total, 'USD' as currency, count(*)::integer as line_count
from marts.fct_invoice_lines
group by invoice_month, tenant_id;
"""


@pytest.fixture(scope="module")
def mart_settings(test_warehouse):
    """A database of this module's own, with the configuration loaded."""
    base = get_settings()
    settings = dataclasses.replace(base, database=f"{base.database or 'chargeback'}_marts")
    warehouse.drop_database(settings.database, settings)
    configuration.load(settings=settings)
    yield settings
    warehouse.drop_database(settings.database, settings)


@pytest.fixture
def marts(mart_settings):
    """Fresh contract-shaped marts for each test; ``marts(sql)`` breaks them."""
    with warehouse.connect(mart_settings) as conn:
        conn.execute(CONTRACT_MARTS)

    def run(sql: str) -> None:
        with warehouse.connect(mart_settings) as conn:
            conn.execute(sql)

    return run


CENT_ASTRAY = ("update marts.fct_cost_allocations_hourly set allocated_cost = allocated_cost + 0.01"
               " where pool = 'compute' and hour_start = '2026-10-01T13:00Z' and tenant_id = 't002'")
"""One cent too many for t002 in compute's 13:00 hour (24.19 allocated as 24.20)."""


def failure(mart_settings, start=START, end=END) -> str:
    with pytest.raises(checks.ChecksFailed) as info:
        checks.check_marts(start, end, settings=mart_settings)
    return str(info.value)


def test_reconciled_marts_pass_and_every_suite_run_is_recorded(marts, mart_settings):
    result = checks.check_marts(START, END, settings=mart_settings)

    assert result.success
    assert [r.table_name for r in result.results] == [
        "marts.fct_cost_pools_hourly",
        "marts.fct_cost_allocations_hourly",
        "marts.fct_invoice_lines",
        "marts.fct_invoices",
    ]
    assert [r.row_count for r in result.results] == [4, 12, 15, 3]  # the window's hour; the month's invoices
    with warehouse.connect(mart_settings) as conn:
        rows = conn.execute(
            "select table_name, suite, success, window_start, window_end, failed_expectations, result->>'success'"
            " from pipeline.validations where validation_id = any(%s) order by validation_id",
            ([r.validation_id for r in result.results],),
        ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(r.table_name, r.suite) for r in result.results]
    assert all(r[2] is True and (r[3], r[4]) == (START, END) and r[5] == 0 and r[6] == "true" for r in rows)


def test_without_a_window_every_row_is_checked(marts, mart_settings):
    result = checks.check_marts(settings=mart_settings)
    assert result.success
    assert [r.row_count for r in result.results] == [16, 46, 15, 3]
    assert all(r.window_start is None for r in result.results)


def test_allocation_not_summing_to_pool_cost_fails_naming_pool_and_hour(marts, mart_settings):
    marts(CENT_ASTRAY)

    message = failure(mart_settings)
    assert message.splitlines()[0] == (
        "mart checks failed for marts.fct_cost_allocations_hourly (2026-10-01T13:00Z–14:00Z): "
        "unexpected_rows_expectation(sum of allocated_cost per pool and hour = pool_cost in "
        "marts.fct_cost_pools_hourly): 1 row(s), e.g. pool=compute hour_start=2026-10-01T13:00Z "
        "pool_cost=24.19 allocated_cost=24.20 difference=0.01"
    )


def test_pool_hour_without_allocation_rows_fails(marts, mart_settings):
    marts("delete from marts.fct_cost_allocations_hourly where pool = 'storage' and hour_start = '2026-10-01T13:00Z'")

    message = failure(mart_settings)
    assert message.splitlines()[0] == (
        "mart checks failed for marts.fct_cost_pools_hourly (2026-10-01T13:00Z–14:00Z): "
        "unexpected_rows_expectation(every pool and hour has allocation rows in "
        "marts.fct_cost_allocations_hourly): 1 row(s), e.g. pool=storage hour_start=2026-10-01T13:00Z "
        "pool_cost=12.77"
    )


def test_pool_cost_not_split_into_used_and_idle_fails_naming_pool_and_hour(marts, mart_settings):
    marts(
        "update marts.fct_cost_pools_hourly set idle_cost = 0.01"
        " where pool = 'storage' and hour_start = '2026-10-01T13:00Z'"
    )

    message = failure(mart_settings)
    assert message.splitlines()[0] == (
        "mart checks failed for marts.fct_cost_pools_hourly (2026-10-01T13:00Z–14:00Z): "
        "unexpected_rows_expectation(used_cost + idle_cost = pool_cost, neither negative): 1 row(s), "
        "e.g. pool=storage hour_start=2026-10-01T13:00Z pool_cost=12.77 used_cost=12.77 idle_cost=0.01"
    )


def test_negative_invoice_line_fails_naming_tenant_and_month(marts, mart_settings):
    marts(
        "update marts.fct_invoice_lines set list_amount = -1.25, amount = -1.25, quantity = -2"
        " where tenant_id = 't003' and meter = 'stored_gb'"
    )
    marts(
        "update marts.fct_invoices as i set (list_subtotal, usage_total, total) = (select sum(list_amount),"
        " sum(amount), sum(amount) from marts.fct_invoice_lines as l where l.tenant_id = i.tenant_id)"
        " where tenant_id = 't003'"
    )

    message = failure(mart_settings)
    assert message.splitlines()[0] == "mart checks failed for marts.fct_invoice_lines (2026-10-01T13:00Z–14:00Z):"
    assert (
        "expect_column_values_to_be_between(amount >= 0): 1 row(s), "
        "e.g. invoice_month=2026-10-01 tenant_id=t003 line_no=5 meter=stored_gb amount=-1.25"
    ) in message
    assert (
        "expect_column_values_to_be_between(quantity >= 0): 1 row(s), "
        "e.g. invoice_month=2026-10-01 tenant_id=t003 line_no=5 meter=stored_gb quantity=-2"
    ) in message
    assert (
        "expect_column_values_to_be_between(list_amount >= 0): 1 row(s), "
        "e.g. invoice_month=2026-10-01 tenant_id=t003 line_no=5 meter=stored_gb list_amount=-1.25"
    ) in message


def test_line_amount_that_is_not_list_less_discount_fails(marts, mart_settings):
    marts(
        "update marts.fct_invoice_lines set discount_amount = 5.06"
        " where tenant_id = 't001' and meter = 'ingested_gb'"
    )

    message = failure(mart_settings)
    assert message.splitlines()[0] == (
        "mart checks failed for marts.fct_invoice_lines (2026-10-01T13:00Z–14:00Z): "
        "unexpected_rows_expectation(amount = list_amount - discount_amount): 1 row(s), "
        "e.g. invoice_month=2026-10-01 tenant_id=t001 line_no=2 meter=ingested_gb list_amount=50.61"
        " discount_amount=5.06 amount=50.61"
    )


def test_invoice_total_not_matching_its_lines_fails_naming_tenant_and_month(marts, mart_settings):
    marts("update marts.fct_invoices set total = total + 1 where tenant_id = 't002'")

    lines = failure(mart_settings).splitlines()
    assert lines[:3] == [
        "mart checks failed for marts.fct_invoices (2026-10-01T13:00Z–14:00Z):",
        "  unexpected_rows_expectation(total = sum of amount in marts.fct_invoice_lines): 1 row(s), "
        "e.g. invoice_month=2026-10-01 tenant_id=t002 total=254.05 sum_of_lines=253.05 difference=1.00",
        "  unexpected_rows_expectation(total = list_subtotal - discount_total + commitment_true_up"
        " + overage_uplift): 1 row(s), e.g. invoice_month=2026-10-01 tenant_id=t002 total=254.05"
        " list_subtotal=253.05 discount_total=0.00 usage_total=253.05 commitment_true_up=0.00 overage_uplift=0.00",
    ]


def test_several_broken_marts_are_reported_together_each_line_naming_its_table(marts, mart_settings):
    marts("update marts.fct_invoices set total = total + 1 where tenant_id = 't002'")
    marts("update marts.fct_cost_allocations_hourly set allocated_cost = 0 where hour_start = '2026-10-01T13:00Z'")

    lines = failure(mart_settings).splitlines()
    assert lines[0] == (
        "mart checks failed for marts.fct_cost_allocations_hourly, marts.fct_invoices (2026-10-01T13:00Z–14:00Z):"
    )
    assert lines[1] == (
        "  marts.fct_cost_allocations_hourly: unexpected_rows_expectation(sum of allocated_cost per pool and hour"
        " = pool_cost in marts.fct_cost_pools_hourly): 4 row(s), e.g. pool=compute hour_start=2026-10-01T13:00Z"
        " pool_cost=24.19 allocated_cost=0.00 difference=-24.19; pool=network hour_start=2026-10-01T13:00Z"
        " pool_cost=4.30 allocated_cost=0.00 difference=-4.30; pool=platform_team hour_start=2026-10-01T13:00Z"
        " pool_cost=32.26 allocated_cost=0.00 difference=-32.26"
    )
    assert lines[2].startswith("  marts.fct_invoices: unexpected_rows_expectation(total = sum of amount in")


def test_window_limits_the_hourly_marts_to_its_hours(marts, mart_settings):
    marts(
        "update marts.fct_cost_allocations_hourly set allocated_cost = allocated_cost + 0.01"
        " where pool = 'compute' and hour_start = '2026-10-01T15:00Z' and tenant_id = 't001'"
    )

    assert checks.check_marts(START, END, settings=mart_settings).success
    assert "pool=compute hour_start=2026-10-01T15:00Z" in failure(mart_settings, END, END + dt.timedelta(hours=2))


def test_missing_mart_says_dbt_has_not_run(marts, mart_settings):
    marts("drop table marts.fct_invoices")
    with pytest.raises(RuntimeError, match=r"marts\.fct_invoices does not exist \(has `chargeback transform` run\?\)"):
        checks.check_marts(START, END, settings=mart_settings)


# --------------------------------------------------------------------------- real dbt output

MONTH = (dt.datetime(2026, 10, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, tzinfo=dt.UTC))


def reconciliation_failure(mart_settings) -> str:
    with pytest.raises(checks.ChecksFailed) as info:
        checks.reconcile_costs(*MONTH, settings=mart_settings)
    return str(info.value)


def test_month_reconciliation_passes_and_is_recorded(marts, mart_settings):
    result = checks.reconcile_costs(*MONTH, settings=mart_settings)

    assert result.success
    assert result.failures == ()
    with warehouse.connect(mart_settings) as conn:
        row = conn.execute("select suite, table_name, success, window_start, window_end, failed_expectations"
                           " from pipeline.validations where validation_id = %s", (result.validation_id,)).fetchone()
    assert row == ("reconcile_costs", "marts.fct_cost_allocations_hourly", True, *MONTH, 0)


def test_month_reconciliation_names_the_pool_hour_a_cent_went_astray(marts, mart_settings):
    marts(CENT_ASTRAY)

    message = reconciliation_failure(mart_settings)
    assert message.splitlines()[0] == (
        "the cost marts do not reconcile (2026-10-01T00:00Z–2026-11-01T00:00Z): a pool-hour is allocated exactly: "
        "the allocations add up to its cost: 1 failing, e.g. compute 2026-10-01 13:00 expected 24.19, got 24.20"
    )
    with warehouse.connect(mart_settings) as conn:
        assert conn.execute("select success, failed_expectations from pipeline.validations"
                            " order by validation_id desc limit 1").fetchone() == (False, 1)


def test_month_reconciliation_finds_an_unallocated_pool_hour_a_broken_split_and_the_monthly_mart(
        marts, mart_settings):
    marts("delete from marts.fct_cost_allocations_hourly where pool = 'storage' and hour_start = '2026-10-01T13:00Z';"
          "update marts.fct_cost_pools_hourly set idle_cost = 0.01"
          " where pool = 'network' and hour_start = '2026-10-01T14:00Z';"
          "update marts.fct_cost_allocations_monthly set allocated_cost = allocated_cost - 1"
          " where pool = 'platform_team' and tenant_id = 't003'")

    assert reconciliation_failure(mart_settings).splitlines()[1:4] == [
        "  a pool-hour is allocated exactly: the allocations add up to its cost: 1 failing, "
        "e.g. storage 2026-10-01 13:00 expected 12.77, got no allocation rows",
        "  a pool-hour is used + idle cost, neither negative: 1 failing, e.g. network 2026-10-01 14:00 "
        "expected 4.30, got 4.30 + 0.01",
        "  the monthly allocations add up to the pool's cost of the month: 1 failing, "
        "e.g. platform_team 2026-10 expected 129.04, got 128.04",
    ]


DBT_START = dt.datetime(2026, 11, 3, 10, tzinfo=dt.UTC)
DBT_END = DBT_START + dt.timedelta(hours=2)


def test_checks_pass_on_dbt_output_and_name_pool_and_hour_of_a_corrupted_allocation():
    from chargeback.engine import transform

    meters = {
        "ingested_gb": ("GB", "counter"),
        "stored_gb": ("GB", "gauge"),
        "query_cpu_seconds": ("s", "counter"),
        "scanned_gb": ("GB", "counter"),
    }
    rows = [
        (
            f"gx-check-{h}-{tenant}-{meter}",
            tenant,
            meter,
            (i + 1) * 1.25 + h,
            unit,
            DBT_START + dt.timedelta(hours=h),
            DBT_START + dt.timedelta(hours=h, minutes=59),
            kind,
            "landing/usage/gx-check.jsonl",
            i + 1,
        )
        for h in range(2)
        for i, (tenant, (meter, (unit, kind))) in enumerate(
            (t, m) for t in ("t001", "t002", "t003") for m in meters.items()
        )
    ]
    with warehouse.connect() as conn, conn.cursor() as cur:
        cur.executemany(
            "insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at,"
            " kind, source_file, source_line, load_id) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0)",
            rows,
        )
    try:
        transform.build(DBT_START, DBT_END)
        assert checks.check_marts(DBT_START, DBT_END).success

        with warehouse.connect() as conn:
            pool, hour, part, component, tenant = conn.execute(
                "select pool, hour_start, part, component, tenant_id from marts.fct_cost_allocations_hourly"
                " where hour_start >= %s and hour_start < %s and tenant_id is not null"
                " order by pool, hour_start, part, component, tenant_id limit 1",
                (DBT_START, DBT_END),
            ).fetchone()
            conn.execute(
                "update marts.fct_cost_allocations_hourly set allocated_cost = allocated_cost + 0.01"
                " where pool = %s and hour_start = %s and part = %s and component = %s and tenant_id = %s",
                (pool, hour, part, component, tenant),
            )
        with pytest.raises(checks.ChecksFailed) as info:
            checks.check_marts(DBT_START, DBT_END)
        message = str(info.value)
        assert "marts.fct_cost_allocations_hourly" in message
        assert "sum of allocated_cost per pool and hour = pool_cost" in message
        assert f"pool={pool} hour_start={utc(hour):%Y-%m-%dT%H:%MZ}" in message
        assert "difference=0.01" in message
    finally:
        with warehouse.connect() as conn:
            conn.execute("delete from raw.usage_snapshots where snapshot_id like 'gx-check-%'")
        transform.build(DBT_START, DBT_END)  # leave the marts matching raw for the tests after this one
