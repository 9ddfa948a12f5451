"""``chargeback status`` on a real warehouse: empty, then with a day of usage, a build, open
quarantine, a producer held back, draft invoices waiting for the grace period and a budget
alert. Every line it prints is read from the warehouse's records."""

from __future__ import annotations

import datetime as dt

import pytest

from chargeback.cli import main
from chargeback.engine import transform
from chargeback.insights import status
from chargeback.platform import warehouse
from conftest import database_of_its_own

pytestmark = pytest.mark.warehouse

NOW = dt.datetime(2026, 9, 2, 2, 30, tzinfo=dt.UTC)
DAY = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
LANDED = dt.datetime(2026, 9, 1, 14, tzinfo=dt.UTC)


@pytest.fixture(scope="module", autouse=True)
def status_database(test_warehouse):
    with database_of_its_own("status") as name:
        yield name


def screen() -> list[str]:
    with warehouse.connect() as conn:
        return status.render(status.collect(conn, NOW)).splitlines()


def test_an_empty_warehouse_says_there_is_nothing_yet():
    lines = screen()
    assert lines[0].strip() == "Chargeback status — 2026-09-02 02:30 UTC"
    assert lines[2:5] == ["Freshness", "  no usage known yet", "  marts: not built yet — run `chargeback transform`"]
    assert "  none yet" in lines
    assert "Quarantine: 0 open row(s)" in lines
    assert "  no producer held back" in lines
    assert "  no draft invoices" in lines
    assert lines[-2:] == ["Budget alerts this month: 0 fired, 0 not yet delivered",
                          "Anomalies: 0 open, 0 acknowledged, 0 not yet delivered (chargeback anomalies list)"]


@pytest.fixture(scope="module")
def loaded():
    """A day of t001's ingest published by load 1, the marts built, three open quarantine
    rows (t007 held back for two of them), a draft invoice of September and a budget alert."""
    with warehouse.connect(admin=True) as conn:
        (load_id,) = conn.execute(
            "insert into pipeline.load_runs (source, window_start, window_end, status, files, rows_in, rows_loaded,"
            " rows_quarantined, started_at, finished_at) values ('files', %s, %s, 'published', 2, 27, 24, 3,"
            " %s, %s) returning load_id",
            (DAY, DAY + dt.timedelta(days=1), NOW - dt.timedelta(hours=2, minutes=26),
             NOW - dt.timedelta(hours=2, minutes=25))).fetchone()
        conn.execute(
            "insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at,"
            " kind, source_file, source_line, load_id)"
            " select 's' || to_char(h, 'HH24'), 't001', 'ingested_gb', 2, 'GB', h, h, 'counter', 'a.csv', 1, %s"
            " from generate_series(%s::timestamptz, %s::timestamptz, interval '1 hour') as h",
            (load_id, DAY, DAY + dt.timedelta(hours=23)))
        conn.cursor().executemany(
            "insert into raw.usage_quarantine (load_id, source_file, source_line, landed_hour, field, reason,"
            " tenant_id, status) values (%s, %s, %s, %s, %s, %s, %s, %s)",
            [(load_id, "usage/t007/b.jsonl", 1, LANDED, "value", "value: not a number: 'abc'", "t007", "open"),
             (load_id, "usage/t007/b.jsonl", 2, LANDED, "value", "value: not a number: 'x'", "t007", "open"),
             (load_id, "usage/c.csv", 9, LANDED, "meter", "meter: unknown meter 'cpu'", None, "open"),
             (load_id, "usage/c.csv", 8, LANDED, "meter", "meter: unknown meter 'cpu'", None, "replayed")])
        conn.execute(
            "insert into pipeline.load_holds (load_id, holder, holder_kind, reason, landed_hours)"
            " values (%s, 't007', 'tenant', '2 of 3 rows of landed hour 2026-09-01T14:00Z quarantined', %s)",
            (load_id, [LANDED]))
        conn.execute(
            "insert into pipeline.invoices (tenant_id, period_start, period_end, close_period, currency, total,"
            " pdf_uri, pdf_sha256) values ('t001', '2026-09-01', '2026-09-30', '2026-09-01', 'USD', 10.00,"
            " 'draft.pdf', 'x')")
        conn.execute(
            "insert into pipeline.month_closes (period, status, checked_at, missing_hours)"
            " values ('2026-09-01', 'incomplete', %s, 696)", (NOW,))
        conn.execute(
            "insert into insights.budget_alerts (budget_id, month, threshold, threshold_kind, threshold_value,"
            " scope_level, scope_key, ledger, budget_amount, currency, actual, used_percent, elapsed_percent,"
            " usage_through, line) values ('globex', '2026-09-01', 'actual 50%%', 'actual', 50, 'organisation',"
            " 'Globex', 'billed', 100.00, 'USD', 60.00, 60.00, 3.33, %s, 'chargeback budget: …')",
            (DAY + dt.timedelta(days=1),))
        conn.execute(
            "insert into insights.anomalies (tenant_id, meter, ledger, direction, first_day, last_day, currency,"
            " expected, actual, volume, rate, mix, largest_effect, z, may_be_missing_data, sentence, usage_through,"
            " line, channels_pending) values ('t007', 'ingested_gb', 'billed', 'spike', '2026-09-01', '2026-09-01',"
            " 'USD', 10.00, 25.00, 15.00, 0.00, 0.00, 'volume', 8.1, false, 'rose', %s, 'line', '{email}')",
            (DAY + dt.timedelta(days=1),))
    transform.build()
    with warehouse.connect() as conn:
        (built,) = conn.execute("select max(finished_at) from pipeline.transform_runs").fetchone()
    return load_id, built


def test_a_loaded_warehouse_shows_freshness_runs_quarantine_and_what_waits(loaded):
    load_id, built = loaded
    at = f"{built.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
    lines = screen()
    assert lines[2:5] == [
        "Freshness",
        "  usage through 2026-09-02 00:00 UTC (2 h ago)",
        f"  {'mart':<30}{'last built':<22}window",
    ]
    for mart in ("fct_usage_hourly", "fct_invoices", "int_ledger_daily", "fct_trends_daily", "fct_trends_monthly"):
        assert f"  {mart:<30}{at:<22}everything" in lines
    assert (f"  load {load_id:<6}published  [2026-09-01 00:00, 2026-09-02 00:00)  24 rows, 3 quarantined,"
            " 2026-09-02 00:05 UTC") in lines
    assert any(line.startswith("  dbt  ") and "succeeded  everything" in line and f"all models, {at}" in line
               for line in lines)
    quarantine = lines.index("Quarantine: 3 open row(s)")
    assert lines[quarantine + 1: quarantine + 5] == [
        "         2  value: not a number",
        "         1  meter: unknown meter 'cpu'",
        "  held back, waiting for `chargeback quarantine replay`: 1",
        f"    tenant t007 in load {load_id} (1 landed hour(s)): 2 of 3 rows of landed hour 2026-09-01T14:00Z"
        " quarantined",
    ]
    assert ("  2026-09: 1 draft invoice(s); grace period ends 2026-10-04 00:00 UTC, then billing_monthly finalizes"
            " them; last close check: incomplete (696 missing hours)") in lines
    assert lines[-2:] == ["Budget alerts this month: 1 fired, 1 not yet delivered",
                          "Anomalies: 1 open, 0 acknowledged, 1 not yet delivered (chargeback anomalies list)"]


def test_the_command_prints_the_screen(loaded, capsys):
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "  usage through 2026-09-02 00:00 UTC (" in out
    assert "Quarantine: 3 open row(s)" in out
