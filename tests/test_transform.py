"""The transform stage against real PostgreSQL and real dbt, checked to the cent.

Snapshots are inserted straight into raw.usage_snapshots. The module works in a
database of its own (so other modules' rows can't change a total) and shares a few
dbt builds between the tests, since each dbt invocation costs seconds.

The data (October 2026: 744 hours; prices from config/price_books.yml, pools from
config/cost_pools.yml). H = 2026-10-01 13:00 UTC, hour 13 of the month.

    tenant (book)      H: ingested_gb  query_cpu_seconds  stored_gb  scanned_gb   H+1: stored_gb
    t001 (enterprise)       1          100                744        -                 744
    t002 (enterprise)       1          200                -          -                 -
    t007 (standard)         1          400                372        1                 -

Allocation to the cent, method by method, is tested in test_allocation.py on a
configuration of its own; here only what holds for any cost pools: every pool-hour of
the window, and nothing else, is written, and its allocations add up to its cost.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback.engine import transform
from chargeback.platform import warehouse
from conftest import database_of_its_own

pytestmark = pytest.mark.warehouse

H = datetime(2026, 10, 1, 13, tzinfo=UTC)
OCTOBER = datetime(2026, 10, 1).date()
D = Decimal

SNAPSHOTS = [
    # tenant, meter, value, hour, kind
    ("t001", "ingested_gb", "1", H, "counter"),
    ("t002", "ingested_gb", "1", H, "counter"),
    ("t007", "ingested_gb", "1", H, "counter"),
    ("t001", "query_cpu_seconds", "100", H, "counter"),
    ("t002", "query_cpu_seconds", "200", H, "counter"),
    ("t007", "query_cpu_seconds", "400", H, "counter"),
    ("t001", "stored_gb", "744", H, "gauge"),
    ("t007", "stored_gb", "372", H, "gauge"),
    ("t007", "scanned_gb", "1", H, "counter"),
    ("t001", "stored_gb", "744", H + timedelta(hours=1), "gauge"),
]
UNITS = {"ingested_gb": "GB", "stored_gb": "GB", "scanned_gb": "GB", "query_cpu_seconds": "s"}


def query(sql: str, *params) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(sql, params).fetchall()


def execute(sql: str, *params) -> None:
    with warehouse.connect() as conn:
        conn.execute(sql, params)


def allocations(hour: datetime) -> dict[tuple[str, str | None], Decimal]:
    """Cost per pool and tenant (None: idle kept by the platform, or unallocated) in an hour."""
    rows = query(
        "select pool, tenant_id, sum(allocated_cost) from marts.fct_cost_allocations_hourly where hour_start = %s"
        " group by pool, tenant_id",
        hour,
    )
    return {(pool, tenant): cost for pool, tenant, cost in rows}


def invoice_lines() -> dict[tuple[str, int], tuple]:
    """(tenant, line_no) -> (line_type, meter, quantity, unit, unit_price, list_amount, discount, amount)."""
    rows = query(
        "select tenant_id, line_no, line_type, meter, quantity, unit, unit_price, list_amount, discount_amount,"
        " amount from marts.fct_invoice_lines where invoice_month = %s",
        OCTOBER,
    )
    return {(t, n): tuple(line) for t, n, *line in rows}


def invoices() -> dict[str, tuple[Decimal, int]]:
    rows = query("select tenant_id, total, line_count from marts.fct_invoices where invoice_month = %s", OCTOBER)
    return {t: (total, lines) for t, total, lines in rows}


def mart_rows() -> dict[str, list[tuple]]:
    """Every row of the hourly and monthly marts, to compare two builds."""
    tables = [
        "fct_usage_hourly",
        "fct_cost_pools_hourly",
        "fct_cost_allocations_hourly",
        "fct_cost_allocations_monthly",
        "fct_invoice_lines",
        "fct_invoices",
    ]
    return {t: sorted(query(f"select * from marts.{t}"), key=repr) for t in tables}


@pytest.fixture(scope="module", autouse=True)
def transform_database(test_warehouse):
    """A database for this module only, with the shipped configuration."""
    with database_of_its_own("transform") as name:
        rows = [
            (
                f"test/{tenant}/{meter}/{hour:%Y%m%d%H}",
                tenant,
                meter,
                D(value),
                UNITS[meter],
                hour,
                hour + timedelta(minutes=5),
                kind,
                "test_transform.py",
                i + 1,
                1,
            )
            for i, (tenant, meter, value, hour, kind) in enumerate(SNAPSHOTS)
        ]
        with warehouse.connect() as conn, conn.cursor() as cur:
            cur.executemany(
                "insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start,"
                " emitted_at, kind, source_file, source_line, load_id) values (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                rows,
            )
        yield name


@pytest.fixture(scope="module")
def built(transform_database) -> transform.TransformResult:
    """First run ever (tables created) over the two hours H and H+1, unit tests included."""
    return transform.build(H, H + timedelta(hours=2), unit_tests=True)


@pytest.fixture(scope="module")
def rebuilt(built) -> tuple[dict, dict]:
    """The same window built a second time: rows before and after."""
    before = mart_rows()
    transform.build(H, H + timedelta(hours=2))
    return before, mart_rows()


@pytest.fixture(scope="module")
def replayed_without_t002(rebuilt) -> transform.TransformResult:
    """t002's snapshots of hour H withdrawn, then hour H replayed on its own."""
    execute("delete from raw.usage_snapshots where tenant_id = 't002' and hour_start = %s", H)
    return transform.build(H, H + timedelta(hours=1))


