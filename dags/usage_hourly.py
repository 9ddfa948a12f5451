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
6. **transforms** with dbt, one task per model (task group `transform`, rendered by
   astronomer-cosmos): each task is `dbt build --select <model>` over the lookback — the
   model, then its data tests (dbt's unit tests prove code, not data: CI runs them); a
   failing test fails the task and the run, and dbt tests that span several models run as
   their own tasks once all their models are built.
   Incremental models touch only the lookback's hours (and the months they touch).
   The insight marts (dbt tag `insights`: trends, daily ledger, showback below the tenant)
   are not built here: the insights DAG rebuilds them after this run, in one dbt build,
   at most once an hour,
7. **checks** the marts over the lookback: allocated cost reconciles to each pool's cost to the cent,
   then updates the usage marts asset (`chargeback://warehouse/marts/usage`, the lookback as the
   event's `extra`): the `insights` DAG runs on it (forecasts, budget alerts).

A manual run may pass a wider window (`start`, `end`, ISO-8601 UTC) — that is how backfills
and the demo cover a month in one run — and a `source` (`files` or `simulator`).
`simulator` writes synthetic usage into the landing location and bills it, so it is refused
(one line, the task fails without retrying) unless the installation says `CHARGEBACK_ENV=dev`
or `demo` (docs/OPERATIONS.md, "Security").
Logic lives in `chargeback.orchestration.steps`; this file only wires tasks.

**dbt manifest.** The dbt tasks are rendered from `dbt_project/target/manifest.json`, so
parsing this file never runs dbt. `make install`, the test suite and `chargeback demo`
(`chargeback.engine.transform.parse()`) write it; if it is missing the file fails to import with
"run `make install` (dbt parse) first". Re-run it after changing the dbt project, or new
models get no task.

**One transform per database.** The dbt tasks take no lock of their own (the CLI's
`chargeback transform` does, with an advisory lock): `max_active_runs=1` keeps two runs of
this DAG from building the same warehouse at once.

**Environment.** The tasks read the warehouse connection from `CHARGEBACK_PG_*`
(`chargeback.platform.warehouse.dbt_env()`), which `chargeback.orchestration.runner.airflow_env()` exports
for `airflow dags test` and `make airflow`; it also turns cosmos' telemetry off.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import ExecutionMode, InvocationMode, LoadMode, TestBehavior, TestIndirectSelection

from chargeback.engine.transform import GUARANTEED, INSIGHTS, dbt_paths
from chargeback.orchestration.dag_defaults import USAGE_MARTS, default_args, on_dag_failure, schedule
from chargeback.orchestration.dbt_tasks import drop_excluded_tests

DBT = dbt_paths()  # paths only: no dbt, no database
if not DBT.manifest.is_file():
    raise FileNotFoundError(f"{DBT.manifest} is missing: run `make install` (dbt parse) first")

# dbt's window is the lookback publish returns, not the run's own interval
WINDOW_VARS = {
    "window_start": "{{ ti.xcom_pull(task_ids='publish')['start'] }}",
    "window_end": "{{ ti.xcom_pull(task_ids='publish')['end'] }}",
}


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

    transform = DbtTaskGroup(
        group_id="transform",
        project_config=ProjectConfig(
            manifest_path=DBT.manifest,
            project_name="chargeback",
            install_dbt_deps=False,
            env_vars={"DBT_LOG_PATH": str(DBT.log_dir), "DBT_USE_COLORS": "false",
                      "DBT_EXCLUDE_RESOURCE_TYPES": "unit_test"},
        ),
        profile_config=ProfileConfig(
            profile_name="chargeback", target_name="warehouse", profiles_yml_filepath=DBT.profiles_yml,
        ),
        execution_config=ExecutionConfig(
            execution_mode=ExecutionMode.LOCAL,
            invocation_mode=InvocationMode.DBT_RUNNER,
            dbt_project_path=DBT.project_dir,
            test_indirect_selection=TestIndirectSelection.CAUTIOUS,
        ),
        render_config=RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            test_behavior=TestBehavior.BUILD,
            should_detach_multiple_parents_tests=True,
            emit_datasets=False,
            # the insights DAG builds the insight marts (docs/INSIGHTS.md); CI runs the tests of
            # what keys and construction guarantee (transform.GUARANTEED)
            exclude=[INSIGHTS, GUARANTEED],
            # the ephemeral pricing models get dbt tasks too (with docs and retries like every
            # task); with unit tests left to CI they build nothing of their own
            ephemeral_models_as_empty_operator=False,
        ),
        operator_args={
            "vars": WINDOW_VARS,
            "doc_md": "dbt over this run's window (see the `transform` section of the DAG docs"
                      " and the model's description in `dbt_project/models/`).",
        },
    )

    # cosmos puts back the tests spanning an insight mart and a ledger mart: drop them here too
    drop_excluded_tests(transform, DBT.manifest, "insights")
    drop_excluded_tests(transform, DBT.manifest, "guaranteed")

    plan = plan_window(resolve_window())
    load_id = extract_and_stage(plan)
    apply_configuration() >> load_id
    lookback = publish(load_id, plan)
    gate(load_id, plan) >> lookback >> transform >> check_marts(lookback)


usage_hourly()
