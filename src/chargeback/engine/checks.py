"""Checks after dbt: the cost and invoice marts reconcile to the cent.

One suite per mart under ``expectations/`` (``marts_<table>.json``): allocated cost per pool
and hour sums exactly to the pool's cost, every pool-hour is allocated, invoice lines are
non-negative and every invoice's total is the sum of its lines. Each suite says in its
``meta`` which column the window applies to — hourly marts are checked on the window's
hours, monthly marts on the months it touches; without a window, on every row.

Runs use the validation runner (:func:`chargeback.platform.validation.run_suites`): each suite run is a row in
``pipeline.validations`` and a Data Docs page, pass or fail.

An hourly run checks its window with every suite. The month check before invoicing
(:func:`chargeback.billing.close.check_month`) reads a month of 1,000 tenants: it runs the
invoice suites through GX and reconciles the cost marts in one SQL statement
(:func:`reconcile_costs`, recorded in ``pipeline.validations`` too), where the hourly suites
took half a minute over seven million allocation rows.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from chargeback.platform import validation, warehouse
from chargeback.platform.periods import format_window
from chargeback.platform.periods import parse_instant as utc
from chargeback.platform.settings import Settings, get_settings
from chargeback.platform.validation import SuiteResult, SuiteRun, ValidationError

INVOICE_SUITES = ("marts_fct_invoice_lines", "marts_fct_invoices")
"""What a reader of the invoices relies on: the month check runs these through GX (a few
thousand rows) and reconciles the cost marts in one statement (:func:`reconcile_costs`)."""
SUITES = ("marts_fct_cost_pools_hourly", "marts_fct_cost_allocations_hourly", *INVOICE_SUITES)
RECONCILIATION = "reconcile_costs"


class ChecksFailed(ValidationError):
    """A mart broke its suite: the invoices must not be rendered from it. ``results`` say why."""


@dataclass(frozen=True)
class CheckResult:
    """The suite runs of one :func:`check_marts` call, one per mart."""

    window_start: dt.datetime | None
    window_end: dt.datetime | None
    results: tuple[SuiteResult, ...]

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    @property
    def failures(self) -> tuple[str, ...]:
        """``table: failure`` lines, one per failed expectation."""
        return tuple(f"{r.table_name}: {f}" for r in self.results for f in r.failures)

    def __str__(self) -> str:
        return "; ".join(f"{r.table_name} {r.summary.splitlines()[0]}" for r in self.results)


def check_marts(
    window_start: dt.datetime | str | None = None,
    window_end: dt.datetime | str | None = None,
    settings: Settings | None = None,
    suites: tuple[str, ...] = SUITES,
) -> CheckResult:
    """Validate the marts dbt built for ``[window_start, window_end)`` (every row without a window).

    Records every suite run in ``pipeline.validations`` and Data Docs; raises
    :class:`ChecksFailed` naming the table, the expectation and example rows (pool and
    hour, or invoice month and tenant) if any expectation fails.
    """
    settings = settings or get_settings()
    if (window_start is None) != (window_end is None):
        raise ValueError("give both window_start and window_end, or neither")
    start = utc(window_start) if window_start is not None else None
    end = utc(window_end) if window_end is not None else None
    if start is not None and end is not None and end <= start:
        raise ValueError(f"empty window: window_end {end:%Y-%m-%dT%H:%MZ} is not after window_start")

    specs = [validation.load_suite(name, settings) for name in suites]
    _require_tables([validation.suite_table(s) for s in specs], settings)
    runs = [
        SuiteRun(spec=spec, query=batch_query(spec, start, end), window_start=start, window_end=end) for spec in specs
    ]
    window = format_window(start, end) if start and end else "all rows"
    run_name = "marts-" + (f"{start:%Y%m%dT%H%MZ}-{end:%Y%m%dT%H%MZ}" if start and end else "all")
    result = CheckResult(start, end, tuple(validation.run_suites(runs, run_name=run_name, settings=settings)))
    if not result.success:
        failed = [r for r in result.results if not r.success]
        tables = ", ".join(r.table_name for r in failed)
        headline = f"mart checks failed for {tables} ({window})"
        if len(failed) > 1:  # name each line's table
            failed = [_prefixed(r) for r in failed]
        raise ChecksFailed(validation.failure_message(headline, failed), result.results)
    return result


def batch_query(spec: dict[str, Any], start: dt.datetime | None, end: dt.datetime | None) -> str:
    """``select * from <table>`` restricted to the window by the suite's ``meta.window_column``."""
    table = validation.suite_table(spec)
    meta = spec.get("meta") or {}
    column, grain = meta.get("window_column"), meta.get("window_grain")
    if start is None or end is None or column is None:
        return f"select * from {table}"
    if not str(column).isidentifier():
        raise ValueError(f"suite {spec['name']}: meta.window_column {column!r} is not a column name")
    if grain == "hour":
        return f"select * from {table} where {column} >= '{start.isoformat()}' and {column} < '{end.isoformat()}'"
    if grain == "month":
        first = start.date().replace(day=1)
        last = (end - dt.timedelta(microseconds=1)).date().replace(day=1)
        return f"select * from {table} where {column} between date '{first}' and date '{last}'"
    raise ValueError(f"suite {spec['name']}: meta.window_grain must be 'hour' or 'month', not {grain!r}")


def _require_tables(tables: list[str], settings: Settings) -> None:
    """A missing mart means dbt has not run: say so, rather than fail every expectation."""
    with warehouse.connect(settings) as conn:
        missing = [t for t in tables if conn.execute("select to_regclass(%s)", (t,)).fetchone()[0] is None]
    if missing:
        raise RuntimeError(
            f"cannot check the marts: {', '.join(missing)} does not exist (has `chargeback transform` run?)"
        )


