"""
### billing_monthly — one PDF invoice per tenant for a closed month

Runs after each month closes (its data interval is the month). It checks the month's
marts reconcile to the cent, renders one PDF invoice per tenant with WeasyPrint
(`reports/templates/`), writes them to `reports/out/<YYYY-MM>/<tenant_id>.pdf` (or the
configured output location), records each invoice (number, total, sha256 of the PDF)
in `pipeline.invoices`, and logs the finance summary.

A manual run may name the month with the `period` param (`YYYY-MM`).
Logic lives in `chargeback.pipeline`; this file only wires tasks.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from chargeback.dag_defaults import default_args, on_dag_failure


@dag(
    schedule=CronDataIntervalTimetable("0 6 1 * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retry_delay=dt.timedelta(minutes=5)),
    on_failure_callback=on_dag_failure(),
    params={
        "period": Param(None, type=["null", "string"], description="Billing month YYYY-MM (default: data interval)"),
    },
    tags=["chargeback", "billing", "monthly"],
    doc_md=__doc__,
)
def billing_monthly():
    @task
    def resolve_period(params=None, data_interval_start=None) -> str:
        """The billing month: the `period` param, else the month of the data interval."""
        from chargeback import pipeline

        return params.get("period") or pipeline.parse_instant(data_interval_start).strftime("%Y-%m")

    @task
    def check_marts(period: str) -> None:
        """Every allocation rule had driver data and the month's marts reconcile to the cent."""
        from chargeback import pipeline

        pipeline.check_month(period)

    @task
    def render_invoices(period: str) -> int:
        """One PDF per tenant, rendered in parallel processes, recorded with its sha256."""
        from chargeback import pipeline

        return len(pipeline.render_invoices(period))

    @task
    def finance_summary(period: str) -> str:
        """The month's figures for finance: tenants, usage per meter, cost, allocated, billed."""
        from chargeback import summary

        text = summary.render(summary.month_summary(period))
        print(text)
        return text

    period = resolve_period()
    check_marts(period) >> render_invoices(period) >> finance_summary(period)


billing_monthly()