@pytest.fixture(scope="module")
def full_build(replayed_without_t002) -> transform.TransformResult:
    """No window: every model rebuilds everything from raw."""
    return transform.build()


def _built_models(manifest: Path) -> int:
    """Every model but the ephemeral intermediates, which are compiled into the models that use them."""
    nodes = json.loads(manifest.read_text())["nodes"].values()
    return sum(1 for n in nodes if n["resource_type"] == "model" and n["config"]["materialized"] != "ephemeral")


def test_build_runs_every_model_data_test_and_unit_test(built, dbt_manifest):
    assert built.count("model") == _built_models(dbt_manifest) >= 25
    assert built.count("unit_test") >= 10
    assert built.count("test") >= 50
    assert {n.status for n in built.nodes} <= {"success", "pass"}
    assert built.window_start == H
    assert built.window_end == H + timedelta(hours=2)


def test_pool_costs_and_allocations_are_written_for_the_window_hours_only(built):
    for table in ("fct_cost_pools_hourly", "fct_cost_allocations_hourly"):
        hours = query(f"select distinct hour_start from marts.{table} order by 1")
        assert [h for (h,) in hours] == [H, H + timedelta(hours=1)]
    pools = {p for (p,) in query("select distinct pool from config.cost_pools")}
    assert {p for (p,) in query("select pool from marts.fct_cost_pools_hourly where hour_start = %s", H)} == pools


def test_allocations_add_up_to_pool_cost_for_every_pool_hour(built):
    mismatches = query(
        "select p.pool, p.hour_start, p.pool_cost, sum(a.allocated_cost)"
        " from marts.fct_cost_pools_hourly p"
        " left join marts.fct_cost_allocations_hourly a using (pool, hour_start)"
        " group by p.pool, p.hour_start, p.pool_cost"
        " having sum(a.allocated_cost) is distinct from p.pool_cost"
    )
    assert mismatches == []