def _prefixed(result: SuiteResult) -> SuiteResult:
    return SuiteResult(**{**result.__dict__, "failures": tuple(f"{result.table_name}: {f}" for f in result.failures)})


# Each check yields the rows that break it: (check, where, expected, actual). Cheap to read
# on a month of 1,000 tenants (one grouped scan of the hourly allocations, the rest small),
# where the GX suites of the hourly marts scanned their millions of rows once per expectation.
_RECONCILE_COSTS = """
with
pools as (
    select pool, hour_start, pool_cost, used_cost, idle_cost from marts.fct_cost_pools_hourly
    where hour_start >= %(start)s and hour_start < %(end)s
),
allocated as (
    select pool, hour_start, sum(allocated_cost) as allocated_cost,
           count(*) filter (where allocated_cost < 0) as negative
    from marts.fct_cost_allocations_hourly
    where hour_start >= %(start)s and hour_start < %(end)s
    group by pool, hour_start
),
pool_months as (
    select pool, date_trunc('month', hour_start at time zone 'UTC')::date as cost_month, sum(pool_cost) as pool_cost
    from pools group by 1, 2
),
allocated_months as (
    select pool, cost_month, sum(allocated_cost) as allocated_cost from marts.fct_cost_allocations_monthly
    where cost_month >= date_trunc('month', %(start)s at time zone 'UTC')::date
      and cost_month < %(end)s at time zone 'UTC'
    group by pool, cost_month
),
failed as (
    select 'a pool-hour is allocated exactly: the allocations add up to its cost' as reconciliation,
           coalesce(p.pool, a.pool) || ' ' || to_char(coalesce(p.hour_start, a.hour_start) at time zone 'UTC',
                                                        'YYYY-MM-DD HH24:MI') as at,
           coalesce(p.pool_cost::text, 'no such pool-hour') as expected,
           coalesce(a.allocated_cost::text, 'no allocation rows') as actual
    from pools as p full join allocated as a on a.pool = p.pool and a.hour_start = p.hour_start
    where p.pool_cost is distinct from a.allocated_cost
    union all
    select 'no allocation is negative', a.pool || ' ' || to_char(a.hour_start at time zone 'UTC', 'YYYY-MM-DD HH24:MI'),
           '0 negative rows', a.negative || ' negative rows'
    from allocated as a where a.negative > 0
    union all
    select 'a pool-hour is used + idle cost, neither negative',
           p.pool || ' ' || to_char(p.hour_start at time zone 'UTC', 'YYYY-MM-DD HH24:MI'), p.pool_cost::text,
           p.used_cost || ' + ' || p.idle_cost
    from pools as p where p.used_cost + p.idle_cost <> p.pool_cost or p.used_cost < 0 or p.idle_cost < 0
    union all
    select 'the monthly allocations add up to the pool''s cost of the month',
           coalesce(p.pool, a.pool) || ' ' || to_char(coalesce(p.cost_month, a.cost_month), 'YYYY-MM'),
           coalesce(p.pool_cost::text, 'no pool cost'), coalesce(a.allocated_cost::text, 'no allocations')
    from pool_months as p full join allocated_months as a on a.pool = p.pool and a.cost_month = p.cost_month
    where p.pool_cost is distinct from a.allocated_cost
)
select checked.pool_hours, found.*
from (select count(*) as pool_hours from pools) as checked
left join (select reconciliation, count(*) over (partition by reconciliation), at, expected, actual
           from failed) as found on true
order by found.reconciliation, found.at
"""


def reconcile_costs(window_start: dt.datetime | str, window_end: dt.datetime | str,
                    settings: Settings | None = None) -> SuiteResult:
    """The cost marts of ``[window_start, window_end)`` reconciled to the cent in one statement.

    Every pool-hour's allocations add up to its cost and every pool-hour is allocated; no
    allocation is negative; a pool-hour is its used plus idle cost; the monthly allocation mart
    adds up to the pools' cost of each month the window covers (give whole months). What the
    GX suites ``marts_fct_cost_pools_hourly`` and ``marts_fct_cost_allocations_hourly`` check,
    read once. Recorded in ``pipeline.validations`` (suite ``reconcile_costs``); raises
    :class:`ChecksFailed` naming each broken check with up to five examples.
    """
    settings = settings or get_settings()
    start, end = utc(window_start), utc(window_end)
    t0 = time.perf_counter()
    with warehouse.connect(settings) as conn:
        rows = conn.execute(_RECONCILE_COSTS, {"start": start, "end": end}).fetchall()
        failures: dict[str, list] = {}
        for _, check, count, at, expected, actual in rows:
            if check is not None:
                failures.setdefault(check, [count]).append(f"{at} expected {expected}, got {actual}")
        lines = tuple(f"{check}: {examples[0]} failing, e.g. " + "; ".join(examples[1:6])
                      for check, examples in failures.items())
        outcome = SuiteResult(suite=RECONCILIATION, table_name="marts.fct_cost_allocations_hourly", load_id=None,
                              window_start=start, window_end=end, success=not lines, evaluated_expectations=4,
                              failed_expectations=len(lines), row_count=rows[0][0], failures=lines,
                              validation_id=0, data_docs_url=None, seconds=time.perf_counter() - t0)
        result = validation.record(conn, outcome, {"success": not lines, "failures": list(lines)})
    if lines:
        headline = f"the cost marts do not reconcile ({format_window(start, end)})"
        raise ChecksFailed(validation.failure_message(headline, [result]), [result])
    return result
