"""
### usage_hourly — hourly usage snapshots into the warehouse, gated, transformed, checked

Each run owns one data interval `[data_interval_start, data_interval_end)` (one hour on
the schedule). It:

1. **applies the configuration** (`config/*.yml`, validated; all or nothing),
2. **plans the load window** (`plan_window`): looks back `CHARGEBACK_RESTATEMENT_HOURS`
   (default 168) before the interval for hour folders that received files after they were
   loaded (a new file, or one whose size changed) and widens the load window back to the
   earliest of them; the task log says which hours were restated and why
   (docs/LATE_DATA.md),
3. **extracts** the load window's snapshot files from the landing location and stages them with `COPY`,
4. **gates** the staged rows with Great Expectations (`expectations/raw_usage_staging.json`) —
   a failure names the file, line and field and stops the run; nothing is published,
5. **publishes** them, replacing exactly the window's landed hours (replays change nothing),
   and returns the **lookback** dbt rebuilds: the load window, widened to any earlier hour
   whose usage the publish changed,
6. **transforms** with dbt: one task, one `dbt build` of the cost chain over the lookback —
   every model, then its data tests, in dbt's own order and threads — under the warehouse's
   transform lock, recorded in `pipeline.transform_runs` (`chargeback.engine.transform.build`).
   A failing model or test fails the task, names the node and why, and dbt skips everything
   downstream of it, so no mart is published from bad data. dbt's unit tests prove code, not
   data: CI runs them. Incremental models touch only the lookback's hours (and the months they
   touch). The insight marts (dbt tag `insights`: trends, daily ledger, showback below the
   tenant) are not built here: the insights DAG rebuilds them after this run, in one dbt build,
   at most once an hour. (One task per model cost a dbt start-up each — about fifty an hour,
   8–13 s each on a Celery worker: docs/DECISIONS.md.)
7. **checks** the marts over the lookback: allocated cost reconciles to each pool's cost to the cent,
   then updates the usage marts asset (`chargeback://warehouse/marts/usage`, the lookback as the
   event's `extra`): the `insights` DAG runs on it (forecasts, budget alerts).

A manual run may pass a wider window (`start`, `end`, ISO-8601 UTC) — that is how backfills
and the demo cover a month in one run — and a `source` (`files` or `simulator`).
`simulator` writes synthetic usage into the landing location and bills it, so it is refused
(one line, the task fails without retrying) unless the installation says `CHARGEBACK_ENV=dev`
or `demo` (docs/OPERATIONS.md, "Security").
Logic lives in `chargeback.orchestration.steps`; this file only wires tasks.

**Environment.** The tasks read the warehouse connection from `CHARGEBACK_PG_*`
(`chargeback.platform.warehouse.dbt_env()`), which `chargeback.orchestration.runner.airflow_env()`
exports for `airflow dags test` and `make airflow`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from chargeback.orchestration.dag_defaults import USAGE_MARTS, default_args, on_dag_failure, schedule


@dag(
    schedule=schedule("0 * * * *"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retry_delay=dt.timedelta(minutes=2)),
    on_failure_callback=on_dag_failure(),
    params={
        "start": Param(None, type=["null", "string"], description="Override window start (ISO-8601 UTC)"),
        "end": Param(None, type=["null", "string"], description="Override window end (ISO-8601 UTC)"),
        "source": Param("files", enum=["files", "simulator"], description="Where snapshots come from"),
        "tenants": Param(None, type=["null", "integer"], description="Simulator: first N configured tenants"),
        "seed": Param(42, type="integer", description="Simulator: random seed"),
    },
    tags=["chargeback", "usage", "hourly"],
    doc_md=__doc__,
)
def usage_hourly():
    @task
    def resolve_window(params=None, data_interval_start=None, data_interval_end=None) -> dict[str, str]:
        """The window this run owns: the data interval, or the start/end a manual run passed."""
        from chargeback.orchestration import steps

        start, end = steps.resolve_window(params, data_interval_start, data_interval_end)
        return {"start": start.isoformat(), "end": end.isoformat()}

    @task
    def apply_configuration() -> dict[str, int]:
        """Validate config/*.yml and replace the warehouse's configuration tables atomically."""
        from chargeback.orchestration import steps

        return steps.apply_configuration()

    @task
    def plan_window(window: dict[str, str]) -> dict:
        """The load window: this run's, widened back to the earliest restated past hour."""
        from chargeback.orchestration import steps

        return steps.plan_window(*steps.resolve_window(window, None, None)).as_dict()

    @task
    def extract_and_stage(window: dict, params=None) -> int:
        """Stage the load window's snapshot files with COPY; returns the load id."""
        from airflow.sdk.exceptions import AirflowFailException

        from chargeback.ingest.simulate import SimulationRefused
        from chargeback.orchestration import steps

        try:
            source = steps.make_source(params["source"], tenants=params["tenants"], seed=params["seed"])
        except SimulationRefused as exc:  # a refusal: retrying cannot change it
            raise AirflowFailException(str(exc)) from None
        start, end = steps.resolve_window(window, None, None)
        return steps.extract_and_stage(start, end, source)

    @task
    def gate(load_id: int, window: dict) -> None:
        """Great Expectations on the staged rows; a failure rejects the load."""
        from chargeback.orchestration import steps

        steps.gate(load_id, *steps.resolve_window(window, None, None))

    @task
    def publish(load_id: int, plan: dict) -> dict[str, str]:
        """Replace the window's published snapshots with the staged ones in one transaction;
        returns the lookback dbt and the checks run over."""
        from chargeback.orchestration import steps

        start, end = steps.publish_and_widen(load_id, plan)
        return {"start": start.isoformat(), "end": end.isoformat()}

    @task(outlets=[USAGE_MARTS])
    def check_marts(window: dict[str, str], outlet_events=None) -> None:
        """Great Expectations on the marts: money reconciles to the cent; then the usage marts
        asset is updated with the window rebuilt (the insights DAG runs on it)."""
        from chargeback.orchestration import steps

        steps.check_marts(*steps.resolve_window(window, None, None))
        outlet_events[USAGE_MARTS].extra = {"start": window["start"], "end": window["end"]}

    @task
    def transform(window: dict[str, str]) -> None:
        """dbt build of the cost chain over the lookback publish returns (the insight marts are
        the insights DAG's); a failing model or test fails the task and names it."""
        from chargeback.orchestration import steps

        steps.transform(*steps.resolve_window(window, None, None), insights=False)

    plan = plan_window(resolve_window())
    load_id = extract_and_stage(plan)
    apply_configuration() >> load_id
    lookback = publish(load_id, plan)
    gate(load_id, plan) >> lookback >> transform(lookback) >> check_marts(lookback)


usage_hourly()
