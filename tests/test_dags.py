"""DAG integrity: every DAG file imports cleanly and follows the house rules."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture(scope="module")
def dagbag(dbt_manifest, tmp_path_factory):
    """The DAG files parsed as the scheduler parses them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
        patch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        from airflow.dag_processing.dagbag import DagBag

        yield DagBag(dag_folder=str(DAGS))


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {Path(f).stem for f in DAGS.glob("*.py")} == set(dagbag.dag_ids)


def test_dag_id_equals_file_name_and_has_docs_and_tags(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id
        assert (dag.doc_md or "").strip(), dag_id
        assert dag.tags, dag_id


def test_every_task_retries_at_least_twice_and_notifies(dagbag):
    from chargeback.platform.notify import FailureNotifier

    for dag in dagbag.dags.values():
        assert isinstance(dag.on_failure_callback, FailureNotifier), f"{dag.dag_id}: a failed run must notify"
        for t in dag.tasks:
            assert t.retries >= 2, f"{dag.dag_id}.{t.task_id}"
            assert t.on_failure_callback, f"{dag.dag_id}.{t.task_id}"
            assert (t.doc_md or t.doc or "").strip(), f"{dag.dag_id}.{t.task_id} has no docstring"


def test_dags_have_no_cycles(dagbag):
    for dag in dagbag.dags.values():
        order = _toposort(dag)
        assert len(order) == len(dag.tasks)


def _toposort(dag):
    indeg = {t.task_id: len(t.upstream_task_ids) for t in dag.tasks}
    ready = [k for k, v in indeg.items() if v == 0]
    out = []
    while ready:
        k = ready.pop()
        out.append(k)
        for d in dag.get_task(k).downstream_task_ids:
            indeg[d] -= 1
            if indeg[d] == 0:
                ready.append(d)
    return out


def test_usage_hourly_wiring_reads_like_the_pipeline(dagbag):
    dag = dagbag.dags["usage_hourly"]
    chain = ["resolve_window", "plan_window", "extract_and_stage", "gate", "publish"]
    for up, down in itertools.pairwise(chain):
        assert down in dag.get_task(up).downstream_task_ids, f"{up} -> {down}"
    assert "extract_and_stage" in dag.get_task("apply_configuration").downstream_task_ids
    # dbt: one build over the lookback publish returns, then the checks over the same window
    transform, check = dag.get_task("transform"), dag.get_task("check_marts")
    assert transform.upstream_task_ids == {"publish"}
    assert check.upstream_task_ids == {"publish", "transform"}
    assert not [t.task_id for t in dag.tasks if t.task_id.startswith("transform.")], "one task, not one per model"


def test_the_insight_marts_are_built_by_the_insights_dag_and_the_month_close_not_every_hour(dagbag):
    import json

    from chargeback.engine.transform import manifest_path

    nodes = json.loads(manifest_path().read_text())["nodes"].values()
    tagged = {n["name"] for n in nodes if "insights" in n["tags"]}
    # the daily ledger, showback, trends and the tests spanning them
    assert {"int_ledger_daily", "fct_trends_daily", "fct_showback_sources_daily",
            "assert_trends_add_up_to_ledger_marts", "assert_showback_adds_up_to_ledger_daily"} <= tagged
    # usage_hourly's transform builds every other model (steps.transform(insights=False) excludes the
    # tag, and with it the tests of those models): none may read an insight mart, stale there
    hourly = {n["name"]: n for n in nodes if n["resource_type"] == "model" and "insights" not in n["tags"]}
    assert {"int_cost_allocations_hourly", "fct_invoice_lines", "fct_ledger_monthly"} <= set(hourly)
    for name, node in hourly.items():
        parents = {p.rsplit(".", 1)[-1] for p in node["depends_on"]["nodes"]}
        assert not parents & tagged, f"{name} reads {parents & tagged}"
    insights = dagbag.dags["insights"]
    assert insights.get_task("refresh").downstream_task_ids == {"forecast"}
    assert insights.get_task("forecast").trigger_rule == "all_done"  # it reads the cost chain only
    assert insights.get_task("budgets").downstream_task_ids == {"anomalies"}
    assert insights.get_task("anomalies").trigger_rule == "all_done"  # whatever forecast and budgets did
    billing = dagbag.dags["billing_monthly"]
    assert billing.get_task("refresh_insights").upstream_task_ids == {"resolve_period", "check_completeness"}
    assert billing.get_task("refresh_insights").downstream_task_ids == {"recommend"}
    assert "plan_final_invoices" in billing.get_task("recommend").downstream_task_ids  # "ways to pay less"
    assert "render_drafts" in billing.get_task("refresh_insights_for_drafts").downstream_task_ids


def test_hourly_schedule_gives_one_hour_intervals(dagbag):
    import datetime as dt

    from airflow.timetables.interval import CronDataIntervalTimetable

    declared = dagbag.dags["usage_hourly"].timetable
    # The scheduler-side twin of the declared timetable computes the intervals.
    timetable = CronDataIntervalTimetable(declared.expression, declared.timezone)
    import pendulum

    after = pendulum.datetime(2026, 10, 1, 12, 30, tz="UTC")
    interval = timetable.infer_manual_data_interval(run_after=after)
    assert interval.start == dt.datetime(2026, 10, 1, 11, tzinfo=dt.UTC)
    assert interval.end - interval.start == dt.timedelta(hours=1)


def test_billing_monthly_writes_the_finance_report_last(dagbag):
    dag = dagbag.dags["billing_monthly"]
    assert dag.get_task("finance_report").upstream_task_ids == {"resolve_period", "finance_summary"}
    assert not dag.get_task("finance_report").downstream_task_ids