def test_invoice_lines_price_tiers_allowance_retention_and_contract_terms(built):
    """config/price_books.yml and the tenants' terms in config/tenants.yml, October 2026."""
    assert invoice_lines() == {
        # t001, enterprise: 10% discount, 90-day retention. 1 GB of the 5 free.
        ("t001", 1): ("free_allowance", "ingested_gb", D(1), "GB", D(0), D(0), D(0), D(0)),
        ("t001", 2): ("usage", "query_cpu_seconds", D(100), "s", D("0.0003"), D("0.03"), D("0.00"), D("0.03")),
        # (744 + 744) / 744 = 2 GB-month at the 90-day price 0.04; 10% of 0.08 = 0.008 -> 0.01
        ("t001", 3): ("usage", "stored_gb", D(2), "GB-month", D("0.04"), D("0.08"), D("0.01"), D("0.07")),
        # t002, enterprise: 3000.00 monthly commitment
        ("t002", 1): ("free_allowance", "ingested_gb", D(1), "GB", D(0), D(0), D(0), D(0)),
        ("t002", 2): ("usage", "query_cpu_seconds", D(200), "s", D("0.0003"), D("0.06"), D(0), D("0.06")),
        ("t002", 3): ("commitment_true_up", None, D(1), "month", None, D("2999.94"), D(0), D("2999.94")),
        # t007, standard: from 2026-10-01 5% discount, 500.00 commitment, 365-day retention
        ("t007", 1): ("free_allowance", "ingested_gb", D(1), "GB", D(0), D(0), D(0), D(0)),
        ("t007", 2): ("usage", "query_cpu_seconds", D(400), "s", D("0.0004"), D("0.16"), D("0.01"), D("0.15")),
        # volume tier 1: 1 GB x 0.005 = 0.005 -> 0.01 (half-up); 5% of it -> 0.00
        ("t007", 3): ("usage", "scanned_gb", D(1), "GB", D("0.005"), D("0.01"), D("0.00"), D("0.01")),
        # 372 / 744 = 0.5 GB-month x 0.08 = 0.04
        ("t007", 4): ("usage", "stored_gb", D("0.5"), "GB-month", D("0.08"), D("0.04"), D("0.00"), D("0.04")),
        ("t007", 5): ("commitment_true_up", None, D(1), "month", None, D("499.80"), D(0), D("499.80")),
        # t008 used nothing in the window but owes its 20,000.00 commitment
        ("t008", 1): ("commitment_true_up", None, D(1), "month", None, D("20000.00"), D(0), D("20000.00")),
    }


def test_invoice_total_is_the_sum_of_its_lines(built):
    assert invoices() == {
        "t001": (D("0.10"), 3), "t002": (D("3000.00"), 3), "t007": (D("500.00"), 5), "t008": (D("20000.00"), 1)}


def test_money_columns_are_numeric_with_cents(built):
    types = query(
        "select table_name, column_name, data_type, numeric_scale from information_schema.columns"
        " where table_schema = 'marts' and column_name in ('pool_cost', 'allocated_cost', 'amount', 'total')"
        " order by 1, 2"
    )
    assert types == [
        ("fct_cost_allocations_hourly", "allocated_cost", "numeric", 2),
        ("fct_cost_allocations_monthly", "allocated_cost", "numeric", 2),
        ("fct_cost_pools_hourly", "pool_cost", "numeric", 2),
        ("fct_invoice_lines", "amount", "numeric", 2),
        ("fct_invoices", "total", "numeric", 2),
    ]


def test_rebuilding_a_window_changes_nothing(rebuilt):
    before, after = rebuilt
    assert after == before
    assert len(after["fct_usage_hourly"]) == len(SNAPSHOTS)


def test_a_production_build_leaves_the_unit_tests_to_ci(replayed_without_t002, dbt_manifest):
    assert replayed_without_t002.count("unit_test") == 0
    assert replayed_without_t002.count("model") == _built_models(dbt_manifest)


def test_replayed_hour_with_fewer_tenants_keeps_no_stale_rows(replayed_without_t002):
    assert query("select count(*) from marts.fct_usage_hourly where tenant_id = 't002'") == [(0,)]
    # t002 no longer gets cost by usage in hour H (a direct or fixed share is not usage)
    assert query(
        "select count(*) from marts.fct_cost_allocations_hourly"
        " where hour_start = %s and tenant_id = 't002' and driver_meter is not null",
        H,
    ) == [(0,)]
    # hour H+1 was outside the window and is untouched: t001 alone stored data
    assert allocations(H + timedelta(hours=1))[("storage", "t001")] == D("12.77")
    # the month is rebuilt: t002 no longer has usage lines; its invoice is the whole commitment
    assert [line for (t, _), line in invoice_lines().items() if t == "t002"] == [
        ("commitment_true_up", None, D(1), "month", None, D("3000.00"), D(0), D("3000.00"))]
    assert invoices() == {
        "t001": (D("0.10"), 3), "t002": (D("3000.00"), 1), "t007": (D("500.00"), 5), "t008": (D("20000.00"), 1)}


