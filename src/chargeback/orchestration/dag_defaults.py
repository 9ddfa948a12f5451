"""Defaults every Chargeback DAG shares: retries, retry delay, failure notification.

Kept in the package (and light to import) so DAG files stay wiring only.
``CHARGEBACK_RETRY_DELAY_SECONDS`` shortens the delay for in-process test runs, where
a real two-minute wait between tries would only slow the suite down.
A task that fails for good, and a DAG run that fails, notify through
``chargeback.platform.notify.FailureNotifier`` (one line in the log and pipeline.events; e-mail
and/or webhook when configured).
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import Asset, CronDataIntervalTimetable

from chargeback.orchestration.insights import ASSET_URI
from chargeback.platform.notify import FailureNotifier

USAGE_MARTS = Asset(name="usage_marts", uri=ASSET_URI, group="chargeback")
"""The usage marts as an Airflow asset: usage_hourly's ``check_marts`` updates it (``extra``: the
window rebuilt), the insights DAG is scheduled on it."""


def schedule(cron: str) -> CronDataIntervalTimetable | None:
    """A DAG's schedule: ``cron`` (UTC) as a data-interval timetable — each run owns the interval
    it follows. ``CHARGEBACK_SCHEDULE=manual``: none, the DAG runs only when triggered (a cluster
    brought up to run chosen intervals, like tests/test_end_to_end.py's, where unpausing a scheduled DAG
    would also start its latest interval)."""
    if os.environ.get("CHARGEBACK_SCHEDULE", "") == "manual":
        return None
    return CronDataIntervalTimetable(cron, timezone="UTC")


def default_args(retry_delay: dt.timedelta = dt.timedelta(minutes=2)) -> dict:
    override = os.environ.get("CHARGEBACK_RETRY_DELAY_SECONDS")
    return {
        "owner": "data-engineering",
        "retries": 2,
        "retry_delay": dt.timedelta(seconds=int(override)) if override else retry_delay,
        "retry_exponential_backoff": not override,
        "on_failure_callback": FailureNotifier("task_failure"),
    }


def on_dag_failure() -> FailureNotifier:
    """The DAG-level ``on_failure_callback``: a failed DAG run is one line too."""
    return FailureNotifier("dag_failure")
