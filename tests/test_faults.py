"""Faults injected for real — a dbt build that fails, a warehouse that restarts mid-DAG,
a configuration that changes mid-month — and the invariant each must leave intact.

Real PostgreSQL, real dbt, real Airflow; the faults are real too (a column renamed
under dbt, the warehouse's connections cut while a task runs).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from chargeback import freshness, pipeline, transform, warehouse
from chargeback.simulate import simulate
from chargeback.sources import FileSource

pytestmark = pytest.mark.warehouse

TENANTS = ["t001", "t002", "t003"]


def _rows(sql: str, *params) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(sql, params).fetchall()


def _last_event_line(kind: str = "refusal") -> str:
    return _rows("select line from pipeline.events where kind = %s order by event_id desc limit 1", kind)[0][0]


# --------------------------------------------------------------------------- dbt fails -> no invoice

def test_failed_transform_renders_no_invoice(landing, settings):
    """A month whose marts are older than its usage, or whose last dbt build failed, is
    refused before anything is rendered: one line in pipeline.events, no PDF, no invoice row."""
    period, start = "2032-02", dt.datetime(2032, 2, 1, tzinfo=dt.UTC)
    hour = dt.timedelta(hours=1)
    first, second = (start, start + 2 * hour), (start + 2 * hour, start + 4 * hour)
    simulate(str(landing), TENANTS, start, second[1], seed=5)
    source = FileSource(str(landing))

    pipeline.load_window(*first, source)
    transform.build(*first)
    freshness.require_current_marts(period)  # built after its load: current

    # usage published after the marts were built: the invoices would not include it
    load_id = pipeline.load_window(*second, source)
    with pytest.raises(freshness.StaleMarts) as stale:
        pipeline.check_month(period)
    assert str(stale.value) == _last_event_line()
    assert str(stale.value).startswith(f"chargeback refusal: invoices of {period} at load {load_id}: usage of"
                                       " [2032-02-01T02:00:00Z, 2032-02-01T04:00:00Z) was published at ")

    # a real dbt failure: a configuration column the staging model reads is gone
    with warehouse.connect() as conn:
        conn.execute("alter table config.meters rename column description to description_gone")
    try:
        with pytest.raises(transform.TransformError):
            transform.build(*second)
    finally:
        with warehouse.connect() as conn:
            conn.execute("alter table config.meters rename column description_gone to description")
    (run_id, status, failures), = _rows(
        "select transform_id, status, failures from pipeline.transform_runs order by transform_id desc limit 1")
    assert status == "failed"
    assert any(line.startswith("model stg_config__meters: ") and "description" in line for line in failures)

    for step in (pipeline.check_month, pipeline.render_invoices):
        with pytest.raises(freshness.StaleMarts) as refused:
            step(period)
        line = str(refused.value)
        assert line == _last_event_line()
        assert line.startswith(
            f"chargeback refusal: invoices of {period} at transform run {run_id}: the dbt build over"
            " [2032-02-01T02:00:00Z, 2032-02-01T04:00:00Z) failed at ")
        assert "model stg_config__meters: " in line
        assert line.endswith("— fix the cause, then rebuild with `chargeback transform --start 2032-02-01T02:00:00Z"
                             " --end 2032-02-01T04:00:00Z` (or re-run usage_hourly for that window) and invoice"
                             " the month again")
    assert _rows("select count(*) from pipeline.invoices where period_start = %s", start.date()) == [(0,)]
    assert not (Path(settings.reports_out) / period).exists()

    # the cause fixed and the window rebuilt: the month may be invoiced again
    transform.build(*second)
    freshness.require_current_marts(period)


def test_dbt_runs_chargeback_did_not_start_are_recorded_too(settings, monkeypatch):
    """The dbt tasks of usage_hourly (cosmos) call dbt directly: its on-run-end hook keeps
    those runs in pipeline.transform_runs, failed ones with the failing node and why."""
    monkeypatch.setenv("DBT_INDIRECT_SELECTION", "cautious")  # as cosmos runs them: the model's own tests
    window = {"window_start": "2032-03-01T00:00:00Z", "window_end": "2032-03-01T01:00:00Z"}
    args = ["build", "--select", "stg_config__meters", "--vars", json.dumps(window)]
    assert transform._invoke(args, settings).success
    with warehouse.connect() as conn:
        conn.execute("alter table config.meters rename column description to description_gone")
    try:
        assert not transform._invoke(args, settings).success
    finally:
        with warehouse.connect() as conn:
            conn.execute("alter table config.meters rename column description_gone to description")
    runs = _rows("select window_start, window_end, selection, status, failures, invoked_by"
                 " from pipeline.transform_runs order by transform_id desc limit 2")
    hour = (dt.datetime(2032, 3, 1, tzinfo=dt.UTC), dt.datetime(2032, 3, 1, 1, tzinfo=dt.UTC))
    assert runs[1] == (*hour, "stg_config__meters", "succeeded", [], "dbt")
    assert runs[0][:4] == (*hour, "stg_config__meters", "failed")
    assert len(runs[0][4]) == 1
    assert runs[0][4][0].startswith("model stg_config__meters: ")
    assert runs[0][5] == "dbt"
