"""The DAGs, run for real through Airflow, from landed files to PDF invoices.

usage_hourly and billing_monthly run on Airflow on Celery (chargeback.orchestration.cluster:
scheduler, API server, DAG processor, triggerer and two Celery workers on the machine's Redis),
every task on a worker, the invoices rendered in batches of two by mapped tasks. A copy of the
warehouse taken before that close is closed in this process (``chargeback close``'s path): the
invoices are the same, to the cent, line by line. The insights DAG runs on the workers too,
triggered by hand over usage_hourly's window.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pypdf import PdfReader

from chargeback.billing import close as month_close
from chargeback.ingest.simulate import simulate
from chargeback.orchestration import cluster as airflow_cluster
from chargeback.platform import warehouse
from chargeback.platform.money import format_money
from conftest import database_of_its_own

pytestmark = pytest.mark.airflow

START = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
END = START + dt.timedelta(hours=24)
TENANTS = ["t001", "t002", "t003", "t004"]
# t008 used nothing but has a minimum monthly commitment in config/tenants.yml: it is invoiced the true-up
INVOICED = {*TENANTS, "t008"}
OVERRIDE = {"override_incomplete": "end-to-end test: one day", "override_by": "pytest"}
WORKERS = {"worker-1", "worker-2"}


@pytest.fixture(scope="module")
def own_database(test_warehouse):
    """A database of the module's own: the insights DAG forecasts the month of the marts' last hour,
    which must be this module's July, not a later month another module loaded."""
    with database_of_its_own("e2e") as name, pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARGEBACK_RETRY_DELAY_SECONDS", "1")
        patch.setenv("CHARGEBACK_INVOICE_BATCH_SIZE", "2")
        yield name


@pytest.fixture(scope="module")
def celery(own_database, tmp_path_factory):
    """Airflow on Celery for this module's warehouse."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARGEBACK_SCHEDULE", "manual")  # unpaused, a DAG would also run its latest interval
        with airflow_cluster.started(home=tmp_path_factory.mktemp("airflow_celery"), workers=2) as running:
            yield running


def copy_of(database: str, name: str) -> None:
    """``name``: a copy of ``database`` as it is now (its sessions ended first: a template has none)."""
    with psycopg.connect(warehouse.server_dsn(), autocommit=True) as conn:
        conn.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (database,))
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("create database {} template {}").format(sql.Identifier(name), sql.Identifier(database)))


def issued(database: str) -> tuple[list[tuple], list[tuple]]:
    """July's final invoices and their frozen lines, every column a reader relies on."""
    with psycopg.connect(psycopg.conninfo.make_conninfo(warehouse.server_dsn(), dbname=database)) as conn:
        documents = conn.execute(
            "select invoice_number, tenant_id, status, currency, total, issue_date from pipeline.invoices"
            " where period_start = date '2026-07-01' and document_type = 'invoice' order by invoice_number"
        ).fetchall()
        lines = conn.execute(
            "select i.invoice_number, l.* from pipeline.invoice_lines as l join pipeline.invoices as i"
            " using (document_id) where i.period_start = date '2026-07-01' order by i.invoice_number, l.line_no"
        ).fetchall()
    return documents, [line[:1] + line[2:] for line in lines]  # without document_id, a serial


