"""usage_hourly's dbt task group, trimmed to the cost chain.

The hourly DAG renders one task per dbt model with astronomer-cosmos and leaves the insight
marts (dbt tag ``insights``) to the insights DAG through ``RenderConfig(exclude=...)``. Cosmos
honours the exclusion for models, but puts back every test that has one parent left in the
rendered graph (``DbtGraph.update_node_dependency``), so the tests spanning an insight mart and
a ledger mart (``dbt_project/tests/insights/``) would come back as tasks that select nothing
(their commands inherit the exclusion) and still cost a dbt start-up each, every hour.
:func:`drop_excluded_tests` removes them before the group is wired to anything.
"""

from __future__ import annotations

import json
from pathlib import Path


def tests_tagged(manifest: Path, tag: str) -> list[str]:
    """Names of the manifest's data tests carrying ``tag`` (their own tags, as dbt parsed them)."""
    nodes = json.loads(manifest.read_text())["nodes"].values()
    return sorted(n["name"] for n in nodes if n["resource_type"] == "test" and tag in n.get("tags", []))


def drop_excluded_tests(group, manifest: Path, tag: str) -> list[str]:
    """Remove from a cosmos ``DbtTaskGroup`` the test tasks of tests tagged ``tag``; returns their
    task ids. Call it before the group is wired to other tasks: only the edges from the tests'
    parent models are undone."""
    dag = group.dag
    dropped = []
    for name in tests_tagged(manifest, tag):
        task_id = f"{group.group_id}.{name}_test"
        task = dag.task_dict.get(task_id)
        if task is None:
            continue
        for upstream in task.upstream_list:
            upstream.downstream_task_ids.discard(task_id)
        for downstream in task.downstream_list:
            downstream.upstream_task_ids.discard(task_id)
        dag._remove_task(task_id)  # Airflow's own removal; the edges are undone above
        dropped.append(task_id)
    return dropped
