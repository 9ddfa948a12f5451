"""Allocation, checked to the cent: the split rule and the allocation marts.

Three layers:

- ``chargeback.engine.allocation.largest_remainder``, the Python reference of the split rule;
- the SQL of the ``largest_remainder`` macro (the file dbt compiles into every model, rendered
  here with Jinja) run on the real PostgreSQL against the reference for random amounts,
  weights and tenant sets (hypothesis, many cases per round trip);
- the allocation marts dbt builds from a configuration of this module's own (every method,
  a capacity kept and one redistributed, a pool version starting mid-window) and a few hours
  of snapshots, in a database of their own.

The configuration (October 2026: 744 hours, so 744.00 a month is 1.00 an hour):

    compute   744.00 until 2 Oct (1.00/h), capacity 100 cpu-s/h, idle kept by the platform;
              1488.00 from 2 Oct (2.00/h), capacity 200 cpu-s/h, idle redistributed;
              both proportional to {query_cpu_seconds: 75, scanned_gb: 25}
    platform  7440.00 (10.00/h), activity_based {ingest: ingested_gb 40, storage: stored_gb 60}
    shared    744.00 (1.00/h), parts [20 % direct t3, 35 % fixed {t1: 70, t2: 30}, 45 % even]

The snapshots (H0 = 1 Oct 23:00, H1 = 2 Oct 00:00, H2 = 2 Oct 01:00, no usage at all):

            query_cpu_seconds  scanned_gb  ingested_gb  stored_gb  alerts_fired
    H0 t1   30                 1           2            300        -
    H0 t2   10                 -           1            100        -
    H0 t3   -                  -           -            -          1
    H1 t1   60                 -           -            300        -
    H1 t2   90                 3           3            200        -
"""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import jinja2
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargeback.engine import configuration, transform
from chargeback.engine.allocation import largest_remainder
from chargeback.platform import warehouse

ROOT = Path(__file__).resolve().parents[1]
D = Decimal
H0 = datetime(2026, 10, 1, 23, tzinfo=UTC)
H1 = H0 + timedelta(hours=1)
H2 = H0 + timedelta(hours=2)
END = H0 + timedelta(hours=3)


# --------------------------------------------------------------------------- Python reference


def test_leftover_cents_go_to_the_largest_remainders():
    # 1.43 / 2.86 / 5.71 cents: floors 1 + 2 + 5, the two cents left to .86 and .71
    assert largest_remainder(D("0.10"), {"t1": D(1), "t2": D(2), "t3": D(4)}) == {
        "t1": D("0.01"),
        "t2": D("0.03"),
        "t3": D("0.06"),
    }


def test_a_credit_is_split_as_its_positive_amount_negated():
    # a discount line of -0.10: the same cents to the same keys as 0.10, all negative, adding up
    assert largest_remainder(D("-0.10"), {"t1": D(1), "t2": D(2), "t3": D(4)}) == {
        "t1": D("-0.01"),
        "t2": D("-0.03"),
        "t3": D("-0.06"),
    }


def test_tied_remainders_go_to_the_lower_key_compared_byte_by_byte():
    # 33.33... each: the cent goes to the first key in byte order, whatever the input order
    assert largest_remainder(D("100.00"), {"t3": D(5), "t1": D(5), "t2": D(5)}) == {
        "t1": D("33.34"),
        "t2": D("33.33"),
        "t3": D("33.33"),
    }
    # byte order, not a locale's: "B" (0x42) < "a" (0x61) < "é" (0xc3 0xa9)
    assert largest_remainder(D("0.02"), {"é": D(1), "a": D(1), "B": D(1)}) == {
        "B": D("0.01"),
        "a": D("0.01"),
        "é": D("0.00"),
    }


def test_shares_are_whole_cents_that_add_up_to_the_amount():
    shares = largest_remainder(D("24.20"), {"t1": D("100"), "t2": D("200.5"), "t7": D("0.000000000001")})
    assert sum(shares.values()) == D("24.20")
    assert all(share == share.quantize(D("0.01")) for share in shares.values())
    assert shares["t7"] == D("0.00")