def test_usage_hourly_then_billing_monthly_on_celery_issue_final_invoices_equal_to_the_marts(
        own_database, celery, settings, landing, tmp_path, monkeypatch):
    database = own_database
    simulate(str(landing), TENANTS, START, END, seed=11)

    hourly = celery.run_dag("usage_hourly", {"start": START.isoformat(), "end": END.isoformat(), "source": "files"})
    assert {t.task_id for t in hourly if t.state == "success"} >= {"extract_and_stage", "gate", "publish",
                                                                    "transform", "check_marts"}
    with warehouse.connect() as conn:  # its one dbt build left the insight marts to the insights DAG
        builds = conn.execute("select selection, status from pipeline.transform_runs").fetchall()
    assert builds == [("--exclude tag:insights", "succeeded")], builds
    copy_of(database, f"{database}_in_process")
    # a day of usage in a month long past: the grace period is over, the month is incomplete, so the
    # close goes through only with an operator's override, which every invoice then prints
    tasks = celery.run_dag("billing_monthly", {"period": "2026-07", **OVERRIDE})
    ran = [t for t in hourly + tasks if t.state == "success"]
    assert {t.worker for t in ran} <= WORKERS, [(t.task_id, t.hostname) for t in ran]  # none ran in process
    batches = sorted((t.map_index, t.state) for t in tasks if t.task_id == "render_invoice_batch")
    assert batches == [(0, "success"), (1, "success"), (2, "success")]  # five invoices, two a batch

    with warehouse.connect() as conn:
        published = conn.execute(
            "select count(*) from raw.usage_snapshots where hour_start >= %s and hour_start < %s", (START, END)
        ).fetchone()[0]
        marts = dict(conn.execute(
            "select tenant_id, total from marts.fct_invoices where invoice_month = date '2026-07-01'").fetchall())
        invoices = conn.execute(
            "select tenant_id, invoice_number, total, pdf_uri, pdf_sha256 from pipeline.invoices"
            " where period_start = date '2026-07-01' and document_type = 'invoice' and status = 'final'"
            " order by invoice_number").fetchall()
        close = conn.execute("select status, missing_hours, override_by, finalized_at is not null"
                             " from pipeline.month_closes where period = date '2026-07-01'").fetchone()
        gates = conn.execute(
            "select count(*) filter (where success) from pipeline.validations where window_start = %s", (START,)
        ).fetchone()[0]
    assert published == 24 * len(TENANTS) * 5
    assert set(marts) == INVOICED
    assert marts["t008"] == Decimal("20000.00")
    assert gates >= 2  # the raw gate and the mart checks both ran and passed
    assert [row[0] for row in invoices]
    assert {row[0] for row in invoices} == INVOICED
    assert close == ("overridden", (31 - 1) * 24 * 5, "pytest", True)
    for tenant_id, number, total, uri, sha in invoices:
        pdf = Path(uri)
        assert pdf == Path(settings.reports_out) / "2026-07" / f"{number}.pdf"
        assert hashlib.sha256(pdf.read_bytes()).hexdigest() == sha
        assert total == marts[tenant_id]
        text = "\n".join(page.extract_text() for page in PdfReader(pdf).pages)
        assert number in text
        assert tenant_id in text
        assert "Closed on the authority of pytest: end-to-end test: one day." in " ".join(text.split())
        assert "DRAFT" not in text
        assert format_money(total, "USD").split(" ")[0] in text

    # the same month closed in this process, from the copy taken before billing_monthly ran
    by_celery = issued(database)
    monkeypatch.setenv("CHARGEBACK_DATABASE", f"{database}_in_process")
    monkeypatch.setenv("CHARGEBACK_REPORTS_OUT", str(tmp_path / "in-process"))
    result = month_close.close_month("2026-07", override_reason=OVERRIDE["override_incomplete"],
                                     override_by=OVERRIDE["override_by"], workers=1)
    assert [r.invoice_number for r in result.finals] == [row[1] for row in invoices]
    assert issued(f"{database}_in_process") == by_celery


def test_usage_hourly_updates_the_usage_marts_asset_and_the_insights_dag_forecasts_and_checks_budgets(
        own_database, celery, settings):
    """Runs after the test above (same module, same warehouse): usage_hourly's check_marts recorded an
    asset event carrying its window; a manual insights run over that window forecasts the month in
    progress (one day of history: "too early") and records every budget's state for July."""
    from chargeback.orchestration.insights import ASSET_URI

    extras = [row[0] for row in celery.query(
        "select e.extra from asset_event e join asset a on a.id = e.asset_id where a.uri = %s", ASSET_URI)]
    assert {"start": START.isoformat(), "end": END.isoformat()} in extras

    with warehouse.connect() as conn:
        conn.execute("truncate pipeline.insights_requests")
    tasks = celery.run_dag("insights", {"start": START.isoformat(), "end": END.isoformat()})
    assert {t.worker for t in tasks if t.state == "success"} <= WORKERS

    with warehouse.connect() as conn:
        pending = conn.execute("select count(*) from pipeline.insights_requests where done_at is null").fetchone()[0]
        forecasts = conn.execute(
            "select distinct status from insights.forecasts where forecast_month = date '2026-07-01'").fetchall()
        forecast_tenants = {r[0] for r in conn.execute(
            "select tenant_id from insights.forecasts where forecast_month = date '2026-07-01'")}
        budgets = conn.execute(
            "select count(*) from insights.budget_status where month = date '2026-07-01'").fetchone()[0]
    assert pending == 0
    assert forecasts == [("too_early",)]
    assert set(TENANTS) <= forecast_tenants
    assert budgets > 0