def test_build_without_window_covers_every_hour_of_the_month_exactly(full_build):
    october = "hour_start >= '2026-10-01 00:00+00' and hour_start < '2026-11-01 00:00+00'"
    rows = query(f"select pool, count(*) from marts.fct_cost_pools_hourly where {october} group by pool")
    assert dict(rows) == {
        pool: 744 for (pool,) in query("select distinct pool from config.cost_pools")
    }
    # a pool with one version all month costs its monthly cost, to the cent
    single = query(
        "select p.pool, p.monthly_cost, sum(h.pool_cost) from config.cost_pools as p"
        f" join marts.fct_cost_pools_hourly as h using (pool) where h.{october}"
        " and p.valid_from <= '2026-10-01' and (p.valid_to is null or p.valid_to >= '2026-11-01')"
        " group by p.pool, p.monthly_cost"
    )
    assert single
    assert all(monthly == total for _, monthly, total in single)
    (pools,) = query(f"select sum(pool_cost) from marts.fct_cost_pools_hourly where {october}")
    assert query(f"select sum(allocated_cost) from marts.fct_cost_allocations_hourly where {october}") == [pools]
    assert invoices() == {
        "t001": (D("0.10"), 3), "t002": (D("3000.00"), 1), "t007": (D("500.00"), 5), "t008": (D("20000.00"), 1)}


def test_failing_data_test_is_named_and_stops_everything_downstream(full_build):
    """A snapshot of an unknown tenant fails the relationships test of the hourly usage:
    the error names the test and the snapshot's file:line, nothing downstream of it is built (no pricing of a tenant
    without a price book), the month keeps its previous invoice lines, and replaying
    after the fix heals it. (A failing model is named the same way: test_faults.)"""
    hour = H + timedelta(hours=2)
    before = invoice_lines()
    execute(
        "insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at,"
        " kind, source_file, source_line, load_id) values"
        " ('test/ghost', 'ghost', 'ingested_gb', 1, 'GB', %s, %s, 'counter', 'test_transform.py', 99, 1)",
        hour,
        hour,
    )
    try:
        with pytest.raises(transform.TransformError) as failure:
            transform.build(hour, hour + timedelta(hours=1))
    finally:
        execute("delete from raw.usage_snapshots where snapshot_id = 'test/ghost'")
    message = str(failure.value)
    assert message.startswith("dbt build failed: 1 failed, ")
    assert " skipped because of them\n" in message
    assert failure.value.failures == (  # the snapshot behind the failing row: its source file and line
        "test relationships_int_usage_hourly_tenant_id__tenant_id__ref_stg_config__tenants_: 1 failing row"
        " — snapshot at test_transform.py:99",)
    assert all("\n" not in line for line in failure.value.failures)
    assert invoice_lines() == before  # the model's delete of October was rolled back

    transform.build(hour, hour + timedelta(hours=1))
    assert query("select count(*) from marts.fct_usage_hourly where tenant_id = 'ghost'") == [(0,)]
    assert allocations(hour)[("network", None)] == D("4.31")


def test_failing_unit_test_fails_the_build(full_build, tmp_path, monkeypatch, settings):
    """A copy of the project whose allocation unit test expects a wrong cent: the model
    is skipped and the error names the unit test."""
    shutil.copy(settings.root / "dbt_project.yml", tmp_path / "dbt_project.yml")
    shutil.copytree(
        settings.root / "dbt_project", tmp_path / "dbt_project", ignore=shutil.ignore_patterns("target", "logs")
    )
    costs_yml = tmp_path / "dbt_project" / "models" / "intermediate" / "costs" / "_costs.yml"
    text = costs_yml.read_text()
    assert "allocated_cost: 33.34" in text
    costs_yml.write_text(text.replace("allocated_cost: 33.34", "allocated_cost: 33.33", 1))
    monkeypatch.setenv("CHARGEBACK_HOME", str(tmp_path))
    monkeypatch.setenv("CHARGEBACK_EMBEDDED_DIR", str(settings.embedded_dir))
    with pytest.raises(transform.TransformError) as failure:
        transform.build(select="int_cost_allocations_hourly", unit_tests=True)  # they run before their model
    assert failure.value.failures == (
        "unit_test int_cost_allocations_hourly_equal_split_ties_by_tenant:"
        " actual differs from expected (see the diff in the dbt log)",
    )
    assert str(failure.value).startswith("dbt build failed: 1 failed, ")  # the model and its tests skipped