@pytest.mark.parametrize(
    ("amount", "weights", "problem"),
    [
        (D("1.005"), {"a": D(1)}, "whole number of cents"),
        (D("1.00"), {}, "no weights"),
        (D("1.00"), {"a": D(0)}, "more than 0"),
        (D("1.00"), {"a": D(-1), "b": D(2)}, "negative"),
    ],
)
def test_a_split_that_cannot_add_up_is_refused(amount, weights, problem):
    with pytest.raises(ValueError, match=problem):
        largest_remainder(amount, weights)


def test_floats_are_refused():
    with pytest.raises(TypeError, match="float"):
        largest_remainder(1.0, {"a": D(1)})


# --------------------------------------------------------------------------- the macro's SQL


def macro_sql(**arguments: str) -> str:
    """The ``largest_remainder`` macro of the dbt project, rendered as dbt renders it."""
    text = (ROOT / "dbt_project" / "macros" / "largest_remainder.sql").read_text()
    return str(jinja2.Environment().from_string(text).module.largest_remainder(**arguments))


SPLITS_SQL = f"""
with

rows as (

    select *
    from unnest(%s::integer[], %s::text[], %s::numeric[], %s::numeric[])
        as rows (split_id, key, amount, weight)

),

weighted as (

    select *, sum(weight) over (partition by split_id) as total_weight
    from rows

)

select
    split_id,
    key,
    {macro_sql(
        amount="amount",
        weight="weight",
        total_weight="total_weight",
        partition_by="split_id",
        order_by='key collate "C"',
    )} as share
from weighted
"""

# tenant-like keys whose byte order differs from a locale's (upper case, digits, accents)
keys = st.text(alphabet="aAbB0_-é€ßz", min_size=1, max_size=4)
# small whole weights make tied remainders (the tie-break at work) common
weights = st.one_of(
    st.integers(min_value=0, max_value=4).map(Decimal),
    st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False, allow_infinity=False),
)


@st.composite
def splits(draw) -> tuple[Decimal, dict[str, Decimal]]:
    """An amount in cents (a credit too) and a tenant set with weights, at least one of them > 0."""
    amount = D(draw(st.one_of(st.integers(-100, 100), st.integers(-10**11, 10**11)))).scaleb(-2)
    tenants = draw(st.dictionaries(keys, weights, min_size=1, max_size=12))
    if not any(tenants.values()):
        tenants[draw(st.sampled_from(sorted(tenants)))] = draw(weights.filter(bool))
    return amount, tenants


@pytest.fixture(scope="module")
def sql_connection(test_warehouse):
    with warehouse.connect() as conn:
        yield conn


def split_in_sql(conn, batch: list[tuple[Decimal, list[tuple[str, Decimal]]]]) -> list[dict[str, Decimal]]:
    """Every split of ``batch`` through the macro's SQL, in one round trip."""
    columns: tuple[list, list, list, list] = ([], [], [], [])
    for split_id, (amount, rows) in enumerate(batch):
        for key, weight in rows:
            for column, value in zip(columns, (split_id, key, amount, weight), strict=True):
                column.append(value)
    results: list[dict[str, Decimal]] = [{} for _ in batch]
    for split_id, key, share in conn.execute(SPLITS_SQL, columns).fetchall():
        results[split_id][key] = share
    return results


@pytest.mark.warehouse
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(splits(), min_size=1, max_size=20), seed=st.randoms(use_true_random=False))
def test_sql_split_adds_up_within_a_cent_and_equals_the_python_reference(sql_connection, batch, seed):
    # each split twice: as drawn, and with its rows shuffled
    shuffled = [(amount, seed.sample(list(tenants.items()), len(tenants))) for amount, tenants in batch]
    as_drawn = [(amount, list(tenants.items())) for amount, tenants in batch]
    results = split_in_sql(sql_connection, as_drawn + shuffled)

    drawn_results, shuffled_results = results[: len(batch)], results[len(batch) :]
    for (amount, tenants), in_sql, in_sql_shuffled in zip(batch, drawn_results, shuffled_results, strict=True):
        total = sum(tenants.values())
        assert sum(in_sql.values()) == amount
        for key, share in in_sql.items():
            assert abs(share - amount * tenants[key] / total) < D("0.01")
        assert in_sql_shuffled == in_sql
        assert in_sql == largest_remainder(amount, tenants)
        assert largest_remainder(amount, dict(reversed(tenants.items()))) == in_sql


