"""Checks after dbt: Great Expectations reconciles the cost and invoice marts to the cent.

One suite per mart under ``expectations/`` (``marts_<table>.json``): allocated cost per pool
and hour sums exactly to the pool's cost, every pool-hour is allocated, invoice lines are
non-negative and every invoice's total is the sum of its lines. Each suite says in its
``meta`` which column the window applies to — hourly marts are checked on the window's
hours, monthly marts on the months it touches; without a window, on every row.

Runs use the validation runner (:func:`chargeback.platform.validation.run_suites`): each suite run is a row in
``pipeline.validations`` and a Data Docs page, pass or fail.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from chargeback.platform import validation, warehouse
from chargeback.platform.periods import format_window
from chargeback.platform.periods import parse_instant as utc
from chargeback.platform.settings import Settings, get_settings
from chargeback.platform.validation import SuiteResult, SuiteRun, ValidationError

SUITES = (
    "marts_fct_cost_pools_hourly",
    "marts_fct_cost_allocations_hourly",
    "marts_fct_invoice_lines",
    "marts_fct_invoices",
)


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

    specs = [validation.load_suite(name, settings) for name in SUITES]
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
