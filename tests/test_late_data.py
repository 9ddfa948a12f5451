"""Late-arriving data: a file dropped into an hour that was already loaded is restated by
the next hourly run, within the restatement window only, rebuilding only the affected
hours; and a month's usage can be recomputed as it was known at any instant."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback.ingest import restatement
from chargeback.ingest.layout import hour_folder
from chargeback.ingest.simulate import simulate
from chargeback.ingest.sources import FileSource
from chargeback.orchestration import runner, steps
from chargeback.platform import warehouse
from conftest import database_of_its_own

# warehouse tests carry the mark one by one: the Airflow run at the end is not one of them
in_warehouse = pytest.mark.warehouse

HOUR = dt.timedelta(hours=1)
D0 = dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
PERIOD = "2026-03"
TENANTS = ["t001", "t002", "t003", "t004"]
LATE_HOUR = D0 + 30 * HOUR  # 2026-03-11 06:00, loaded by the first run
# t004 has no contract terms: query_cpu_seconds is per_unit 0.0003 on the enterprise book
# with no allowance or discount, so 10,000 late seconds add exactly 3.00 to its invoice.
LATE_SECONDS = Decimal("10000")
LATE_AMOUNT = Decimal("3.00")


def query(sql: str, *params) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(sql, params).fetchall()


def late_file(landing: Path, landed: dt.datetime, name: str, snapshots: list[tuple[str, str, Decimal, dt.datetime]],
              ) -> Path:
    """Drop a producer's file of (snapshot_id, tenant, meter, value, hour) into ``landed``'s folder."""
    folder = Path(hour_folder(str(landing), landed))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(json.dumps({
        "snapshot_id": sid, "tenant_id": tenant, "meter": "query_cpu_seconds", "value": str(value), "unit": "s",
        "hour": f"{hour:%Y-%m-%dT%H:00:00Z}", "emitted_at": f"{hour + HOUR:%Y-%m-%dT%H:05:00Z}",
        "kind": "counter",
    }) + "\n" for sid, tenant, value, hour in snapshots))
    return path


def usage(tenant: str, meter: str, hour: dt.datetime) -> tuple[Decimal, int]:
    (row,) = query("select quantity, snapshot_count from marts.fct_usage_hourly"
                   " where tenant_id = %s and meter = %s and hour_start = %s", tenant, meter, hour)
    return row


def invoice_total(tenant: str) -> Decimal:
    (row,) = query("select total from marts.fct_invoices where invoice_month = %s and tenant_id = %s",
                   dt.date(2026, 3, 1), tenant)
    return row[0]


def row_versions(table: str) -> dict[tuple, str]:
    """Each row's transaction id (xmin), by key: unchanged xmin = row not rewritten. The
    hourly marts are views; their rows live in the intermediate tables read here."""
    key = {"int_usage_hourly": "tenant_id, meter, hour_start",
           "int_cost_allocations_hourly": "hour_start, pool, part, component, cost_type, tenant_id"}[table]
    return {tuple(row[:-2]): (row[-2], row[-1]) for row in query(
        f"select {key}, hour_start, xmin::text from intermediate.{table}")}


@pytest.fixture(scope="module", autouse=True)
def late_database(test_warehouse):
    """A database of this module's own: the restatement scan reads every load run."""
    with database_of_its_own("late") as name:
        yield name


@pytest.fixture(scope="module")
def restated(late_database, tmp_path_factory):
    """Two days loaded in one run; a late file dropped into a past hour; the next hourly
    run (whose own hour has no files, so every change is the late file's). Measurements
    before and after."""
    landing = tmp_path_factory.mktemp("late_landing")
    settings = dataclasses.replace(steps.get_settings(), landing=str(landing))
    source = FileSource(str(landing))
    simulate(str(landing), TENANTS, D0, D0 + 48 * HOUR, seed=5)  # the next run's own hour stays empty
    steps.run_usage_window(D0, D0 + 48 * HOUR, source, settings)

    before = {
        "usage": usage("t004", "query_cpu_seconds", LATE_HOUR),
        "invoice": invoice_total("t004"),
        "usage_rows": row_versions("int_usage_hourly"),
        "allocation_rows": row_versions("int_cost_allocations_hourly"),
        "learned_by": query("select clock_timestamp()")[0][0],
    }
    late = late_file(landing, LATE_HOUR, "retried-upload.jsonl",
                     [("late-t004-cpu", "t004", LATE_SECONDS, LATE_HOUR)])
    plan = steps.plan_window(D0 + 48 * HOUR, D0 + 49 * HOUR, settings)
    steps.run_usage_window(D0 + 48 * HOUR, D0 + 49 * HOUR, source, settings)
    after = {
        "usage": usage("t004", "query_cpu_seconds", LATE_HOUR),
        "invoice": invoice_total("t004"),
        "usage_rows": row_versions("int_usage_hourly"),
        "allocation_rows": row_versions("int_cost_allocations_hourly"),
    }
    return {"landing": landing, "settings": settings, "late": late, "plan": plan, "before": before,
            "after": after}