@pytest.mark.warehouse
def test_sql_split_of_an_empty_partition_is_null(sql_connection):
    """The callers turn null into an 'unallocated' row; the macro must not invent shares."""
    sql = "select {} from (values (1.00, 0::numeric, null::numeric, 1, 'a')) as v (a, w, t, p, k)".format(
        macro_sql(amount="a", weight="w", total_weight="t", partition_by="p", order_by='k collate "C"')
    )
    assert sql_connection.execute(sql).fetchall() == [(None,)]


# --------------------------------------------------------------------------- the allocation marts

CONFIG = {
    "tenants.yml": {
        "tenants": [
            {"tenant_id": t, "name": f"Tenant {t}", "organisation": "Org", "business_unit": "BU", "team": t,
             "price_book": "flat"}
            for t in ("t1", "t2", "t3")
        ]
    },
    "price_books.yml": {
        "price_books": [
            {"price_book": "flat", "currency": "USD", "valid_from": "2020-01-01",
             "prices": {"ingested_gb": "0.50", "stored_gb": "0.03", "scanned_gb": "0.005",
                        "query_cpu_seconds": "0.0004", "alerts_fired": "0.01"}},
        ]
    },
    "cost_pools.yml": {
        "cost_pools": [
            {"pool": "compute", "description": "cpu", "monthly_cost": "744.00", "currency": "USD",
             "valid_from": "2020-01-01", "valid_to": "2026-10-02",
             "capacity": {"meter": "query_cpu_seconds", "per_hour": "100"}, "idle": "platform",
             "allocation": {"method": "proportional", "drivers": {"query_cpu_seconds": 75, "scanned_gb": 25}}},
            {"pool": "compute", "description": "cpu, bigger", "monthly_cost": "1488.00", "currency": "USD",
             "valid_from": "2026-10-02",
             "capacity": {"meter": "query_cpu_seconds", "per_hour": "200"}, "idle": "redistribute",
             "allocation": {"method": "proportional", "drivers": {"query_cpu_seconds": 75, "scanned_gb": 25}}},
            {"pool": "platform", "description": "team", "monthly_cost": "7440.00", "currency": "USD",
             "valid_from": "2020-01-01",
             "allocation": {"method": "activity_based", "activities": {
                 "ingest": {"meter": "ingested_gb", "weight": 40},
                 "storage": {"meter": "stored_gb", "weight": 60}}}},
            {"pool": "shared", "description": "licences", "monthly_cost": "744.00", "currency": "USD",
             "valid_from": "2020-01-01",
             "allocation": [
                 {"share_percent": 20, "method": "direct", "tenant": "t3"},
                 {"share_percent": 35, "method": "fixed", "percentages": {"t1": 70, "t2": 30}},
                 {"share_percent": 45, "method": "even"}]},
        ]
    },
}

SNAPSHOTS = {
    # hour -> tenant -> meter -> value
    H0: {
        "t1": {"query_cpu_seconds": "30", "scanned_gb": "1", "ingested_gb": "2", "stored_gb": "300"},
        "t2": {"query_cpu_seconds": "10", "ingested_gb": "1", "stored_gb": "100"},
        "t3": {"alerts_fired": "1"},
    },
    H1: {
        "t1": {"query_cpu_seconds": "60", "stored_gb": "300"},
        "t2": {"query_cpu_seconds": "90", "scanned_gb": "3", "ingested_gb": "3", "stored_gb": "200"},
    },
}
UNITS = {"ingested_gb": "GB", "stored_gb": "GB", "scanned_gb": "GB", "query_cpu_seconds": "s", "alerts_fired": "alerts"}