def test_parse_writes_the_manifest(transform_database):
    manifest = transform.parse()
    assert manifest.name == "manifest.json"
    assert manifest.is_file()


@pytest.mark.parametrize(
    ("start", "end", "problem"),
    [
        (H, None, "pass both"),
        (H, H, "must be before"),
        (H + timedelta(hours=1), H, "must be before"),
    ],
)
def test_window_must_be_a_nonempty_interval(start, end, problem):
    with pytest.raises(ValueError, match=problem):
        transform.build(start, end)


def test_full_refresh_of_a_window_is_refused():
    """It would recreate the tables with only the window's rows."""
    with pytest.raises(ValueError, match="without a window"):
        transform.build(H, H + timedelta(hours=1), full_refresh=True)


def test_dbt_messages_shrink_to_one_line():
    one_line = transform._one_line
    assert one_line("Got 3 results, configured to fail if != 0") == "3 failing rows"
    assert (
        one_line(
            "Database Error in model fct_x (dbt_project/models/marts/fct_x.sql)\n"
            '  null value in column "amount" violates not-null constraint\n'
            "  DETAIL:  Failing row contains (1, null).\n"
            "  compiled code at target/run/fct_x.sql"
        )
        == 'null value in column "amount" violates not-null constraint DETAIL: Failing row contains (1, null).'
    )
    assert (
        one_line(
            "Runtime Error in unit_test u (models/x.yml)\n"
            "  An error occurred during execution of unit test 'u'. There may be an error in the unit test"
            ' definition: check the data types.\n   Database Error\n    syntax error at or near "with"\n'
            "    LINE 75: with\n"
        )
        == 'could not run: syntax error at or near "with"'
    )
    assert one_line("\n\n\x1b[32mactual\x1b[0m differs from expected:\n\n@@ ,a\n→ ,1→2") == (
        "actual differs from expected (see the diff in the dbt log)"
    )


def test_window_is_taken_in_utc():
    two_hours_east = timezone(timedelta(hours=2))
    assert transform._window(datetime(2026, 10, 1, 13), datetime(2026, 10, 1, 14)) == (H, H + timedelta(hours=1))
    assert transform._window(datetime(2026, 10, 1, 15, tzinfo=two_hours_east), H + timedelta(hours=1)) == (
        H,
        H + timedelta(hours=1),
    )


def test_a_model_failing_on_data_names_the_snapshots_file_and_line(full_build):
    """A snapshot no price is in force for (here written straight into raw, as a warehouse of an
    older release may hold one; the loader now quarantines it) fails the pricing model's
    not-null contract: the failure names the snapshot's file and line."""
    hour = datetime(2019, 12, 31, 23, tzinfo=UTC)
    execute(
        "insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at,"
        " kind, source_file, source_line, load_id) values"
        " ('test/unpriced', 't001', 'ingested_gb', 1, 'GB', %s, %s, 'counter', 'old-release.jsonl', 7, 1)",
        hour,
        hour,
    )
    try:
        with pytest.raises(transform.TransformError) as failure:
            transform.build(hour, hour + timedelta(hours=1))
    finally:
        execute("delete from raw.usage_snapshots where snapshot_id = 'test/unpriced'")
        transform.build(hour, hour + timedelta(hours=1))
    assert any(line.endswith("— snapshot at old-release.jsonl:7") for line in failure.value.failures), \
        failure.value.failures