@in_warehouse
def test_late_file_in_a_loaded_hour_is_restated_by_the_next_run(restated):
    plan, before, after = restated["plan"], restated["before"], restated["after"]

    assert [(r.hour, r.new_files, r.changed_files) for r in plan.restated] == [
        (LATE_HOUR, (str(restated["late"]),), ())]
    assert plan.load_start == LATE_HOUR
    assert after["usage"] == (before["usage"][0] + LATE_SECONDS, before["usage"][1] + 1)
    assert after["invoice"] == before["invoice"] + LATE_AMOUNT
    (line,) = query("select line from pipeline.events where kind = 'notice' and subject like '%%late file%%'"
                    " order by event_id desc limit 1")[0]
    assert line.startswith("chargeback notice: 1 late file in 2026-03-11 06:00 (1 new): this file landed"
                           " after the hour had been loaded; restated")
    assert "reloads [2026-03-11 06:00, 2026-03-12 01:00) UTC" in line


@in_warehouse
def test_replaying_the_restated_hours_counts_each_snapshot_once(restated):
    """The restatement re-read 18 hours of files: every snapshot is still there once."""
    ((rows, distinct),) = query("select count(*), count(distinct snapshot_id) from raw.usage_snapshots")
    assert rows == distinct == 48 * len(TENANTS) * 5 + 1


@in_warehouse
def test_lookback_rebuilds_only_the_affected_hours(restated):
    before, after = restated["before"], restated["after"]
    for table in ("usage_rows", "allocation_rows"):
        old = {k: v for k, v in before[table].items() if v[0] < LATE_HOUR}
        assert old, table
        assert {k: after[table][k] for k in old} == old, f"{table}: rows before the restated hour were rewritten"
        rebuilt = {k: v for k, v in before[table].items() if v[0] >= LATE_HOUR}
        assert rebuilt, table
        assert all(after[table][k][1] != v[1] for k, v in rebuilt.items()), f"{table}: restated hours not rebuilt"


@in_warehouse
def test_usage_as_of_issue_time_excludes_snapshots_learned_later(restated):
    as_issued = {(r.tenant_id, r.meter): r for r in restatement.usage_as_of(PERIOD, restated["before"]["learned_by"])}
    today = {(r.tenant_id, r.meter): r for r in restatement.usage_as_of(PERIOD)}
    ((month_seconds,),) = query(
        "select sum(quantity) from marts.fct_usage_hourly where tenant_id = 't004' and meter = 'query_cpu_seconds'")

    cpu = as_issued["t004", "query_cpu_seconds"]
    assert cpu.quantity == month_seconds - LATE_SECONDS
    assert cpu.quantity_now == today["t004", "query_cpu_seconds"].quantity == month_seconds
    assert (cpu.snapshots, cpu.snapshots_now) == (48, 49)
    assert cpu.last_learned_at <= restated["before"]["learned_by"]
    assert {k: (v.quantity, v.snapshots) for k, v in as_issued.items() if k != ("t004", "query_cpu_seconds")} == {
        k: (v.quantity, v.snapshots) for k, v in today.items() if k != ("t004", "query_cpu_seconds")}
    ((last_learned,),) = query("select last_learned_at from marts.fct_usage_hourly where tenant_id = 't004'"
                               " and meter = 'query_cpu_seconds' and hour_start = %s", LATE_HOUR)
    assert last_learned > restated["before"]["learned_by"]