# (hour, pool, component, cost_type, tenant) -> allocated_cost; every row of the window
ALLOCATIONS = {
    # compute H0 (1.00, 40 of 100 cpu-s used): used 0.40 = qcs 0.30 + scanned 0.10; qcs 30:10 =
    # 22.5 / 7.5 cents, the tied cent to t1; idle 0.60 kept by the platform
    (H0, "compute", "query_cpu_seconds", "allocated", "t1"): D("0.23"),
    (H0, "compute", "query_cpu_seconds", "allocated", "t2"): D("0.07"),
    (H0, "compute", "scanned_gb", "allocated", "t1"): D("0.10"),
    (H0, "compute", "idle", "idle", None): D("0.60"),
    # compute H1, new version (2.00, 150 of 200 used): used 1.50 -> 112.5 / 37.5 cents, the
    # tied cent to query_cpu_seconds (byte order); 113 x 60:90 = 45.2 / 67.8 -> 45 / 68;
    # idle 0.50 redistributed 60:90
    (H1, "compute", "query_cpu_seconds", "allocated", "t1"): D("0.45"),
    (H1, "compute", "query_cpu_seconds", "allocated", "t2"): D("0.68"),
    (H1, "compute", "scanned_gb", "allocated", "t2"): D("0.37"),
    (H1, "compute", "idle", "idle", "t1"): D("0.20"),
    (H1, "compute", "idle", "idle", "t2"): D("0.30"),
    # compute H2: nobody used it: all idle, and nobody to redistribute it to
    (H2, "compute", "query_cpu_seconds", "unallocated", None): D("0.00"),
    (H2, "compute", "scanned_gb", "unallocated", None): D("0.00"),
    (H2, "compute", "idle", "unallocated", None): D("2.00"),
    # platform (10.00): ingest 4.00 by ingested_gb, storage 6.00 by stored_gb
    (H0, "platform", "ingest", "allocated", "t1"): D("2.67"),  # 2 of 3 GB: 266.67 cents
    (H0, "platform", "ingest", "allocated", "t2"): D("1.33"),
    (H0, "platform", "storage", "allocated", "t1"): D("4.50"),  # 300 of 400 GB
    (H0, "platform", "storage", "allocated", "t2"): D("1.50"),
    (H1, "platform", "ingest", "allocated", "t2"): D("4.00"),
    (H1, "platform", "storage", "allocated", "t1"): D("3.60"),  # 300 of 500 GB
    (H1, "platform", "storage", "allocated", "t2"): D("2.40"),
    (H2, "platform", "ingest", "unallocated", None): D("4.00"),
    (H2, "platform", "storage", "unallocated", None): D("6.00"),
    # shared (1.00): direct 0.20 to t3 every hour; fixed 0.35 x 70:30 = 24.5 / 10.5, the tied
    # cent to t1; even 0.45 over the active tenants (H0: t3's alert makes it active)
    (H0, "shared", "direct", "allocated", "t3"): D("0.20"),
    (H0, "shared", "fixed", "allocated", "t1"): D("0.25"),
    (H0, "shared", "fixed", "allocated", "t2"): D("0.10"),
    (H0, "shared", "even", "allocated", "t1"): D("0.15"),
    (H0, "shared", "even", "allocated", "t2"): D("0.15"),
    (H0, "shared", "even", "allocated", "t3"): D("0.15"),
    (H1, "shared", "direct", "allocated", "t3"): D("0.20"),
    (H1, "shared", "fixed", "allocated", "t1"): D("0.25"),
    (H1, "shared", "fixed", "allocated", "t2"): D("0.10"),
    (H1, "shared", "even", "allocated", "t1"): D("0.23"),  # 22.5 cents each, the tie to t1
    (H1, "shared", "even", "allocated", "t2"): D("0.22"),
    (H2, "shared", "direct", "allocated", "t3"): D("0.20"),
    (H2, "shared", "fixed", "allocated", "t1"): D("0.25"),
    (H2, "shared", "fixed", "allocated", "t2"): D("0.10"),
    (H2, "shared", "even", "unallocated", None): D("0.45"),
}


def query(sql: str, *params) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(sql, params).fetchall()


def allocations() -> dict[tuple, Decimal]:
    rows = query(
        "select hour_start, pool, component, cost_type, tenant_id, allocated_cost"
        " from marts.fct_cost_allocations_hourly where hour_start >= %s and hour_start < %s",
        H0,
        END,
    )
    found: dict[tuple, Decimal] = {}
    for hour, pool, component, cost_type, tenant, cost in rows:
        key = (hour, pool, component, cost_type, tenant)
        assert key not in found, f"two rows for {key}"
        found[key] = cost
    return found


