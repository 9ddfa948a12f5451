"""The insights DAG's plan: changed windows queue up, at most one run an hour takes them, nothing is lost."""

from __future__ import annotations

import datetime as dt
import types

import pytest

from chargeback.orchestration import insights
from chargeback.platform import warehouse
from chargeback.platform.periods import Period
from conftest import database_of_its_own

T0 = dt.datetime(2026, 11, 30, 22, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def _event(start: dt.datetime | None, end: dt.datetime | None):
    extra = {"start": start.isoformat(), "end": end.isoformat()} if start else {}
    return types.SimpleNamespace(extra=extra)


def test_windows_come_from_the_events_extra_and_an_event_without_one_gives_none():
    events = {"usage_marts": [_event(T0 + HOUR, T0 + 2 * HOUR), _event(T0, T0 + HOUR), _event(None, None)]}
    assert insights.windows_of(events) == [(T0, T0 + HOUR), (T0 + HOUR, T0 + 2 * HOUR)]
    assert insights.windows_of(None) == []


def test_a_plan_covers_every_month_its_window_touches():
    plan = insights.Plan(T0, T0 - dt.timedelta(days=40), T0 + 3 * HOUR, (1,))
    assert [str(m) for m in plan.months] == ["2026-10", "2026-11", "2026-12"]
    assert insights.Plan.from_dict(plan.as_dict()) == plan
    assert [str(m) for m in insights.Plan(T0, T0, T0 + HOUR, (1,)).months] == ["2026-11"]


@pytest.mark.warehouse
def test_at_most_one_run_an_hour_takes_the_requests_and_a_held_or_failed_run_loses_none(test_warehouse):
    with warehouse.connect() as conn:
        conn.execute("truncate pipeline.insights_requests")

    first = insights.request([(T0, T0 + HOUR)], now=T0 + HOUR)
    assert first is not None
    assert (first.start, first.end) == (T0, T0 + HOUR)
    assert insights.done(first) == 1

    # two more events within the hour: recorded, not taken
    assert insights.request([(T0 + HOUR, T0 + 2 * HOUR)], now=T0 + 2 * HOUR - dt.timedelta(minutes=5)) is None
    assert insights.request([(T0 - 24 * HOUR, T0 - 23 * HOUR)], now=T0 + 2 * HOUR - dt.timedelta(minutes=1)) is None

    # the next hour's event takes its own window and both held ones, as one plan
    second = insights.request([(T0 + 2 * HOUR, T0 + 3 * HOUR)], now=T0 + 2 * HOUR + dt.timedelta(minutes=1))
    assert second is not None
    assert (second.start, second.end) == (T0 - 24 * HOUR, T0 + 3 * HOUR)
    assert len(second.request_ids) == 3
    # the run fails (done is never called): the next run takes the same requests again
    manual = insights.request([(T0, T0 + HOUR)], manual=True, now=T0 + 2 * HOUR + dt.timedelta(minutes=2))
    assert manual is not None, "a manual run is never held back"
    assert set(second.request_ids) < set(manual.request_ids)
    assert insights.done(manual) == 4
    with warehouse.connect() as conn:
        assert conn.execute("select count(*) from pipeline.insights_requests where done_at is null").fetchone()[0] == 0


@pytest.mark.warehouse
def test_an_event_without_a_window_requests_the_month_of_the_last_usage_hour(test_warehouse):
    with warehouse.connect() as conn:
        conn.execute("truncate pipeline.insights_requests")
        built = conn.execute("select to_regclass('marts.fct_usage_hourly') is not null").fetchone()[0]
        last = conn.execute("select max(hour_start) from marts.fct_usage_hourly").fetchone()[0] if built else None
    plan = insights.request([], manual=True)
    instant = last or dt.datetime.now(dt.UTC)
    assert (plan.start, plan.end) == Period(instant.year, instant.month).window


@pytest.mark.warehouse
def test_the_month_close_rebuilds_the_insight_marts_only_when_they_miss_a_change(test_warehouse):
    from chargeback.engine.transform import INSIGHTS
    from chargeback.platform import freshness

    month = (dt.datetime(2031, 3, 1, tzinfo=dt.UTC), dt.datetime(2031, 4, 1, tzinfo=dt.UTC))
    h = dt.datetime(2031, 3, 10, 5, tzinfo=dt.UTC)
    clock = iter(dt.datetime(2031, 4, 2, tzinfo=dt.UTC) + n * dt.timedelta(minutes=1) for n in range(100))

    def build(selection: str | None, start: dt.datetime | None, end: dt.datetime | None, status="succeeded"):
        began = next(clock)
        with warehouse.connect() as conn:
            conn.execute("insert into pipeline.transform_runs (window_start, window_end, selection, status, started_at,"
                         " finished_at, invoked_by) values (%s, %s, %s, %s, %s, %s, 'test')",
                         (start, end, selection, status, began, next(clock)))

    def current() -> bool:
        return freshness.insight_marts_current(*month)

    with database_of_its_own("insights_fresh"):  # no other module's dbt runs
        build("int_cost_allocations_hourly", h, h + HOUR)  # one model, as a dbt run of it alone
        assert not current()
        build(INSIGHTS, h - HOUR, h + 2 * HOUR)  # the insights DAG's refresh after it, over a wider window
        assert current()
        build(INSIGHTS, h + HOUR, h + 2 * HOUR, status="failed")  # the last refresh failed
        assert not current()
        build(None, *month)  # `chargeback transform --month`: everything, the insight marts included
        assert current()
        build("--exclude tag:insights", h + HOUR, h + 2 * HOUR)  # the cost chain, in-process
        assert not current()
        build("fct_invoices", h + 3 * HOUR, h + 4 * HOUR)
        build(INSIGHTS, h, h + 2 * HOUR)  # covers the first change, not the second
        assert not current()
        # a change in another month is not this month's business
        build("fct_invoices", dt.datetime(2031, 5, 1, tzinfo=dt.UTC), dt.datetime(2031, 5, 1, 1, tzinfo=dt.UTC))
        build(INSIGHTS, h + 3 * HOUR, h + 4 * HOUR)
        assert current()