@in_warehouse
def test_chargeback_usage_prints_the_month_as_known_at_an_instant(restated, capsys):
    from chargeback.cli import main

    as_of = restated["before"]["learned_by"].isoformat()
    assert main(["usage", "--period", PERIOD, "--as-of", as_of]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"usage of {PERIOD} as known at {as_of}"
    assert lines[1].split() == ["tenant", "meter", "unit", "quantity", "snapshots", "learned", "later", "quantity",
                                "now"]
    (cpu,) = [line.split() for line in lines if line.startswith("t004    query_cpu_seconds")]
    ((month_seconds,),) = query(
        "select sum(quantity) from marts.fct_usage_hourly where tenant_id = 't004' and meter = 'query_cpu_seconds'")
    assert cpu == ["t004", "query_cpu_seconds", "s", f"{(month_seconds - LATE_SECONDS).normalize():f}", "48", "1",
                   f"{month_seconds.normalize():f}"]


@in_warehouse
def test_files_older_than_the_restatement_window_are_not_rescanned(restated, monkeypatch):
    landing, settings = restated["landing"], dataclasses.replace(restated["settings"], restatement_hours=12)
    run_start = D0 + 49 * HOUR  # the window looks at [2026-03-11 13:00, 2026-03-12 01:00)
    too_old = late_file(landing, D0 + 36 * HOUR, "too-old.jsonl", [("old-1", "t001", Decimal(1), D0 + 36 * HOUR)])
    inside = late_file(landing, D0 + 40 * HOUR, "inside.jsonl", [("new-1", "t001", Decimal(1), D0 + 40 * HOUR)])
    listed: list[tuple[dt.datetime, dt.datetime]] = []
    files = FileSource.files

    def recording(self, start, end):
        listed.append((start, end))
        return files(self, start, end)

    monkeypatch.setattr(FileSource, "files", recording)

    try:
        plan = restatement.scan(run_start, run_start + HOUR, settings)
    finally:
        too_old.unlink()
        inside.unlink()

    assert plan.scanned_from == D0 + 37 * HOUR
    assert [(r.hour, r.new_files) for r in plan.restated] == [(D0 + 40 * HOUR, (str(inside),))]
    assert listed
    assert all(start >= plan.scanned_from for start, _ in listed), listed
    assert str(too_old) not in json.dumps(plan.as_dict())


@in_warehouse
def test_late_snapshot_in_the_current_folder_rebuilds_its_own_hour(restated):
    """A producer puts usage of 5 hours ago into this hour's folder: nothing is restated,
    but dbt's window reaches back to that hour (PublishResult.usage_start), and no further."""
    landing, settings = restated["landing"], restated["settings"]
    run_start, usage_hour = D0 + 49 * HOUR, D0 + 44 * HOUR
    before = usage("t004", "query_cpu_seconds", usage_hour)
    versions = row_versions("int_usage_hourly")
    late_file(landing, run_start, "backlog.jsonl", [("backlog-t004-cpu", "t004", Decimal(500), usage_hour)])

    steps.run_usage_window(run_start, run_start + HOUR, FileSource(str(landing)), settings)

    assert usage("t004", "query_cpu_seconds", usage_hour) == (before[0] + 500, before[1] + 1)
    after = row_versions("int_usage_hourly")
    assert {k: after[k] for k, v in versions.items() if v[0] < usage_hour} == {
        k: v for k, v in versions.items() if v[0] < usage_hour}
    assert all(after[k][1] != v[1] for k, v in versions.items() if v[0] >= usage_hour)


@pytest.fixture
def airflow_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    monkeypatch.setenv("CHARGEBACK_RETRY_DELAY_SECONDS", "1")
    return tmp_path / "airflow_home"


@pytest.mark.airflow
def test_usage_hourly_dag_restates_a_late_file_and_rebuilds_from_its_hour(restated, airflow_home, monkeypatch):
    """The real DAG: plan_window widens the load, publish hands dbt's tasks the lookback."""
    landing = restated["landing"]
    monkeypatch.setenv("CHARGEBACK_LANDING", str(landing))
    hour = D0 + 20 * HOUR  # loaded by the first run only
    before = (usage("t004", "query_cpu_seconds", hour), invoice_total("t004"))
    versions = row_versions("int_usage_hourly")
    late_file(landing, hour, "dag-late.jsonl", [("dag-late-t004-cpu", "t004", Decimal(2000), hour)])
    run_start = D0 + 50 * HOUR

    runner.run_dag("usage_hourly", {"start": run_start.isoformat(), "end": (run_start + HOUR).isoformat(),
                                         "source": "files"}, quiet=True)

    assert usage("t004", "query_cpu_seconds", hour) == (before[0][0] + 2000, before[0][1] + 1)
    assert invoice_total("t004") == before[1] + Decimal("0.60")
    after = row_versions("int_usage_hourly")
    assert {k: after[k] for k, v in versions.items() if v[0] < hour} == {
        k: v for k, v in versions.items() if v[0] < hour}
    ((line,),) = query("select line from pipeline.events where dag_id = 'usage_hourly' and task_id = 'plan_window'"
                       " and kind = 'notice'")
    assert line.startswith("chargeback notice: 1 late file in 2026-03-10 20:00 (1 new)")


@in_warehouse
def test_restating_a_finalized_month_says_the_change_becomes_a_correction(restated):
    """Late usage of a month already invoiced as final is still loaded; the notice says the
    issued invoice does not change (the correction goes on a later invoice)."""
    landing, settings = restated["landing"], restated["settings"]
    with warehouse.connect(admin=True) as conn:  # a final row: only the owner writes one directly
        conn.execute(
            "insert into pipeline.invoices (invoice_number, tenant_id, period_start, period_end, close_period,"
            " currency, total, pdf_uri, pdf_sha256, status, issue_date, finalized_at, usage_as_of)"
            " values ('LATE-TEST-1', 't004', date '2026-03-01', date '2026-03-31', date '2026-03-01',"
            " 'USD', 0, 'none.pdf', '', 'final', date '2026-04-04', now(), now())")
    hour = D0 + 45 * HOUR
    path = late_file(landing, hour, "after-close.jsonl", [("after-close-1", "t001", Decimal(1), hour)])
    try:
        plan = restatement.scan(D0 + 51 * HOUR, D0 + 52 * HOUR, settings)
    finally:
        path.unlink()

    assert plan.final_periods == ("2026-03",)
    assert [r.hour for r in plan.restated] == [hour]
    ((line, severity),) = query("select line, severity from pipeline.events where kind = 'notice'"
                                " order by event_id desc limit 1")
    assert severity == "warning"
    assert line.endswith("; 2026-03 is final: the change becomes a correction on a later invoice")