def build(start: datetime, end: datetime, *, unit_tests: bool = False) -> transform.TransformResult:
    """dbt build of the allocation marts and everything they depend on, with their tests
    (only tests wholly inside that part of the project: pricing has its own tests)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DBT_INDIRECT_SELECTION", "cautious")
        return transform.build(start, end, unit_tests=unit_tests,
                               select="+fct_cost_allocations_monthly fct_cost_allocations_hourly fct_cost_pools_hourly")


def insert_snapshots(snapshots: dict) -> None:
    rows = [
        (f"alloc/{tenant}/{meter}/{hour:%Y%m%d%H}", tenant, meter, D(value), UNITS[meter], hour, hour,
         "gauge" if meter == "stored_gb" else "counter", "test_allocation.py", 1, 1)
        for hour, tenants in snapshots.items()
        for tenant, meters in tenants.items()
        for meter, value in meters.items()
    ]
    with warehouse.connect() as conn, conn.cursor() as cur:
        cur.executemany(
            "insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start,"
            " emitted_at, kind, source_file, source_line, load_id) values (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            rows,
        )


@pytest.fixture(scope="module")
def allocation_database(test_warehouse, tmp_path_factory):
    """This module's configuration and snapshots in a database of its own."""
    session_db = os.environ["CHARGEBACK_DATABASE"]
    name = f"{session_db}_allocation"
    config_dir = tmp_path_factory.mktemp("allocation-config")
    (config_dir / "meters.yml").write_text((ROOT / "config" / "meters.yml").read_text())
    for file, doc in CONFIG.items():
        (config_dir / file).write_text(yaml.safe_dump(doc, sort_keys=False))
    warehouse.drop_database(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARGEBACK_DATABASE", name)
        warehouse.ensure_schema()
        configuration.load(config_dir)
        insert_snapshots(SNAPSHOTS)
        yield name


@pytest.fixture(scope="module")
def built(allocation_database) -> transform.TransformResult:
    return build(H0, END, unit_tests=True)


@pytest.mark.warehouse
def test_every_method_allocates_exact_cents_per_tenant_pool_and_hour(built):
    assert {n.status for n in built.nodes} <= {"success", "pass"}
    assert built.count("unit_test") >= 15
    assert allocations() == ALLOCATIONS


@pytest.mark.warehouse
def test_allocations_add_up_to_the_pool_cost_of_every_pool_hour(built):
    rows = query(
        "select p.pool, p.hour_start, p.pool_cost, p.used_cost, p.idle_cost,"
        " sum(a.allocated_cost), coalesce(sum(a.allocated_cost) filter (where a.method = 'idle'), 0)"
        " from marts.fct_cost_pools_hourly as p"
        " left join marts.fct_cost_allocations_hourly as a using (pool, hour_start)"
        " where p.hour_start >= %s and p.hour_start < %s"
        " group by p.pool, p.hour_start, p.pool_cost, p.used_cost, p.idle_cost",
        H0,
        END,
    )
    assert len(rows) == 9  # 3 pools x 3 hours
    for pool, hour, pool_cost, used_cost, idle_cost, allocated, idle_allocated in rows:
        assert allocated == pool_cost, (pool, hour)
        assert used_cost + idle_cost == pool_cost, (pool, hour)
        assert idle_allocated == idle_cost, (pool, hour)


@pytest.mark.warehouse
def test_pool_hours_show_cost_utilisation_and_the_version_in_force(built):
    rows = query(
        "select hour_start, pool_cost, used_cost, idle_cost, capacity, capacity_used, utilisation,"
        " rule_valid_from, idle_policy from marts.fct_cost_pools_hourly"
        " where pool = 'compute' and hour_start >= %s and hour_start < %s order by hour_start",
        H0,
        END,
    )
    october = datetime(2026, 10, 2).date()
    assert rows == [
        (H0, D("1.00"), D("0.40"), D("0.60"), D(100), D(40), D("0.4"), datetime(2020, 1, 1).date(), "platform"),
        (H1, D("2.00"), D("1.50"), D("0.50"), D(200), D(150), D("0.75"), october, "redistribute"),
        (H2, D("2.00"), D("0.00"), D("2.00"), D(200), D(0), D(0), october, "redistribute"),
    ]


@pytest.mark.warehouse
def test_allocated_rows_keep_method_driver_ratio_and_unit_cost(built):
    rows = query(
        "select hour_start, pool, part, method, component, tenant_id, driver_meter, driver_quantity,"
        " driver_total, ratio, unit_cost, rule_valid_from from marts.fct_cost_allocations_hourly"
        " where hour_start = %s and tenant_id = 't1' order by pool, part, component",
        H0,
    )
    v1 = datetime(2020, 1, 1).date()
    assert rows == [
        (H0, "compute", 1, "proportional", "query_cpu_seconds", "t1", "query_cpu_seconds", D(30), D(40),
         D("0.75"), D("0.0075"), v1),  # 0.30 / 40 cpu-s
        (H0, "compute", 1, "proportional", "scanned_gb", "t1", "scanned_gb", D(1), D(1), D(1), D("0.10"), v1),
        (H0, "platform", 1, "activity_based", "ingest", "t1", "ingested_gb", D(2), D(3), D("0.666666666667"),
         D("1.333333333333"), v1),  # 4.00 / 3 GB
        (H0, "platform", 1, "activity_based", "storage", "t1", "stored_gb", D(300), D(400), D("0.75"),
         D("0.015"), v1),
        (H0, "shared", 2, "fixed", "fixed", "t1", None, D(70), D(100), D("0.7"), None, v1),
        (H0, "shared", 3, "even", "even", "t1", None, D(1), D(3), D("0.333333333333"), None, v1),
    ]


@pytest.mark.warehouse
def test_monthly_allocations_are_the_hours_summed(built):
    rows = query(
        "select tenant_id, pool, sum(allocated_cost), sum(hour_count) from marts.fct_cost_allocations_monthly"
        " where cost_month = date '2026-10-01' group by 1, 2"
    )
    expected: dict[tuple, Decimal] = defaultdict(Decimal)
    for (_, pool, _, _, tenant), cost in ALLOCATIONS.items():
        expected[(tenant, pool)] += cost
    assert {(tenant, pool): cost for tenant, pool, cost, _ in rows} == expected
    assert expected[("t1", "compute")] == D("0.98")
    assert expected[("t1", "platform")] == D("10.77")
    assert sum(expected.values()) == D("1.00") + 2 * D("2.00") + 3 * D("10.00") + 3 * D("1.00")


@pytest.mark.warehouse
def test_replayed_hour_updates_the_day_and_month_it_belongs_to(built):
    """t2's snapshots of H1 withdrawn, H1 alone rebuilt: its allocations, the daily and the
    monthly sums follow, and H0 and H2 (the same and the next day) keep theirs."""
    before = allocations()
    with warehouse.connect() as conn:
        conn.execute("delete from raw.usage_snapshots where tenant_id = 't2' and hour_start = %s", (H1,))
    try:
        build(H1, H1 + timedelta(hours=1))
        after = allocations()
        assert {k: v for k, v in after.items() if k[0] != H1} == {k: v for k, v in before.items() if k[0] != H1}
        h1 = {k[1:]: v for k, v in after.items() if k[0] == H1}
        # compute: only t1 used it (60 of 200): used 0.60, all to t1's query_cpu_seconds...
        assert h1[("compute", "query_cpu_seconds", "allocated", "t1")] == D("0.45")
        assert h1[("compute", "scanned_gb", "unallocated", None)] == D("0.15")
        assert h1[("compute", "idle", "idle", "t1")] == D("1.40")
        assert sum(v for k, v in h1.items() if k[0] == "compute") == D("2.00")
        monthly = dict(query(
            "select pool, sum(allocated_cost) from marts.fct_cost_allocations_monthly"
            " where cost_month = date '2026-10-01' and tenant_id = 't2' group by 1"
        ))
        expected: dict[str, Decimal] = defaultdict(Decimal)
        for (_, pool, _, _, tenant), cost in after.items():
            if tenant == "t2":
                expected[pool] += cost
        assert monthly == expected
    finally:
        insert_snapshots({H1: {"t2": SNAPSHOTS[H1]["t2"]}})
        build(H1, H1 + timedelta(hours=1))
    assert allocations() == ALLOCATIONS

