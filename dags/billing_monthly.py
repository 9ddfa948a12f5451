"""
### billing_monthly — close a month: draft invoices, grace period, completeness, final invoices, corrections

Runs after each month ends (its data interval is the month):

1. **check_marts** — every allocation rule had driver data and the month's marts reconcile
   (and are current) to the cent.
2. **refresh_insights_for_drafts** — as step 6, for the drafts.
3. **render_drafts** — one PDF per tenant, marked DRAFT and unnumbered, in
   `reports/out/<YYYY-MM>/drafts/`, while the grace period runs (a month past it, e.g. a
   backfill, goes straight to its final invoices: drafts would be replaced in seconds).
4. **wait_for_grace_period** — a reschedule-mode sensor holds no worker slot until the
   month's grace period (`CHARGEBACK_GRACE_PERIOD_DAYS`, default 3 days after month end)
   is over; a past month passes at once. Late usage loaded meanwhile restates the marts.
5. **check_completeness** — every hour of the month holds usage of every meter; a gap
   refuses the close with the missing hours listed, unless the run gives the
   `override_incomplete` param (a reason) and `override_by` (who decides). The override is
   recorded in `pipeline.month_closes` and printed on every invoice.
6. **refresh_insights** — the month's insight marts (daily ledger, showback below the tenant,
   trends) rebuilt with their tests when they miss a change of the month, so the invoices'
   "where your usage came from" appendix and the finance report read the marts as they are
   now, whatever the insights DAG last saw.
7. **recommend** — the month's recommendations, each saving the month re-priced with its
   change (docs/INSIGHTS.md, "Recommendations"), for the invoices' "ways to pay less".
8. **plan_final_invoices → render_invoice_batch (mapped) → commit_final_invoices** — the final
   invoices from the current marts, issued in three steps so that rendering fans out over the
   workers (`chargeback.billing.issuing`): the plan checks the marts and completeness again,
   reserves the numbers (gapless per issuer) and splits the invoices into batches of
   `CHARGEBACK_INVOICE_BATCH_SIZE` (default 100); each batch is one mapped task, on whichever
   worker is free; the commit issues them all in one transaction, PDFs in
   `reports/out/<YYYY-MM>/<number>.pdf`. Final invoices never change (the database refuses it).
9. **issue_corrections** — for earlier final months whose marts changed since, a credit or
   debit note that references the original invoice.
10. **finance_summary** — the month's figures for finance.
11. **finance_report** — the finance report PDF beside the invoices,
   `reports/out/<YYYY-MM>/finance-report.pdf` (docs/INSIGHTS.md, "The finance report").

A manual run may name the month with the `period` param (`YYYY-MM`).
Logic lives in `chargeback.billing.close`; this file only wires tasks. docs/MONTH_CLOSE.md explains it.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.sensors.date_time import DateTimeSensor
from airflow.sdk import Param, dag, task

from chargeback.orchestration.dag_defaults import default_args, on_dag_failure, schedule


@dag(
    schedule=schedule("0 6 1 * *"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retry_delay=dt.timedelta(minutes=5)),
    on_failure_callback=on_dag_failure(),
    params={
        "period": Param(None, type=["null", "string"], description="Billing month YYYY-MM (default: data interval)"),
        "override_incomplete": Param(None, type=["null", "string"],
                                     description="Close the month although hours are missing: the reason"),
        "override_by": Param(None, type=["null", "string"], description="Who decides the override"),
    },
    tags=["chargeback", "billing", "monthly"],
    doc_md=__doc__,
)
def billing_monthly():
    @task
    def resolve_period(params=None, data_interval_start=None) -> str:
        """The billing month: the `period` param, else the month of the data interval."""
        from airflow.sdk.exceptions import AirflowFailException

        from chargeback.orchestration import steps

        if not params.get("period") and data_interval_start is None:  # CHARGEBACK_SCHEDULE=manual
            raise AirflowFailException("this run has no data interval: give the month as the `period` param")
        return params.get("period") or steps.parse_instant(data_interval_start).strftime("%Y-%m")

    @task
    def check_marts(period: str) -> None:
        """Every allocation rule had driver data and the month's marts reconcile to the cent."""
        from chargeback.billing import close

        close.check_month(period)

    @task
    def render_drafts(period: str) -> int:
        """One DRAFT PDF per tenant, unnumbered, rendered in parallel processes, recorded with its sha256."""
        from chargeback.billing import close

        if close.is_final(period) or close.grace_period_over(period):
            print(f"{period}: {'final already' if close.is_final(period) else 'grace period over'}: no drafts")
            return 0
        return len(close.render_drafts(period))

    @task
    def grace_period_end(period: str) -> str:
        """When the month may close: its end plus the grace period (ISO instant for the sensor)."""
        from chargeback.billing import close

        return close.grace_period_end(period).isoformat()

    wait_for_grace_period = DateTimeSensor(
        task_id="wait_for_grace_period",
        target_time="{{ ti.xcom_pull(task_ids='grace_period_end') }}",
        mode="reschedule",
        poke_interval=dt.timedelta(hours=1),
        doc_md="Wait, without holding a worker slot, until the month's grace period is over.",
    )

    @task
    def check_completeness(period: str, params=None) -> str:
        """Every hour of the month holds usage of every meter, or an operator overrode the gap."""
        from airflow.sdk.exceptions import AirflowFailException

        from chargeback.billing import close

        if close.is_final(period):
            return "final already"
        try:
            return close.check_completeness(period, override_reason=params.get("override_incomplete"),
                                            override_by=params.get("override_by")).status
        except close.MonthNotComplete as exc:  # a refusal, not a transient failure: no retry
            raise AirflowFailException(str(exc)) from exc

    @task
    def refresh_insights(period: str) -> None:
        """dbt build of the insight marts over the month when they miss a change of it: the invoices'
        appendix and the finance report read them."""
        from chargeback.orchestration import steps

        steps.refresh_insights_for_close(period)

    @task
    def recommend(period: str) -> int:
        """The month's recommendations, each saving the month re-priced with its change: the final
        invoices' "ways to pay less" and the finance report read them."""
        from chargeback.orchestration import steps

        return steps.recommend_for_close(period)

    @task
    def plan_final_invoices(period: str, params=None) -> list[dict]:
        """Check the marts and completeness, then reserve the invoice numbers and split the invoices
        into render batches (one mapped task each); nothing to issue: no batch."""
        from airflow.sdk.exceptions import AirflowFailException

        from chargeback.billing import close

        try:
            plan = close.plan_finals(period, override_reason=params.get("override_incomplete"),
                                     override_by=params.get("override_by"))
        except close.MonthNotComplete as exc:  # a refusal, not a transient failure: no retry
            raise AirflowFailException(str(exc)) from exc
        return [{"run_id": plan.run_id, "batch": batch} for batch in plan.batches] if plan else []

    @task(map_index_template="{{ invoice_batch }}",
          doc_md="Render one batch of the plan's final invoices and stage the PDFs, on whichever worker is free.")
    def render_invoice_batch(batch: dict) -> int:
        from airflow.sdk import get_current_context

        from chargeback.billing import issuing

        get_current_context()["invoice_batch"] = f"run {batch['run_id']} batch {batch['batch']}"
        return issuing.render_batch(batch["run_id"], batch["batch"])

    @task(trigger_rule="none_failed")
    def commit_final_invoices(batches: list[dict]) -> int:
        """Issue the plan's invoices in one transaction: numbers, frozen lines, final."""
        from chargeback.billing import issuing

        return len(issuing.commit(batches[0]["run_id"])) if batches else 0

    @task
    def issue_corrections(period: str) -> int:
        """Credit or debit notes for earlier final months whose marts changed since they were issued."""
        from chargeback.billing import close

        return len(close.issue_corrections(period))

    @task
    def finance_summary(period: str) -> str:
        """The month's figures for finance: tenants, usage per meter, cost, allocated, billed."""
        from chargeback.billing import summary

        text = summary.render(summary.month_summary(period))
        print(text)
        return text

    @task
    def finance_report(period: str) -> str:
        """The finance report PDF beside the invoices: both ledgers by organisation, business unit and team,
        margin, idle and shared cost, the 12-month trend, top movers, budgets."""
        from chargeback.insights import finance_report as report

        written = report.write_report(period)
        print(written.summary())
        return written.path

    period = resolve_period()
    planned = plan_final_invoices(period)
    (
        check_marts(period)
        >> refresh_insights.override(task_id="refresh_insights_for_drafts")(period)
        >> render_drafts(period)
        >> grace_period_end(period)
        >> wait_for_grace_period
        >> check_completeness(period)
        >> refresh_insights(period)
        >> recommend(period)
        >> planned
    )
    rendered = render_invoice_batch.expand(batch=planned)
    (
        rendered
        >> commit_final_invoices(planned)
        >> issue_corrections(period)
        >> finance_summary(period)
        >> finance_report(period)
    )


billing_monthly()
