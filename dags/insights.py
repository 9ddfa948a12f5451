"""
### insights — forecasts, budget alerts and anomalies, when the usage marts change

Scheduled on data, not on the clock: usage_hourly's `check_marts` task declares the usage
marts (`chargeback://warehouse/marts/usage`) as its outlet, with the window its dbt tasks
rebuilt as the event's `extra`; this DAG runs when that asset changes. It:

1. **plan** — records each event's window in `pipeline.insights_requests` and takes every
   request not yet done; if another run took requests in the same UTC clock hour it stops here
   (the requests wait for the next run: **at most one run an hour**, nothing lost),
2. **refresh** — the insight marts (dbt tag `insights`: daily usage and ledger, showback per
   source and label value, trends) rebuilt over the requests' window with their tests, in one
   dbt build (usage_hourly builds the cost chain only),
3. **forecast** — the month in progress, if the window touches it: month-end P10/P50/P90
   per tenant × meter, priced through the pricing engine, into `insights.forecasts`; it reads
   the cost chain's marts only, so it runs when the refresh failed,
4. **budgets** — every month the window touches: budget states, thresholds fired once per
   budget × threshold × month and delivered through the notifier; it runs even when the
   forecast failed (thresholds on the actual do not need one; the run still fails and notifies),
   but not on marts the refresh failed to rebuild (it refuses, naming the build),
5. **anomalies** — every complete day the window touches, and the day in progress by its
   hours so far: each tenant × meter's billed amount (and its biggest sources') against its
   expected value; what is out of line is explained (volume, rate, mix),
   raised once and sent (docs/INSIGHTS.md "Anomalies"); it reads the cost chain's marts and
   the usage per source, so it runs whatever the forecast and budgets did,
6. **done** — marks the requests done (a failed run leaves them for the next).

A manual run may pass `start`/`end` (ISO-8601 UTC) to recompute a window at once.
Logic lives in `chargeback.orchestration.insights`; this file only wires tasks.
docs/INSIGHTS.md explains forecasts and budgets.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from chargeback.orchestration.dag_defaults import USAGE_MARTS, default_args, on_dag_failure


@dag(
    schedule=[USAGE_MARTS],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retry_delay=dt.timedelta(minutes=2)),
    on_failure_callback=on_dag_failure(),
    params={
        "start": Param(None, type=["null", "string"], description="Recompute this window now (ISO-8601 UTC)"),
        "end": Param(None, type=["null", "string"], description="End of that window (ISO-8601 UTC)"),
    },
    tags=["chargeback", "insights"],
    doc_md=__doc__,
)
def insights():
    @task.short_circuit
    def plan(params=None, triggering_asset_events=None) -> dict | None:
        """Record the changed windows; take every pending one unless a run took some this clock hour."""
        from chargeback.orchestration import insights as steps
        from chargeback.platform.periods import resolve_window

        if params.get("start") and params.get("end"):
            plan = steps.request([resolve_window(params, None, None)], manual=True)
        else:
            plan = steps.request(steps.windows_of(triggering_asset_events))
        return plan.as_dict() if plan else None

    @task
    def refresh(plan: dict) -> None:
        """dbt build of the insight marts (tag `insights`) over the requests' window."""
        from chargeback.orchestration import insights as steps

        steps.refresh(steps.Plan.from_dict(plan))

    @task(trigger_rule="all_done")
    def forecast(plan: dict) -> dict[str, int]:
        """Month-end forecasts of the month in progress, priced, into insights.forecasts."""
        from chargeback.orchestration import insights as steps

        return steps.forecast(steps.Plan.from_dict(plan))

    @task(trigger_rule="all_done")
    def budgets(plan: dict) -> dict[str, int]:
        """Budget states of the window's months; thresholds fire once and are delivered."""
        from airflow.sdk.exceptions import AirflowFailException

        from chargeback.orchestration import insights as steps

        try:
            return steps.budgets(steps.Plan.from_dict(plan))
        except steps.InsightsNotRefreshed as exc:  # a refusal: retrying cannot change it
            raise AirflowFailException(str(exc)) from None

    @task(trigger_rule="all_done")
    def anomalies(plan: dict) -> dict[str, int]:
        """Anomalies of the window's complete days: explained, raised once, delivered."""
        from chargeback.orchestration import insights as steps

        return steps.anomalies(steps.Plan.from_dict(plan))

    @task
    def done(plan: dict) -> int:
        """Mark the run's requests done."""
        from chargeback.orchestration import insights as steps

        return steps.done(steps.Plan.from_dict(plan))

    taken = plan()
    refresh(taken) >> forecast(taken) >> budgets(taken) >> anomalies(taken) >> done(taken)


insights()
